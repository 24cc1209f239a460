"""EarlyTom's Stage I inside a vision tower that encodes a video's frames as a batch of images (SigLIP, CLIP):
after each prune layer the frames are merged (framefusion.methods.earlytom.merge_frames), so later layers run on fewer.

The tower's output is padded back to the frames it was given (the last merged frame repeated), so that the family's
projector, pooling and splice see the shapes they expect; the merged frames come first. What Stage II needs (how many
frames are real, the last prune layer's attention received, the groups) is the tower's `VisionPlan`, read by the
runtime before layer 0 (runtime/before_llm.py).

Layers are wrapped by replacing their instance `forward`, not by forward hooks, so that transformers' own output
recorders (hidden_states) see the merged frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from framefusion.methods import earlytom
from framefusion.runtime import transformers_compat as compat

# Frames whose attention is formed at once when rating tokens: bounds the [frames, heads, S, S] probabilities.
ATTENTION_FRAMES_AT_ONCE = 4


@dataclass(frozen=True)
class TowerParts:
    """What EarlyTom needs of a family's vision tower: the module whose forward encodes the frames (a batch of
    images), its encoder layers (whose attention transformers_compat.vision_layer_queries_keys reads), and how the
    family pools a per-patch score [frames, patches] to its per-frame tokens [frames, S]."""

    tower: nn.Module
    layers: Sequence[nn.Module]
    pool_scores: Callable[[torch.Tensor], torch.Tensor]


def batch_tower_parts(tower: nn.Module, feature_layer: Any, pool_scores: Callable[[torch.Tensor], torch.Tensor],
                      class_tokens: int = 0) -> TowerParts | None:
    """TowerParts of a SigLIP/CLIP tower whose features are hidden_states[feature_layer] (the output of layer
    feature_layer - 1): only the layers up to that one can merge frames. class_tokens: leading tokens of each frame
    that the features drop (CLIP's class token under the "default" strategy), dropped from the scores too. None when
    the features come from several layers or from the embeddings."""
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int):
        return None
    layers = compat.vision_encoder_layers(tower)
    used = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
    if used < 1:
        return None
    return TowerParts(tower, layers[:used], lambda scores: pool_scores(scores[:, class_tokens:]))


@dataclass
class VisionPlan:
    """Stage I's result on one encoding: frames_in frames went in; the first `frames` of the output are real (the
    rest repeat the last); scores [frames, S] the last prune layer's attention received, pooled like the tokens;
    groups the segments of the merged frames."""

    frames_in: int
    frames: int
    scores: torch.Tensor
    groups: list[tuple[int, int]]
    # The frames each layer of the tower that feeds the features ran on, in order: the encoder's work.
    layer_frames: tuple[int, ...] = ()

    @property
    def mean_layer_frames(self) -> float | None:
        return sum(self.layer_frames) / len(self.layer_frames) if self.layer_frames else None

    def details(self) -> dict[str, Any]:
        """As JSON (a few numbers a frame): it travels with the features in the feature cache."""
        return {"frames_in": self.frames_in, "frames": self.frames, "groups": [list(group) for group in self.groups],
                "scores": self.scores.float().cpu().tolist(), "layer_frames": list(self.layer_frames)}

    @classmethod
    def from_details(cls, details: dict[str, Any], device: torch.device | str) -> VisionPlan:
        return cls(details["frames_in"], details["frames"], torch.tensor(details["scores"], device=device),
                   [tuple(group) for group in details["groups"]], tuple(details.get("layer_frames", ())))


class ReplacedForwards:
    """What runs in a vision tower by replacing modules' instance `forward`s (not forward hooks, so that transformers'
    output recorders see what they return): `install` them, `remove` puts back what each instance held, and `with`
    installs them for a block."""

    def __init__(self) -> None:
        self._replaced: list[tuple[nn.Module, Any]] = []

    def install(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        for module, previous in reversed(self._replaced):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._replaced.clear()

    def __enter__(self) -> Any:
        self.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def _replace(self, module: nn.Module, forward: Callable) -> None:
        self._replaced.append((module, module.__dict__.get("forward")))
        module.forward = forward


class FrameMergingTower(ReplacedForwards):
    """Stage I installed on a tower (`install` / `remove`, or as a context manager); `plan` is the last encoding's.

    settings: a resolved framefusion.EarlyTom (its prune layers, tau, max_window, ema)."""

    def __init__(self, parts: TowerParts, settings: Any):
        super().__init__()
        self.parts = parts
        self.settings = settings
        self.prune_layers = settings.prune_layers(len(parts.layers))
        self.plan: VisionPlan | None = None
        self.active = True  # False: the tower runs as published (another profile's encoding)
        self._last_merge: tuple[torch.Tensor, list[tuple[int, int]]] | None = None
        self._frames_after: dict[int, int] = {}  # prune layer -> the frames it left, in the running encoding

    def install(self) -> None:
        self._replace(self.parts.tower, self._tower_forward(self.parts.tower.forward))
        for index in range(self.prune_layers[0], len(self.parts.layers)):
            layer = self.parts.layers[index]
            if index in self.prune_layers:
                last = index == self.prune_layers[-1]
                self._replace(layer, self._layer_forward(layer, index, layer.forward, last=last))
            else:  # after a merge: a per-frame attention mask (SmolVLM's) is cut to the frames left
                self._replace(layer, self._cut_masks(layer.forward))

    def _tower_forward(self, original: Callable) -> Callable:
        def forward(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(pixel_values, *args, **kwargs)
            self._last_merge = None
            self._frames_after = {}
            output = original(pixel_values, *args, **kwargs)
            frames_in = pixel_values.shape[0]
            if self._last_merge is None:  # no prune layer ran (an empty batch)
                return output
            scores, groups = self._last_merge
            self.plan = VisionPlan(frames_in, scores.shape[0], self.parts.pool_scores(scores), groups,
                                   self._layer_frames(frames_in))
            return _padded(output, frames_in)

        return forward

    def _layer_frames(self, frames_in: int) -> tuple[int, ...]:
        frames, counts = frames_in, []
        for index in range(len(self.parts.layers)):
            counts.append(frames)
            frames = self._frames_after.get(index, frames)
        return tuple(counts)

    def _layer_forward(self, layer: nn.Module, index: int, original: Callable, last: bool) -> Callable:
        settings = self.settings
        original = self._cut_masks(original)  # after an earlier prune layer's merge

        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not self.active:
                return original(hidden_states, *args, **kwargs)
            # Only the last prune layer's attention reaches Stage II; the others merge the frames alone.
            scores = (attention_received(layer, hidden_states) if last
                      else hidden_states.new_zeros(hidden_states.shape[0], 1))
            output = original(hidden_states, *args, **kwargs)
            merged, merged_scores, groups = earlytom.merge_frames(
                output, scores, tau=settings.tau, max_window=settings.max_window, ema=settings.ema, regroup=last)
            if last:
                self._last_merge = (merged_scores, groups)
            self._frames_after[index] = merged.shape[0]
            return merged

        return forward


    def _cut_masks(self, original: Callable) -> Callable:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.active:
                args = tuple(_first_rows(value, hidden_states.shape[0]) for value in args)
                kwargs = {key: _first_rows(value, hidden_states.shape[0]) for key, value in kwargs.items()}
            return original(hidden_states, *args, **kwargs)

        return forward


def _first_rows(value: Any, frames: int) -> Any:
    """A per-frame tensor argument of a layer (an attention mask [frames_in, 1, N, N]) cut to the frames left. A
    video's frames share one size, so every frame's mask is the same and the first rows serve the merged frames."""
    if isinstance(value, torch.Tensor) and value.dim() > 1 and value.shape[0] > frames:
        return value[:frames]
    return value


def attention_received(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The attention each patch receives in this layer, mean over heads and queries: hidden_states [T, N, D] (the
    layer's input) -> [T, N] float32. The layer's own projections, a few frames at a time."""
    received = []
    for chunk in hidden_states.split(ATTENTION_FRAMES_AT_ONCE):
        queries, keys, scale = compat.vision_layer_queries_keys(layer, chunk)
        weights = torch.softmax((queries @ keys.transpose(-2, -1)).float() * scale, dim=-1)
        received.append(weights.mean(dim=(1, 2)))
    return torch.cat(received)


def _padded(output: Any, frames: int) -> Any:
    """Every tensor of the tower's output with fewer than `frames` rows, its last row repeated up to `frames`."""
    def pad(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and 0 < value.shape[0] < frames:
            return torch.cat([value, value[-1:].expand(frames - value.shape[0], *value.shape[1:])])
        if isinstance(value, tuple):
            return tuple(pad(item) for item in value)
        return value

    for key in list(output.keys()):
        output[key] = pad(output[key])
    return output


@contextlib.contextmanager
def encoding_with(parts: TowerParts | None, settings: Any | None,
                  installed: Any | None) -> Iterator[FrameMergingTower | None]:
    """Encode under `settings` (a resolved EarlyTom, or None: the tower as published), whatever is installed: what
    the runtime installed in the tower (`installed`: a frame merging or a signal capture) is set aside for the block."""
    was_active = installed.active if installed is not None else False
    if installed is not None:
        installed.active = False
    try:
        if settings is None or parts is None:
            yield None
        else:
            with FrameMergingTower(parts, settings) as merging:
                yield merging
    finally:
        if installed is not None:
            installed.active = was_active
