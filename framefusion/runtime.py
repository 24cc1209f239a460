"""Runs FrameFusion inside a Hugging Face decoder stack.

It replaces the `forward` of every decoder layer of a standard pre-norm stack (input_layernorm, self_attn,
post_attention_layernorm, mlp) with one that can shorten the sequence before attention (layer 0) and between
attention and MLP (every layer but the last), during prefill only. The text model hands every layer the same
full-length rotary embeddings, mask and position ids; each layer takes the rows of the tokens still present.
Decoding steps (the prompt is already in the cache) run the original layer, with any materialised mask cut to that
layer's own, shorter cache.

The layout of the prompt (which tokens are video, and their spatial position in the frame) is read by a pre-hook on
the multimodal model's forward, which sees input_ids, from the model's family (framefusion/families/); a family
installs what else it needs through `Family.install(runtime)` (Qwen3-VL's DeepStack).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from framefusion import core
from framefusion import transformers_compat as compat
from framefusion.clock import Stopwatch
from framefusion.families.base import Family, VideoInputs


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
    # EVS before the LLM: the fraction of video tokens dropped before layer 0 (0: off). FrameFusion's budget then
    # applies to the tokens EVS kept; the achieved cost is still counted against the unreduced prompt.
    evs_pruning_rate: float = 0.0


@dataclass(frozen=True)
class ReductionStep:
    """One reduction step and the tokens before and after it: kind "merge" or "prune" inside the LLM (at `layer`,
    where "before_attention" or "after_attention"), or "evs" before it (layer None, where "before_llm")."""

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


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as the Llama/Qwen families apply it. states [..., n, hd]; cos, sin [n, hd]."""
    half = states.shape[-1] // 2
    rotated_half = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated_half * sin


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
                 track_merged_rows: bool = False):
        self.settings = settings
        self.num_layers = num_layers
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
    def wants_importance(self, layer: int) -> bool:
        """Whether the step after this layer's attention is the prune step (it needs this layer's q and k)."""
        if self.pruning_finished or layer >= self.num_layers - 1:
            return False
        if not self.settings.merge:
            return layer == self.settings.dense_layers - 1
        return self.merging_finished

    def evs_step(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """EVS before layer 0: hidden_states [1, L, d] (the embeddings entering the LLM) -> [1, L', d]."""
        before = (self.length, self.num_video)
        keep = core.evs_keep_by_patch(hidden_states[0], self.patch_types, self.settings.evs_pruning_rate)
        if not bool(keep.all()):
            self._keep(keep)
            hidden_states = hidden_states[:, keep]
        self._record_step(None, "evs", "before_llm", before)
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
        sparsities = self.sparsities if self.settings.merge else [0.0] * self.settings.dense_layers
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


class _QueryKeyCapture:
    """Forward hooks that keep this layer's query rows of the last q positions and all its keys (before rotation).

    Hooking the projections (or the q/k norms where the family has them) reads what the attention computes anyway,
    so importance works with any attention backend and costs no extra projection.
    """

    def __init__(self, attention: nn.Module, num_queries: int):
        self.num_queries = num_queries
        self.head_dim = attention.head_dim
        self.queries: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        # Families with q/k norms (Qwen3) normalise after the projection: hook the last module before rotation.
        query_module = attention.q_norm if hasattr(attention, "q_norm") else attention.q_proj
        key_module = attention.k_norm if hasattr(attention, "k_norm") else attention.k_proj
        self._handles = [
            query_module.register_forward_hook(self._keep_queries),
            key_module.register_forward_hook(self._keep_keys),
        ]

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        # [1, L, H * hd] or [1, L, H, hd] -> [H, L, hd]
        return states[0].reshape(states.shape[1], -1, self.head_dim).transpose(0, 1)

    def _keep_queries(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.queries = self._heads(output[:, -self.num_queries :])

    def _keep_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.keys = self._heads(output)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def rotated(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [H, q, hd] and keys repeated to H heads [H, L, hd]. cos, sin: [1, L, hd]."""
        assert self.queries is not None and self.keys is not None, "the attention did not run its projections"
        num_queries = self.queries.shape[1]
        queries = rotate(self.queries, cos[0, -num_queries:], sin[0, -num_queries:])
        keys = rotate(self.keys, cos[0], sin[0])
        # Grouped-query attention: key head j serves query heads j * groups ... (j + 1) * groups - 1.
        return queries, keys.repeat_interleave(queries.shape[0] // keys.shape[0], dim=0)


_NOT_SET = object()


class FrameFusionRuntime:
    """Everything apply_framefusion installs on one model, and how to take it off again."""

    def __init__(self, model: nn.Module, family: Family, settings: FrameFusionSettings):
        self.model = model
        self.family = family
        self.settings = settings
        self.multimodal_model = family.multimodal_model(model)
        self.language_model = family.language_model(model)
        self.layers = list(self.language_model.layers)
        self.num_layers = len(self.layers)
        self.stats = FrameFusionStats(requested_cost=settings.cost)
        self.measure_overhead = False
        self._prefill: PrefillReduction | None = None
        # Whether each prefill tracks which original positions every token averages (MergedRows): set by a family
        # that adds per-position features inside the stack (Qwen3-VL's DeepStack) in its install().
        self.track_merged_rows = False
        self._last_video_grid: torch.Tensor | None = None
        self._hook_handles: list[Any] = []
        # (module, attribute, what the instance held before: _NOT_SET for nothing)
        self._replaced_attributes: list[tuple[nn.Module, str, Any]] = []

    # --- install / remove --------------------------------------------------------------------------------------
    def install(self) -> None:
        for layer in self.layers:
            missing = [name for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
                       if not hasattr(layer, name)]
            if missing:
                raise ValueError(
                    f"{type(layer).__name__} is not a standard pre-norm decoder layer (no {', '.join(missing)}): "
                    "FrameFusion cannot hook it"
                )
        for index, layer in enumerate(self.layers):
            # accelerate (device_map) keeps its device-moving wrapper in `forward` and the real one in `_old_forward`:
            # replace the inner one so its hooks stay in place.
            attribute = "_old_forward" if compat.keeps_accelerate_wrapper(layer) else "forward"
            self.replace_attribute(layer, attribute, self._make_layer_forward(getattr(layer, attribute), layer, index))
        self._hook_handles.append(
            self.multimodal_model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        )
        self._hook_handles.append(
            self.multimodal_model.register_forward_hook(self._after_forward, with_kwargs=True, always_call=True)
        )
        original_video_features = getattr(self.multimodal_model, compat.VIDEO_FEATURES_METHOD, None)
        if original_video_features is not None:
            self.replace_attribute(self.multimodal_model, compat.VIDEO_FEATURES_METHOD,
                                   self._capture_video_grid(original_video_features))
        self.family.install(self)

    def replace_attribute(self, module: nn.Module, attribute: str, replacement: Callable) -> None:
        """Set an instance attribute, remembering what the instance held before; remove() puts it back."""
        self._replaced_attributes.append((module, attribute, module.__dict__.get(attribute, _NOT_SET)))
        setattr(module, attribute, replacement)

    @property
    def prefill(self) -> PrefillReduction | None:
        """The reduction of the prefill running now (None outside one, and during decoding)."""
        return self._prefill

    def remove(self) -> None:
        for module, attribute, previous in reversed(self._replaced_attributes):
            if previous is _NOT_SET:
                module.__dict__.pop(attribute, None)
            else:
                setattr(module, attribute, previous)
        self._replaced_attributes.clear()
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()
        self._prefill = None

    # --- layout of each forward --------------------------------------------------------------------------------
    def remember_video_grid(self, video_grid_thw: torch.Tensor | None) -> None:
        self._last_video_grid = video_grid_thw if isinstance(video_grid_thw, torch.Tensor) else None

    def _capture_video_grid(self, original: Callable) -> Callable:
        # wraps() keeps the signature: generate() picks the encoder's arguments by inspecting it.
        @functools.wraps(original)
        def get_video_features(*args: Any, **kwargs: Any) -> Any:
            grid = kwargs.get("video_grid_thw", args[1] if len(args) > 1 else None)
            self._last_video_grid = grid if isinstance(grid, torch.Tensor) else None
            return original(*args, **kwargs)

        return get_video_features

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._prefill = None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if compat.is_continuation(kwargs):
            return  # a decoding step (or a continuation of a conversation): never reduced
        if isinstance(kwargs.get("video_grid_thw"), torch.Tensor):
            self._last_video_grid = kwargs["video_grid_thw"]
        if input_ids is None:
            if kwargs.get("pixel_values_videos") is not None or compat.has_encoder_outputs(kwargs, "video"):
                raise ValueError("FrameFusion needs input_ids to find the video tokens; pass input_ids, not inputs_embeds")
            return
        layouts = [
            self.family.patch_types(self.model, row, VideoInputs(self._last_video_grid)) for row in input_ids
        ]
        self.stats = FrameFusionStats(
            prompt_tokens=input_ids.shape[1],
            tokens_per_layer=[input_ids.shape[1]] * self.num_layers,
            kept_positions=list(range(input_ids.shape[1])),
        )
        if all(layout is None for layout in layouts):
            return  # text or images only: untouched
        if input_ids.shape[0] > 1:
            raise ValueError(
                f"FrameFusion reduces one prompt at a time when a video is present (got a batch of {input_ids.shape[0]}); "
                "run the prompts one by one"
            )
        attention_mask = kwargs.get("attention_mask")
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            raise ValueError("FrameFusion does not support padded prompts yet; pass the prompt without padding")
        self._prefill = PrefillReduction(self.settings, layouts[0], self.num_layers, self.measure_overhead,
                                         track_merged_rows=self.track_merged_rows)

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._prefill is not None:
            self.stats = self._prefill.finish()
            self._prefill = None

    # --- the decoder layer ---------------------------------------------------------------------------------------
    def _make_layer_forward(self, original_forward: Callable, layer: nn.Module, index: int) -> Callable:
        runtime = self

        # The cache travels in kwargs under whatever name the installed transformers gives it (see transformers_compat):
        # passed on untouched, so we never hand a layer a deprecated keyword.
        def forward(hidden_states: torch.Tensor, attention_mask: Any = None, position_ids: Any = None,
                    position_embeddings: Any = None, **kwargs: Any) -> torch.Tensor:
            state = runtime._prefill
            if state is None:
                attention_mask = _cut_mask_to_cache(
                    attention_mask, compat.cache_from_kwargs(kwargs), index, hidden_states.shape[1]
                )
                return original_forward(
                    hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                    position_embeddings=position_embeddings, **kwargs,
                )
            return runtime._reducing_layer_forward(
                layer, index, state, hidden_states, attention_mask, position_ids, position_embeddings, kwargs,
            )

        return forward

    def _reducing_layer_forward(self, layer: nn.Module, index: int, state: PrefillReduction,
                                hidden_states: torch.Tensor, attention_mask: Any, position_ids: Any,
                                position_embeddings: Any, kwargs: dict) -> torch.Tensor:
        """The decoder layer with FrameFusion's steps; kwargs: the rest of the layer's arguments (cache, use_cache)."""
        clock = Stopwatch(hidden_states.device, enabled=state.measure)
        if index == 0 and self.settings.evs_pruning_rate > 0:
            with clock:
                hidden_states = state.evs_step(hidden_states)
        if index == 0 and not state.merging_finished:
            with clock:
                hidden_states = state.merge_step(hidden_states, index, "before_attention")
        with clock:
            position_embeddings = state.take_rows(position_embeddings, 1)
            attention_mask = state.take_mask(attention_mask)
            position_ids = state.take_rows(position_ids, -1)
        capture = None
        if state.wants_importance(index):
            capture = _QueryKeyCapture(layer.self_attn, self.settings.importance_queries)

        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
        try:
            hidden_states, _ = layer.self_attn(
                hidden_states=hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                position_embeddings=position_embeddings, **kwargs,
            )
        finally:
            if capture is not None:
                capture.close()
        hidden_states = residual + hidden_states
        state.record_layer()

        if index < self.num_layers - 1:
            with clock:
                if capture is not None:
                    cos, sin = position_embeddings
                    queries, keys = capture.rotated(cos, sin)
                    scaling = 1.0 / math.sqrt(capture.head_dim)
                    hidden_states = state.prune_step(hidden_states, index, queries, keys, scaling)
                elif not state.merging_finished:
                    hidden_states = state.merge_step(hidden_states, index, "after_attention")

        residual = hidden_states
        hidden_states = layer.post_attention_layernorm(hidden_states)
        hidden_states = layer.mlp(hidden_states)
        hidden_states = residual + hidden_states
        state.stats.overhead_seconds += clock.seconds
        return hidden_states


def _cut_mask_to_cache(mask: Any, cache: Any, layer_index: int, query_length: int) -> Any:
    """Cut a materialised decode mask to this layer's cache.

    transformers sizes the mask from layer 0's cache; a layer that kept fewer prompt tokens needs its last columns
    only (one unpadded prompt: every cached column is visible, and the newest columns carry the causal pattern).
    """
    if not isinstance(mask, torch.Tensor) or cache is None:
        return mask
    key_length = compat.cached_length(cache, layer_index) + query_length
    if mask.shape[-1] > key_length:
        return mask[..., -key_length:]
    return mask
