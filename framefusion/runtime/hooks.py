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
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.clock import Stopwatch
from framefusion.runtime.reduction import FrameFusionSettings, FrameFusionStats, PrefillReduction
from framefusion.runtime.video_inputs import VideoInputs

if TYPE_CHECKING:
    from framefusion.families.base import Family


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as the Llama/Qwen families apply it. states [..., n, hd]; cos, sin [n, hd]."""
    half = states.shape[-1] // 2
    rotated_half = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated_half * sin


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
