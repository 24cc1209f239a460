"""Runs FrameFusion inside a Hugging Face decoder stack.

It replaces the `forward` of every decoder layer with one that can shorten the sequence before attention (layer 0)
and between the token mixer and the feed-forward part (every layer but the last), during prefill only. The text model
hands every layer the same full-length rotary embeddings, mask and position ids (and whatever else a family's layers
take per token); each layer takes the rows of the tokens still present. A layer with no step after its attention runs
as it is on those rows; one with a step runs in two halves around it (runtime/layers.py: standard pre-norm layers,
hybrid ones whose token mixer is linear attention, or a family's own anatomy). Decoding steps (the prompt is already
in the cache) run the original layer, with any materialised mask cut to that layer's own, shorter cache.

Hybrid stacks: a merge step needs only hidden states and runs after any layer; the prune step needs a softmax
attention over every token, so it waits for the nearest layer that has one (see PrefillReduction.step_after_attention).

The layout of the prompt (which tokens are video, and their spatial position in the frame) is read by a pre-hook on
the multimodal model's forward, which sees input_ids, from the model's family (framefusion/families/); a family
installs what else it needs through `Family.install(runtime)` (Qwen3-VL's DeepStack).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from framefusion.methods.framefusion import last_query_importance
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.clock import Stopwatch
from framefusion.runtime.layers import PreNormLayers
from framefusion.runtime.before_llm import tower_capture
from framefusion.runtime.reduction import FrameFusionSettings, FrameFusionStats, PrefillReduction
from framefusion.runtime.tower_signals import PackedTowerSignalCapture, TowerSignalCapture, TowerSignals
from framefusion.runtime.vision_merge import FrameMergingTower, VisionPlan
from framefusion.runtime.video_inputs import VideoInputs

if TYPE_CHECKING:
    from framefusion.families.base import Family


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as the Llama/Qwen families apply it. states [..., n, hd]; cos, sin [n, rd].

    rd < hd is partial rotation (Qwen3.5: a quarter of each head): the first rd dimensions rotate, the rest pass.
    """
    rotary = cos.shape[-1]
    if rotary < states.shape[-1]:
        return torch.cat((rotate(states[..., :rotary], cos, sin), states[..., rotary:]), dim=-1)
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
        # The attention's own softmax scale where it is not 1/sqrt(head_dim) (Gemma 4 normalises q and k instead).
        default_scaling = 1.0 / math.sqrt(self.head_dim)
        own_scaling = getattr(attention, "scaling", default_scaling)
        self.scaling = default_scaling if math.isclose(own_scaling, default_scaling, rel_tol=1e-6) else float(own_scaling)
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
        # How a decoder layer runs in two halves around the step after its token mixer; a family whose layers are not
        # standard pre-norm ones (Gemma 4) sets its own in install().
        self.anatomy = PreNormLayers()
        # The layer whose attention rates the tokens for the inner merge (the nearest one before the merge layer that
        # has a softmax attention over every token); None without an inner merge. Set in install().
        self.inner_merge_rater: int | None = None
        # What runs in the vision tower for the stage before the LLM: EarlyTom's frame merging
        # (runtime/vision_merge.py) or the capture of HoliTom's and FastVID's signals (runtime/tower_signals.py), where
        # the family's tower gives them; and what the tower gave, passed for the next prefill when its features were
        # encoded beforehand (use_vision_plan).
        self.tower_capture: FrameMergingTower | TowerSignalCapture | PackedTowerSignalCapture | None = None
        self._given_vision_plan: VisionPlan | TowerSignals | None = None
        self._last_video_grid: torch.Tensor | None = None
        self._hook_handles: list[Any] = []
        # (module, attribute, what the instance held before: _NOT_SET for nothing)
        self._replaced_attributes: list[tuple[nn.Module, str, Any]] = []

    # --- install / remove --------------------------------------------------------------------------------------
    def install(self) -> None:
        # The family first: it may give the layers' anatomy, which says whether FrameFusion can hook them.
        self.family.install(self)
        for layer in self.layers:
            problem = self.anatomy.problem(layer)
            if problem is not None:
                self.remove()
                raise ValueError(f"{problem}: FrameFusion cannot hook it")
        if self.settings.inner_merge is not None:
            self.inner_merge_rater = self._inner_merge_rater(self.settings.inner_merge.layer)
        try:
            self.tower_capture = tower_capture(self.settings.before_llm, self.family, self.model)
        except ValueError:
            self.remove()
            raise
        if self.tower_capture is not None:
            self.tower_capture.install()
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

    def _inner_merge_rater(self, merge_layer: int) -> int:
        # No later than where the anatomy ends the steps (Gemma 4: before its layers that share keys and values).
        for index in range(min(merge_layer, self.anatomy.steps_end(self.layers)) - 1, -1, -1):
            if self.anatomy.importance_attention(self.layers[index]) is not None:
                return index
        self.remove()
        raise ValueError(f"no layer before layer {merge_layer} has a softmax attention to rate the tokens for the "
                         "inner merge: use a later layer")

    def replace_attribute(self, module: nn.Module, attribute: str, replacement: Callable) -> None:
        """Set an instance attribute, remembering what the instance held before; remove() puts it back."""
        self._replaced_attributes.append((module, attribute, module.__dict__.get(attribute, _NOT_SET)))
        setattr(module, attribute, replacement)

    @property
    def prefill(self) -> PrefillReduction | None:
        """The reduction of the prefill running now (None outside one, and during decoding)."""
        return self._prefill

    def remove(self) -> None:
        if self.tower_capture is not None:
            self.tower_capture.remove()
            self.tower_capture = None
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

    def use_vision_plan(self, plan: VisionPlan | TowerSignals | None) -> None:
        self._given_vision_plan = plan

    def _vision_plan(self) -> VisionPlan | TowerSignals | None:
        """What the vision tower gave for this prefill: the one given for it, else the tower's last encoding."""
        if self._given_vision_plan is not None:
            return self._given_vision_plan
        return self.tower_capture.plan if self.tower_capture is not None else None

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
        if isinstance(self.tower_capture, FrameMergingTower):
            self._merge_frames_of_videos_only(kwargs, has_video=any(layout is not None for layout in layouts))
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
                                         track_merged_rows=self.track_merged_rows,
                                         steps_end=self.anatomy.steps_end(self.layers))

    def _merge_frames_of_videos_only(self, kwargs: dict, has_video: bool) -> None:
        """EarlyTom merges whatever batch its tower encodes: it runs for a prompt with a video, not for one without
        (images alone are encoded as published); a prompt with images beside its video is refused where the two come
        in separate inputs, since the images would be merged as frames."""
        self.tower_capture.active = has_video
        if has_video and self.family.video_modality == "video" and kwargs.get("pixel_values") is not None:
            raise ValueError("EarlyTom would merge the prompt's images as video frames: ask about the images and the "
                             "video in separate prompts")

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._prefill is not None:
            self.stats = self._prefill.finish()
            self._prefill = None
            # Used by this prefill: a later prompt must not read this video's (a chat turn without it, another video).
            self._given_vision_plan = None
            if self.tower_capture is not None:
                self.tower_capture.plan = None

    # --- the decoder layer ---------------------------------------------------------------------------------------
    def _make_layer_forward(self, original_forward: Callable, layer: nn.Module, index: int) -> Callable:
        runtime = self
        # Names of the arguments a caller may pass by position (Gemma 4 passes per_layer_input second).
        positional = [name for name, parameter in inspect.signature(original_forward).parameters.items()
                      if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]

        # The cache travels in kwargs under whatever name the installed transformers gives it (see transformers_compat):
        # passed on untouched, so we never hand a layer a deprecated keyword.
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            kwargs.update(zip(positional[1:], args))
            state = runtime._prefill
            if state is None:
                kwargs["attention_mask"] = _cut_mask_to_cache(
                    kwargs.get("attention_mask"), compat.cache_from_kwargs(kwargs), index, hidden_states.shape[1]
                )
                return original_forward(hidden_states, **kwargs)
            return runtime._reducing_layer_forward(original_forward, layer, index, state, hidden_states, kwargs)

        return forward

    def _present_rows(self, state: PrefillReduction, arguments: dict[str, Any]) -> dict[str, Any]:
        """The layer's per-token arguments cut to the tokens still present (the text model passes them full length)."""
        present = dict(arguments)
        if "position_embeddings" in present:
            present["position_embeddings"] = state.take_rows(present["position_embeddings"], 1)
        if "attention_mask" in present:
            present["attention_mask"] = state.take_mask(present["attention_mask"])
        if "position_ids" in present:
            present["position_ids"] = state.take_rows(present["position_ids"], -1)
        for name in self.anatomy.per_token_arguments:
            if name in present:
                present[name] = state.take_rows(present[name], 1)
        return present

    def _reducing_layer_forward(self, original_forward: Callable, layer: nn.Module, index: int,
                                state: PrefillReduction, hidden_states: torch.Tensor,
                                arguments: dict[str, Any]) -> torch.Tensor:
        """The decoder layer with FrameFusion's steps; arguments: the layer's other arguments (mask, positions, cache)."""
        clock = Stopwatch(hidden_states.device, enabled=state.measure)
        if index == 0 and self.settings.before_llm is not None:
            with clock:
                hidden_states = state.before_llm_step(hidden_states, self._vision_plan())
        if index == 0 and not state.merging_finished:
            with clock:
                hidden_states = state.merge_step(hidden_states, index, "before_attention")
        with clock:
            present = self._present_rows(state, arguments)
        attention = self.anatomy.importance_attention(layer)
        if self.inner_merge_rater == index:
            return self._inner_merge_rating_layer(layer, index, state, hidden_states, present, attention, clock)
        step = state.step_after_attention(index, rates_importance=attention is not None)
        if step is None:
            # No step after this layer's attention: the layer as it is, on the tokens present.
            state.record_layer()
            state.stats.overhead_seconds += clock.seconds
            return original_forward(hidden_states, **present)

        capture = _QueryKeyCapture(attention, self.settings.importance_queries) if step == "prune" else None
        try:
            hidden_states = self.anatomy.attention_half(layer, hidden_states, present)
        finally:
            if capture is not None:
                capture.close()
        state.record_layer()
        with clock:
            if capture is not None:
                cos, sin = present["position_embeddings"]
                queries, keys = capture.rotated(cos, sin)
                hidden_states = state.prune_step(hidden_states, index, queries, keys, capture.scaling)
            else:
                hidden_states = state.merge_step(hidden_states, index, "after_attention")
            present = self._present_rows(state, arguments)
        hidden_states = self.anatomy.feed_forward_half(layer, hidden_states, present)
        state.stats.overhead_seconds += clock.seconds
        return hidden_states

    def _inner_merge_rating_layer(self, layer: nn.Module, index: int, state: PrefillReduction,
                                  hidden_states: torch.Tensor, present: dict[str, Any], attention: nn.Module,
                                  clock: Stopwatch) -> torch.Tensor:
        """The layer whose last-query attention rates the tokens for the inner merge, then the merge on its output
        (the input of the merge layer)."""
        capture = _QueryKeyCapture(attention, num_queries=1)
        try:
            hidden_states = self.anatomy.attention_half(layer, hidden_states, present)
        finally:
            capture.close()
        hidden_states = self.anatomy.feed_forward_half(layer, hidden_states, present)
        state.record_layer()
        with clock:
            cos, sin = present["position_embeddings"]
            queries, keys = capture.rotated(cos, sin)
            rating = last_query_importance(queries, keys, capture.scaling)
            hidden_states = state.inner_merge_step(hidden_states, index + 1, rating)
        state.stats.overhead_seconds += clock.seconds
        return hidden_states


def _cut_mask_to_cache(mask: Any, cache: Any, layer_index: int, query_length: int) -> Any:
    """Cut a materialised decode mask to this layer's cache.

    transformers sizes the mask from layer 0's cache; a layer that kept fewer prompt tokens needs its last columns
    only (one unpadded prompt: every cached column is visible, and the newest columns carry the causal pattern).
    """
    if not isinstance(mask, torch.Tensor) or cache is None or not compat.keeps_own_cache(cache, layer_index):
        return mask
    key_length = compat.cached_length(cache, layer_index) + query_length
    if mask.shape[-1] > key_length:
        return mask[..., -key_length:]
    return mask
