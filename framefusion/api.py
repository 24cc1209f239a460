"""The public entry points: apply_framefusion / remove_framefusion."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from framefusion.runtime import transformers_compat as compat
from framefusion.families import Family, family_for
from framefusion.runtime.before_llm import EVS, METHODS, BeforeLLM
from framefusion.runtime.checks import check_number, check_whole_number
from framefusion.runtime.reduction import FrameFusionSettings, FrameFusionStats, InnerMerge
from framefusion.runtime.hooks import FrameFusionRuntime

_ATTRIBUTE = "_framefusion_handle"


@dataclass
class FrameFusionHandle:
    """What apply_framefusion returns. `stats` always describes the model's last prefill."""

    model: nn.Module
    family: Family
    settings: FrameFusionSettings
    runtime: FrameFusionRuntime
    reference_positions: bool

    @property
    def stats(self) -> FrameFusionStats:
        return self.runtime.stats

    @property
    def num_layers(self) -> int:
        return self.runtime.num_layers

    def remove(self) -> None:
        remove_framefusion(self.model)

    def use_video_grid(self, video_grid_thw) -> None:
        """Tell FrameFusion the video grid (families with grids) for vision features computed before it was applied.

        generate() does not pass `video_grid_thw` on to the forward when it is handed precomputed features
        (`mm_encoder_outputs`); FrameFusion learns the grid by itself only while the vision encoder runs under it.
        """
        self.runtime.remember_video_grid(video_grid_thw)

    def use_vision_plan(self, plan) -> None:
        """Give EarlyTom's next prefill the Stage I result of its video (framefusion.runtime.vision_merge.VisionPlan)
        when the features were encoded beforehand; None: the tower's own last encoding under this handle."""
        self.runtime.use_vision_plan(plan)


def minimum_cost(num_layers: int, merge: bool = True, dense_layers: int = 2) -> float:
    """The smallest cost a model of `num_layers` decoder layers can be held to.

    FrameFusion's first layer sees (nearly) all video tokens, so the budget needs at least one layer's worth; FastV-style
    pruning needs its dense layers' worth plus a little for the rest.
    """
    return 1.0 / num_layers if merge else dense_layers / num_layers


def apply_framefusion(
    model: nn.Module,
    cost: float = 0.3,
    similarity_lower_bound: float | None = None,
    ratio_lower_bound: float = 0.1,
    *,
    merge: bool = True,
    prune: bool = True,
    dense_layers: int = 2,
    reference_positions: bool = True,
    evs_pruning_rate: float = 0.0,
    before_llm: BeforeLLM | None = None,
    inner_merge: InnerMerge | None = None,
) -> FrameFusionHandle:
    """Install FrameFusion on a Hugging Face video model; use the model as usual afterwards.

    cost: fraction of the video token-layers the prefill may spend, in (0, 1]; 1.0 means no reduction.
    similarity_lower_bound: S_th, the cosine similarity from which a token merges into the previous frame's token at
        the same position; None takes the family default.
    ratio_lower_bound: merging goes on layer after layer while a step merges at least this fraction.
    merge / prune: turn either stage off (merge=False is FastV-style pruning once after `dense_layers` layers, sized
        for the same cost).
    evs_pruning_rate: before the LLM, drop this fraction of the video tokens by Efficient Video Sampling (the tokens
        least changed since the previous frame; the first frame stays), keeping every token's position; in [0, 1).
        With merge and prune off, EVS alone runs. Shorthand for before_llm=EVS(evs_pruning_rate).
    before_llm: a reduction between the vision encoder and the LLM, which keeps every token's position:
        framefusion.EVS, VidCom2, FastVID, HoliTom, or EarlyTom (which also merges frames inside the vision tower,
        installed with it) (docs/methods.md); FrameFusion's budget then applies to what it kept. With merge and
        prune off, it alone runs.
    inner_merge: framefusion.InnerMerge, HoliTom's and EarlyTom's merge inside the LLM, instead of FrameFusion's
        steps (pass merge=False, prune=False with it).
    reference_positions: where the family's reference code places rotary positions differently from transformers
        (Qwen2-VL / Qwen2.5-VL), use the reference positions (see docs/positions.md).
    Applying again replaces the earlier settings; remove_framefusion(model) restores the model exactly.
    """
    family = family_for(model)
    check_number("cost", cost, low=0.0, high=1.0, low_inclusive=False)
    if similarity_lower_bound is not None:
        check_number("similarity_lower_bound", similarity_lower_bound, low=-1.0, high=1.0)
    check_number("ratio_lower_bound", ratio_lower_bound, low=0.0, high=1.0, low_inclusive=False)
    check_number("evs_pruning_rate", evs_pruning_rate, low=0.0, high=1.0, high_inclusive=False)
    if evs_pruning_rate > 0:
        if before_llm is not None:
            raise ValueError("evs_pruning_rate and before_llm both choose the reduction before the LLM; pass one")
        before_llm = EVS(evs_pruning_rate)
    if before_llm is not None and not isinstance(before_llm, tuple(METHODS.values())):
        raise ValueError(f"before_llm must be one of framefusion.{', framefusion.'.join(m.__name__ for m in METHODS.values())}"
                         f", got {before_llm!r}")
    if inner_merge is not None:
        if not isinstance(inner_merge, InnerMerge):
            raise ValueError(f"inner_merge must be a framefusion.InnerMerge, got {inner_merge!r}")
        if merge or prune:
            raise ValueError("inner_merge replaces FrameFusion's steps inside the LLM: pass merge=False, prune=False")
    if not (merge or prune or before_llm is not None or inner_merge is not None):
        raise ValueError("every reduction is off: nothing would be reduced; use the model without FrameFusion")
    if not merge:
        check_whole_number("dense_layers", dense_layers, low=1)
    attention = compat.attention_implementation(model.config)
    if attention == "flex_attention":
        raise ValueError("FrameFusion supports the sdpa, eager and flash-attention backends, not flex_attention")

    remove_framefusion(model)
    num_layers = len(family.language_model(model).layers)
    smallest = minimum_cost(num_layers, merge, dense_layers)
    if (merge or prune) and (cost < smallest or (not merge and dense_layers >= num_layers)):
        raise ValueError(
            f"cost {cost} is too small for a model with {num_layers} decoder layers"
            + (f" and {dense_layers} dense layers" if not merge else "")
            + f": use at least {smallest:.3f}"
        )
    settings = FrameFusionSettings(
        cost=float(cost),
        similarity_lower_bound=float(
            family.default_similarity_lower_bound if similarity_lower_bound is None else similarity_lower_bound
        ),
        ratio_lower_bound=float(ratio_lower_bound),
        merge=merge,
        prune=prune,
        dense_layers=dense_layers,
        importance_queries=family.importance_queries,
        before_llm=None if before_llm is None else before_llm.resolved(family),
        inner_merge=None if inner_merge is None else inner_merge.resolved(num_layers),
    )
    runtime = FrameFusionRuntime(model, family, settings)
    runtime.install()
    positions_restored = False
    # Restored by someone else first (e.g. for a baseline run): theirs to undo, not ours.
    if reference_positions and not family.has_reference_positions(model):
        positions_restored = family.restore_reference_positions(model)
    handle = FrameFusionHandle(model, family, settings, runtime, positions_restored)
    setattr(model, _ATTRIBUTE, handle)
    return handle


def remove_framefusion(model: nn.Module) -> None:
    """Take FrameFusion (and the reference positions it restored) off the model. Safe to call any number of times."""
    handle: FrameFusionHandle | None = model.__dict__.get(_ATTRIBUTE)
    if handle is None:
        return
    handle.runtime.remove()
    if handle.reference_positions:
        handle.family.remove_reference_positions(model)
    del model.__dict__[_ATTRIBUTE]


def framefusion_handle(model: nn.Module) -> FrameFusionHandle | None:
    """The handle of FrameFusion on this model, or None when it is not applied."""
    return model.__dict__.get(_ATTRIBUTE)
