"""The state of one prefill under FrameFusion: which original positions are still present, what each step did,
and the budget. Pure bookkeeping over tensors; the runtime (framefusion/runtime/hooks.py) calls it from the decoder layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from framefusion.methods import framefusion as core
from framefusion.methods import inner_merge
from framefusion.runtime import before_llm as before_llm_reductions
from framefusion.runtime.checks import check_number, check_whole_number


@dataclass(frozen=True)
class FrameFusionSettings:
    cost: float
    similarity_lower_bound: float
    ratio_lower_bound: float
    merge: bool = True
    prune: bool = True
    # prune-only (merge=False): layers that see every video token before the one prune step.
    dense_layers: int = 2
    importance_queries: int = 1
    # A reduction before layer 0 (runtime/before_llm.py: EVS, VidCom2, FastVID, HoliTom; None: off), resolved for
    # the family. FrameFusion's budget then applies to the tokens it kept; the achieved cost is still counted against
    # the unreduced prompt.
    before_llm: before_llm_reductions.BeforeLLM | None = None
    # HoliTom's and EarlyTom's merge inside the LLM (None: off; it replaces FrameFusion's steps), resolved.
    inner_merge: InnerMerge | None = None


# HoliTom's and EarlyTom's merge runs before layer 18 of their 28-layer LLM: other depths take the same share.
INNER_MERGE_REFERENCE_LAYER = (18, 28)


@dataclass(frozen=True)
class InnerMerge:
    """HoliTom's and EarlyTom's merge inside the LLM: before decoder layer `layer`, keep the (1 - ratio) share of the
    video tokens the last prompt token attends to most at the layer before, and fold each other video token into its
    most similar kept one. layer None: the reference layer 18 of 28 scaled to the model's depth."""

    layer: int | None = None
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_whole_number("layer", self.layer, low=1)
        check_number("ratio", self.ratio, low=0, high=1)

    def resolved(self, num_layers: int) -> InnerMerge:
        if self.layer is None:
            reference, depth = INNER_MERGE_REFERENCE_LAYER
            return InnerMerge(min(max(round(reference * num_layers / depth), 1), num_layers - 1), self.ratio)
        if self.layer >= num_layers:
            raise ValueError(f"layer {self.layer} is past the model's last decoder layer ({num_layers - 1})")
        return self


@dataclass(frozen=True)
class ReductionStep:
    """One reduction step and the tokens before and after it: kind "merge" or "prune" inside the LLM (at `layer`,
    where "before_attention" or "after_attention"), "inner-merge" (before attention), or a reduction before it: "evs",
    "vidcom2", "fastvid", "holitom" (layer None, where "before_llm")."""

    layer: int | None
    kind: str
    where: str
    tokens_before: int
    tokens_after: int
    video_tokens_before: int
    video_tokens_after: int


@dataclass
class FrameFusionStats:
    """What the last prefill did. All token counts are for the whole sequence (text + video) unless named video."""

    prompt_tokens: int = 0
    video_tokens: int = 0
    tokens_per_layer: list[int] = field(default_factory=list)
    video_tokens_per_layer: list[int] = field(default_factory=list)
    kept_positions: list[int] = field(default_factory=list)
    steps: list[ReductionStep] = field(default_factory=list)
    requested_cost: float = 1.0
    achieved_cost: float = 1.0
    # Seconds spent in FrameFusion's own work (similarity, merging, importance, bookkeeping); measured with device
    # synchronisation only when the runtime's `measure_overhead` is set (the benchmark sets it).
    overhead_seconds: float = 0.0

    @property
    def final_tokens(self) -> int:
        return len(self.kept_positions)

    @property
    def reduced(self) -> bool:
        return bool(self.steps) and self.final_tokens < self.prompt_tokens


class MergedRows:
    """For every token still present, the original positions whose rows it averages, with their weights (sparse).

    Merging averages hidden states, so anything added per position later (Qwen3-VL's DeepStack features) must be
    averaged the same way for the merged token: a merged token gets sum(weight * row of source). Entries, each [E]:
    `token` (current index), `source` (original position), `weight`; at most one entry per original position.
    """

    def __init__(self, length: int, device: torch.device):
        self.token = torch.arange(length, device=device)
        self.source = torch.arange(length, device=device)
        self.weight = torch.ones(length, device=device)

    def fold(self, length: int, positions_by_patch: torch.Tensor, merge_by_patch: torch.Tensor) -> None:
        """Move merged tokens' entries to their anchors and divide every anchor's entries by (members + 1).

        The same anchors and plain mean as core.merge_tokens; positions_by_patch, merge_by_patch: [V]; length: L.
        """
        anchor_index, run_lengths = core.merge_anchors(merge_by_patch)
        destination = torch.arange(length, device=positions_by_patch.device)
        destination[positions_by_patch] = positions_by_patch[anchor_index]
        divisor = torch.ones(length, device=positions_by_patch.device)
        divisor[positions_by_patch] = (run_lengths + 1).to(divisor.dtype)
        self.token = destination[self.token]
        self.weight = self.weight / divisor[self.token]

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the entries of removed tokens and renumber the rest. keep: [L] bool over the current tokens."""
        new_index = torch.cumsum(keep.long(), dim=0) - 1
        kept = keep[self.token]
        self.token = new_index[self.token[kept]]
        self.source = self.source[kept]
        self.weight = self.weight[kept]

    def combine(self, length: int, source_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per current token, the weighted sum of `rows` over its sources: [length, d].

        source_mask: [L_original] bool, the original positions that own a row; rows: [source_mask.sum(), d], in
        position order (as DeepStack's visual_pos_masks and embeddings).
        """
        row_of_position = torch.cumsum(source_mask.long(), dim=0) - 1
        has_row = source_mask[self.source]
        weighted = rows[row_of_position[self.source[has_row]]] * self.weight[has_row, None].to(rows.dtype)
        return rows.new_zeros(length, rows.shape[-1]).index_add_(0, self.token[has_row], weighted)


class PrefillReduction:
    """The state of one prefill: which original positions are still present, their patch types, the budget."""

    def __init__(self, settings: FrameFusionSettings, patch_types: torch.Tensor, num_layers: int, measure: bool,
                 track_merged_rows: bool = False, steps_end: int | None = None):
        self.settings = settings
        self.num_layers = num_layers
        # Steps after a layer's token mixer run only in the layers before this one (default: every layer but the last;
        # Gemma 4 ends them before its layers that keep keys and values for other layers, see layers.PreNormLayers).
        self.steps_end = num_layers - 1 if steps_end is None else min(steps_end, num_layers - 1)
        self.patch_types = patch_types  # [L_current]
        self.positions = torch.arange(patch_types.numel(), device=patch_types.device)  # [L_current] original indices
        self.original_length = patch_types.numel()
        self.video_tokens = int((patch_types >= 0).sum())
        self.num_video = self.video_tokens
        self.sparsities: list[float] = []
        self.merging_finished = not settings.merge
        self.pruning_finished = not settings.prune
        self.stats = FrameFusionStats(
            prompt_tokens=self.original_length, video_tokens=self.video_tokens, requested_cost=settings.cost
        )
        self.measure = measure
        self._sliced_cache: dict[tuple[int, int], Any] = {}  # (id of the full tensor, dim) -> (tensor, rows)
        # Only families that add per-position features inside the stack (Qwen3-VL's DeepStack) need it.
        self.merged_rows = MergedRows(self.original_length, patch_types.device) if track_merged_rows else None

    # --- bookkeeping -------------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self.positions.numel()

    def _keep(self, keep: torch.Tensor) -> None:
        self.positions = self.positions[keep]
        self.patch_types = self.patch_types[keep]
        if self.merged_rows is not None:
            self.merged_rows.keep(keep)
        # Counted once per step, not per layer: reading a count from the GPU waits for all queued work.
        self.num_video = int((self.patch_types >= 0).sum())
        self._sliced_cache.clear()

    def take_rows(self, tensor: Any, dim: int) -> Any:
        """The rows of the tokens still present, from a full-length tensor the text model passes to every layer."""
        if tensor is None or self.length == self.original_length:
            return tensor
        if isinstance(tensor, tuple):
            return tuple(self.take_rows(part, dim) for part in tensor)
        if not isinstance(tensor, torch.Tensor) or tensor.shape[dim] != self.original_length:
            return tensor
        key = (id(tensor), dim)
        cached = self._sliced_cache.get(key)
        if cached is None or cached[0] is not tensor:
            cached = (tensor, tensor.index_select(dim, self.positions.to(tensor.device)))
            self._sliced_cache[key] = cached
        return cached[1]

    def take_mask(self, mask: Any) -> Any:
        """A materialised mask cut to the tokens present: [B, 1, L, L] on rows and columns, or a [B, L] padding mask."""
        if not isinstance(mask, torch.Tensor):
            return mask
        if mask.dim() == 4:
            return self.take_rows(self.take_rows(mask, 2), 3)
        return self.take_rows(mask, mask.dim() - 1)

    def record_layer(self) -> None:
        self.stats.tokens_per_layer.append(self.length)
        self.stats.video_tokens_per_layer.append(self.num_video)

    def _record_step(self, layer: int | None, kind: str, where: str, before: tuple[int, int]) -> None:
        self.stats.steps.append(
            ReductionStep(layer, kind, where, before[0], self.length, before[1], self.num_video)
        )

    # --- steps -------------------------------------------------------------------------------------------------
    def step_after_attention(self, layer: int, rates_importance: bool = True) -> str | None:
        """The step on the residual stream after this layer's attention: "prune", "merge" or None.

        rates_importance: whether this layer's attention can rate tokens (a softmax attention over every token). In a
        hybrid stack (linear-attention or sliding-window layers between full-attention ones) the prune waits for the
        nearest layer that can; each layer it waits through is counted in the budget as a step that removed nothing,
        so the prune is sized for the layers that are really left. Called once per layer of a reducing prefill.
        """
        if layer >= self.steps_end or (self.merging_finished and self.pruning_finished):
            return None
        if not self.settings.merge:
            return "prune" if rates_importance and layer >= self.settings.dense_layers - 1 else None
        if not self.merging_finished:
            return "merge"
        if rates_importance:
            return "prune"
        self.sparsities.append(0.0)  # a layer that waits for the prune, at the token count merging left
        return None

    def before_llm_step(self, hidden_states: torch.Tensor, vision_plan: Any = None) -> torch.Tensor:
        """The reduction before layer 0: hidden_states [1, L, d] (the embeddings entering the LLM) -> [1, L', d].
        vision_plan: EarlyTom's Stage I result for this prompt's video (runtime/vision_merge.py)."""
        method = self.settings.before_llm
        before = (self.length, self.num_video)
        rows, keep = before_llm_reductions.reduce(method, hidden_states[0], self.patch_types, vision_plan)
        if not bool(keep.all()):
            self._keep(keep)
            hidden_states = rows[keep].unsqueeze(0)
        self._record_step(None, method.kind, "before_llm", before)
        return hidden_states

    def inner_merge_step(self, hidden_states: torch.Tensor, layer: int, attention: torch.Tensor) -> torch.Tensor:
        """The inner merge on the input of `layer`: hidden_states [1, L, d], attention [L] the last prompt token's
        attention at the layer before (mean over heads). Only video tokens are kept or folded."""
        video = torch.nonzero(self.patch_types >= 0).squeeze(1)
        before = (self.length, self.num_video)
        merged, kept = inner_merge.merge(hidden_states[:, video], attention[video], start=0, length=video.numel(),
                                         ratio=self.settings.inner_merge.ratio)
        keep = self.patch_types < 0
        keep[video[kept]] = True
        if not bool(keep.all()):
            rows = hidden_states.clone()
            rows[:, video[kept]] = merged
            self._keep(keep)
            hidden_states = rows[:, keep]
        self._record_step(layer, "inner-merge", "before_attention", before)
        return hidden_states

    def merge_step(self, hidden_states: torch.Tensor, layer: int, where: str) -> torch.Tensor:
        """hidden_states [1, L, d] -> [1, L', d]."""
        settings = self.settings
        upper = core.required_sparsity(self.sparsities, self.num_layers, settings.cost)
        positions_by_patch, similarity = core.similarity_to_previous_frame(hidden_states[0], self.patch_types)
        plan = core.plan_merge(similarity, settings.similarity_lower_bound, settings.ratio_lower_bound, upper)
        if not plan.pruning_finished:
            self.sparsities.append(plan.ratio)
        self.merging_finished = plan.merging_finished
        self.pruning_finished = self.pruning_finished or plan.pruning_finished
        before = (self.length, self.num_video)
        merged, keep = core.merge_tokens(hidden_states[0], positions_by_patch, plan.merge_by_patch)
        if not bool(keep.all()):
            if self.merged_rows is not None:
                self.merged_rows.fold(self.length, positions_by_patch, plan.merge_by_patch)
            self._keep(keep)
            hidden_states = merged[keep].unsqueeze(0)
        self._record_step(layer, "merge", where, before)
        return hidden_states

    def prune_step(
        self, hidden_states: torch.Tensor, layer: int, queries: torch.Tensor, keys: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """Prune by the attention of the last queries. queries [H, q, hd], keys [H, L, hd], rotated."""
        # Prune-only: every layer up to this one saw all video tokens (dense_layers of them in a standard stack).
        sparsities = self.sparsities if self.settings.merge else [0.0] * (layer + 1)
        sparsity = core.required_sparsity(sparsities, self.num_layers, self.settings.cost)
        importance = core.last_query_importance(queries, keys, scaling)
        keep = core.prune_keep_mask(importance, self.patch_types, sparsity)
        self.pruning_finished = True
        before = (self.length, self.num_video)
        if not bool(keep.all()):
            self._keep(keep)
            hidden_states = hidden_states[:, keep]
        self._record_step(layer, "prune", "after_attention", before)
        return hidden_states

    def finish(self) -> FrameFusionStats:
        stats = self.stats
        stats.kept_positions = self.positions.tolist()
        if self.video_tokens and stats.video_tokens_per_layer:
            stats.achieved_cost = sum(stats.video_tokens_per_layer) / (self.num_layers * self.video_tokens)
        return stats
