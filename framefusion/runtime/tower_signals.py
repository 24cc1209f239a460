"""The vision tower's signals that HoliTom and FastVID read in their official code, captured while the tower encodes a
video's frames as a batch of images (SigLIP, CLIP), and carried with the features to the stage before the LLM.

- HoliTom: the attention each patch receives in the tower's last layer (the layer whose output the features are), mean
  over heads and queries, pooled like the tokens.
- FastVID on LLaVA: SigLIP's attention-pooling head, which LLaVA-OneVision checkpoints do not carry, loaded from a
  SigLIP checkpoint the user names: its probe's attention over the patches (pooled like the tokens) and its pooled
  vector per frame, from the original SigLIP's post_layernorm and head applied to the tower's output, as the official
  code does. Without a named head FastVID takes the tower's last-layer attention and the frame's mean token.

- FastVID on Qwen-VL, whose tower packs the frames into one sequence (its official Qwen2.5-VL signal): in the tower's
  last block, the attention of each temporal frame's mean query over the frame's merge units (the mean of each unit's
  keys), rotary embedding applied, mean over heads, in the merged tokens' order (PackedTowerSignalCapture).

Elsewhere the stages fall back to the substitute in runtime/before_llm.py. docs/methods.md says which signal each
family gets.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from framefusion.errors import first_line
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.vision_merge import ReplacedForwards, TowerParts, attention_received


@dataclass
class TowerSignals:
    """One encoding's signals for its frames, in the tower's batch order: attention [frames, S] float32 pooled like the
    tokens; frame_vectors [frames, G] or None (SigLIP's pooled vector); source: where they came from, for reports."""

    attention: torch.Tensor
    frame_vectors: torch.Tensor | None
    source: str

    def per_video(self, frame_counts: list[int]) -> list[TowerSignals]:
        """The signals of each video of a prompt, whose frames the tower encoded in prompt order."""
        if sum(frame_counts) != self.attention.shape[0]:
            raise ValueError(f"the vision tower's signals cover {self.attention.shape[0]} frames but the prompt's "
                             f"videos have {sum(frame_counts)}: encode the prompt's videos under the profile together")
        pieces, first = [], 0
        for count in frame_counts:
            vectors = None if self.frame_vectors is None else self.frame_vectors[first:first + count]
            pieces.append(TowerSignals(self.attention[first:first + count], vectors, self.source))
            first += count
        return pieces

    def details(self) -> dict[str, Any]:
        """As JSON (a few numbers a frame): it travels with the features in the feature cache."""
        vectors = None if self.frame_vectors is None else self.frame_vectors.float().cpu().tolist()
        return {"kind": "tower-signals", "attention": self.attention.float().cpu().tolist(),
                "frame_vectors": vectors, "source": self.source}

    @classmethod
    def from_details(cls, details: dict[str, Any], device: torch.device | str) -> TowerSignals:
        vectors = details["frame_vectors"]
        return cls(torch.tensor(details["attention"], device=device),
                   None if vectors is None else torch.tensor(vectors, device=device), details["source"])


@dataclass(frozen=True)
class PoolingHead:
    """SigLIP's attention-pooling head and the post_layernorm before it, from the checkpoint `name`."""

    name: str
    post_layernorm: nn.Module
    head: nn.Module

    @property
    def width(self) -> int:
        return self.post_layernorm.normalized_shape[0]

    def __call__(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states [T, N, D] (the tower's last layer output) -> (the probe's attention [T, N] float32, the pooled
        vector [T, D] float32)."""
        return compat.siglip_pooling_head_outputs(self.head, self.post_layernorm(hidden_states))


@functools.lru_cache(maxsize=2)
def load_pooling_head(name: str, dtype: torch.dtype, device: str) -> PoolingHead:
    """The attention-pooling head of the SigLIP checkpoint `name` (a hub id or a local folder; a SigLIP model or its
    vision model), on `device` in `dtype`. Only the head and post_layernorm are kept. ValueError when it cannot."""
    try:
        post_layernorm, head = compat.load_siglip_pooling_head(os.path.expanduser(name))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot load a SigLIP pooling head from {name!r}: {first_line(error)}") from error
    return PoolingHead(name, post_layernorm.to(device=device, dtype=dtype), head.to(device=device, dtype=dtype))



class TowerSignalCapture(ReplacedForwards):
    """Captures `TowerSignals` on each encoding of the tower (`install` / `remove`, or as a context manager); `plan` is
    the last encoding's. pooling_head: read SigLIP's head on the last layer's output; None: the last layer's attention.
    """

    def __init__(self, parts: TowerParts, pooling_head: PoolingHead | None = None):
        super().__init__()
        self.parts = parts
        self.pooling_head = pooling_head
        self.plan: TowerSignals | None = None
        self.active = True  # False: the tower runs untouched (another profile's encoding)
        self._layer = parts.layers[-1]

    @property
    def source(self) -> str:
        if self.pooling_head is not None:
            return f"SigLIP pooling head of {self.pooling_head.name}"
        depth = len(compat.vision_encoder_layers(self.parts.tower))
        return f"the vision tower's, layer {len(self.parts.layers)} of {depth} (the features' layer)"

    def install(self) -> None:
        self._replace(self._layer, self._layer_forward(self._layer.forward))

    def _layer_forward(self, original: Callable) -> Callable:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(hidden_states, *args, **kwargs)
            received = attention_received(self._layer, hidden_states) if self.pooling_head is None else None
            output = original(hidden_states, *args, **kwargs)
            vectors = None
            if self.pooling_head is not None:
                received, vectors = self.pooling_head(output)
            self.plan = TowerSignals(self.parts.pool_scores(received), vectors, self.source)
            return output

        return forward


class PackedTowerSignalCapture:
    """The last block's attention of a tower that packs the frames into one sequence (Qwen-VL), captured on each
    encoding (`install` / `remove`, or as a context manager); `plan` is the last encoding's TowerSignals, None when its
    videos' frames differ in size (no [frames, S] table holds them: the stage takes the substitute).

    received False: FastVID's official Qwen2.5-VL signal, each frame's mean query over its merge units' mean keys.
    received True: HoliTom's LLaVA signal carried over (it has no Qwen path): the attention each merge unit receives,
    mean over heads, the frame's queries and the unit's patches."""

    def __init__(self, visual: nn.Module, received: bool = False):
        self.visual = visual
        self.received = received
        self.source = ("the vision tower's last block, attention received by each merge unit" if received
                       else "the vision tower's last block, each frame's mean query over its merge units")
        self.attention = compat.packed_vision_last_attention(visual)
        self.plan: TowerSignals | None = None
        self.active = True
        self._grid: torch.Tensor | None = None
        self._handles: list[Any] = []

    def install(self) -> None:
        self._handles = [self.visual.register_forward_pre_hook(self._remember_grid, with_kwargs=True),
                         self.attention.register_forward_pre_hook(self._capture, with_kwargs=True)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> PackedTowerSignalCapture:
        self.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def _remember_grid(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active or self._grid is None:
            return
        hidden_states = args[0] if args else kwargs["hidden_states"]
        queries, keys, scale = compat.packed_vision_queries_keys(module, hidden_states, kwargs["position_embeddings"])
        merge = self.visual.spatial_merge_size ** 2
        grid = self._grid.tolist()
        frame_lengths = [height * width for frames, height, width in grid for _ in range(frames)]
        rate = _attention_received if self.received else _mean_query_attention
        scores = torch.cat([rate(frame_queries, frame_keys, scale, merge) for frame_queries, frame_keys
                            in zip(queries.split(frame_lengths), keys.split(frame_lengths), strict=True)])
        order = compat.vision_window_order(self.visual, self._grid)
        if order is not None:  # the blocks see the units in window order; the merged tokens come back in raster order
            scores = scores[torch.argsort(order.to(scores.device))]
        per_frame = {height * width // merge for _, height, width in grid}
        self.plan = (TowerSignals(scores.view(-1, per_frame.pop()), None, self.source) if len(per_frame) == 1
                     else None)


def _mean_query_attention(queries: torch.Tensor, keys: torch.Tensor, scale: float, merge: int) -> torch.Tensor:
    """One temporal frame, queries and keys [L, heads, d]: the softmax over its L / merge units of the mean query
    against each unit's mean key, float32, mean over heads -> [L / merge]."""
    query = queries.float().mean(dim=0)  # [heads, d]
    unit_keys = keys.float().view(-1, merge, *keys.shape[1:]).mean(dim=1)  # [units, heads, d]
    logits = torch.einsum("hd,uhd->hu", query, unit_keys) * scale
    return torch.softmax(logits, dim=-1).mean(dim=0)


# Queries whose attention rows are formed at once when rating the merge units: bounds the [heads, queries, L] block.
QUERIES_AT_ONCE = 256


def _attention_received(queries: torch.Tensor, keys: torch.Tensor, scale: float, merge: int) -> torch.Tensor:
    """One temporal frame, queries and keys [L, heads, d]: the attention each patch receives, mean over heads and
    queries (float32 softmax), then each merge unit's mean over its patches -> [L / merge]."""
    keys_by_head = keys.float().transpose(0, 1)  # [heads, L, d]
    received = torch.zeros(keys.shape[0], device=keys.device)
    for chunk in queries.float().split(QUERIES_AT_ONCE):
        weights = torch.softmax(chunk.transpose(0, 1) @ keys_by_head.transpose(1, 2) * scale, dim=-1)
        received += weights.sum(dim=1).mean(dim=0)
    return (received / queries.shape[0]).view(-1, merge).mean(dim=1)
