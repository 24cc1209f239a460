"""The reductions between the vision encoder and the LLM: EVS, VidCom2, FastVID, HoliTom's outer step and EarlyTom's
token selection (its frame merging runs inside the vision tower: runtime/vision_merge.py).

Each runs on the embeddings entering decoder layer 0, video by video, and leaves every kept token at an original
position (its rotary position, 1-D or M-RoPE, does not move). A method that merges tokens (FastVID, HoliTom) writes the
merged token at the position of the token it kept. The settings are small frozen dataclasses, what
`apply_framefusion(before_llm=...)` takes; `resolved(family)` fills what depends on the model family.

Two signals of the official code come from inside the vision tower, which transformers does not expose: the
per-token attention (FastVID, HoliTom) and FastVID's per-frame vector. The vision tower gives them where the family
says how to read it (runtime/tower_signals.py: the last layer's attention, SigLIP's pooling head when the user names
one, or a Qwen-VL tower's last block). Elsewhere the attention is that of one query per frame, the frame's mean
token, over the frame's tokens as the LLM receives them (the form of FastVID's Qwen2.5-VL signal and of SigLIP's
pooling-head probe), and the per-frame vector is the frame's mean token (FastVID's Qwen choice and its documented
fallback for LLaVA). docs/methods.md lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from framefusion.methods import earlytom, evs, fastvid, holitom, vidcom2
from framefusion.runtime.checks import check_number, check_whole_number
from framefusion.runtime.tower_signals import (
    PackedTowerSignalCapture,
    TowerSignalCapture,
    TowerSignals,
    load_pooling_head,
)
from framefusion.runtime.vision_merge import FrameMergingTower, VisionPlan

FASTVID_VARIANTS = ("parallel", "segmentwise")
# FastVID's reference settings per variant: the parallel one as measured on LLaVA-OneVision, the segment-wise one
# (with near-duplicate skipping) as measured on Qwen2.5-VL; the other settings are the functions' defaults.
FASTVID_RETAIN_RATIO = {"parallel": 0.10, "segmentwise": 0.27}


class _FamilyTraits(Protocol):
    name: str
    fastvid_variant: str | None
    merges_frames_in_tower: bool
    siglip_tower: bool


@dataclass(frozen=True)
class EVS:
    """Efficient Video Sampling (vLLM's masks): drop the `pruning_rate` share of the video tokens least changed since
    the previous frame, the first frame always kept. per_video: budget each video of the prompt on its own (vLLM's
    way) instead of all the prompt's video tokens together."""

    pruning_rate: float = 0.75
    per_video: bool = False
    kind: ClassVar[str] = "evs"

    def __post_init__(self) -> None:
        check_number("pruning_rate", self.pruning_rate, low=0, high=1, high_inclusive=False)

    def resolved(self, family: _FamilyTraits) -> EVS:
        return self


@dataclass(frozen=True)
class VidCom2:
    """VidCom2 (vLLM's masks): keep the video tokens least like their video's and their frame's average token, a larger
    share for the most distinctive frames, at `pruning_rate`; each video budgeted on its own, as vLLM does."""

    pruning_rate: float = 0.75
    kind: ClassVar[str] = "vidcom2"

    def __post_init__(self) -> None:
        check_number("pruning_rate", self.pruning_rate, low=0, high=1, high_inclusive=False)

    def resolved(self, family: _FamilyTraits) -> VidCom2:
        return self


@dataclass(frozen=True)
class FastVID:
    """FastVID: segments where consecutive frames stop looking alike, each frame's most attended tokens kept, the rest
    of each segment folded into density-peak anchors. variant None: the one measured on the model's family
    ("parallel" on LLaVA families, "segmentwise" on Qwen families); retain_ratio None: that variant's reference share
    (0.10, 0.27). pooling_head: a SigLIP checkpoint (hub id or folder) whose attention-pooling head gives the
    attention and per-frame vector, as the official LLaVA-OneVision code reads them (google/siglip-so400m-patch14-384
    there); None: the tower's last-layer attention and the frame's mean token."""

    retain_ratio: float | None = None
    variant: str | None = None
    pooling_head: str | None = None
    kind: ClassVar[str] = "fastvid"

    def __post_init__(self) -> None:
        if self.retain_ratio is not None:
            check_number("retain_ratio", self.retain_ratio, low=0, high=1)
        if self.variant is not None and self.variant not in FASTVID_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(FASTVID_VARIANTS)}, got {self.variant!r}")
        if self.pooling_head is not None and (not isinstance(self.pooling_head, str) or not self.pooling_head.strip()):
            raise ValueError(f"pooling_head must name a SigLIP checkpoint (hub id or folder), "
                             f"got {self.pooling_head!r}")

    def resolved(self, family: _FamilyTraits) -> FastVID:
        variant = self.variant or family.fastvid_variant
        if variant is None:
            raise ValueError(f"FastVID was measured on the LLaVA and Qwen-VL families, not on {family.name}; "
                             "use vidcom2 or holitom there, or name a variant")
        if self.pooling_head is not None and not family.siglip_tower:
            raise ValueError(f"FastVID's pooling_head is read on a SigLIP vision tower (LLaVA-OneVision, LLaVA-Video); "
                             f"{family.name}'s tower is not one: leave pooling_head out")
        retain_ratio = FASTVID_RETAIN_RATIO[variant] if self.retain_ratio is None else self.retain_ratio
        return replace(self, variant=variant, retain_ratio=retain_ratio)


@dataclass(frozen=True)
class HoliTom:
    """HoliTom's outer step: windows that free the most static tokens (dynamic programming), static tokens averaged
    over time and clustered (DPC-KNN), each frame's most attended dynamic tokens kept; `retain_ratio` of the video
    tokens in all. tau: the cosine from which a position counts as static (the official 0.65 at retain_ratio 0.10)."""

    retain_ratio: float = 0.10
    tau: float = 0.65
    max_window: int = 1024
    beta: float = 0.6
    knn: int = 7
    kind: ClassVar[str] = "holitom"

    def __post_init__(self) -> None:
        check_number("retain_ratio", self.retain_ratio, low=0, high=1)
        check_number("tau", self.tau, low=-1, high=1)
        check_whole_number("max_window", self.max_window, low=1)
        check_whole_number("knn", self.knn, low=1)

    def resolved(self, family: _FamilyTraits) -> HoliTom:
        return self


# EarlyTom's prune layers in its 26-layer SigLIP tower (the VideoMME row); other depths take the same shares.
EARLYTOM_REFERENCE_LAYERS = ((8, 21, 23), 26)


@dataclass(frozen=True)
class EarlyTom:
    """EarlyTom: frames merged inside the vision tower after the prune layers (Stage I, runtime/vision_merge.py), then
    per segment the end frames' most attended tokens and one token per run of positions of the middle frames (Stage
    II, here), `retain_ratio` of the video tokens in all. tau: the similarity from which frames stay in one segment;
    max_window: segments are shorter than this; ema: the segment similarity's smoothing; layers: the tower's prune
    layers (None: 8, 21, 23 of 26, scaled to the tower's depth). Defaults: the official VideoMME row."""

    retain_ratio: float = 0.2
    tau: float = 0.5
    max_window: int = 6
    ema: float = 0.9
    layers: tuple[int, ...] | None = None
    kind: ClassVar[str] = "earlytom"

    def __post_init__(self) -> None:
        check_number("retain_ratio", self.retain_ratio, low=0, high=1)
        check_number("ema", self.ema, low=0, high=1)
        check_number("tau", self.tau, low=-1, high=1)
        check_whole_number("max_window", self.max_window, low=2)
        if self.layers is not None and (not self.layers or any(
                isinstance(layer, bool) or not isinstance(layer, int) or layer < 0 for layer in self.layers)):
            raise ValueError(f"layers must be tower layer indices >= 0, got {self.layers!r}")

    def resolved(self, family: _FamilyTraits) -> EarlyTom:
        if not family.merges_frames_in_tower:
            raise ValueError(f"EarlyTom merges frames inside a vision tower that encodes them as a batch of images "
                             f"(LLaVA-OneVision, LLaVA-Video, LLaVA-NeXT-Video, SmolVLM2, InternVL); {family.name}'s "
                             "tower does not: use holitom, fastvid or vidcom2")
        return self

    def prune_layers(self, depth: int) -> tuple[int, ...]:
        """The tower layers after which frames merge, ascending, for a tower of `depth` layers."""
        if self.layers is not None:
            if max(self.layers) >= depth:
                raise ValueError(f"EarlyTom's layer {max(self.layers)} is past the vision tower's last ({depth - 1})")
            return tuple(sorted(set(self.layers)))
        reference, reference_depth = EARLYTOM_REFERENCE_LAYERS
        return tuple(sorted({min(round(layer * depth / reference_depth), depth - 1) for layer in reference}))


BeforeLLM = EVS | VidCom2 | FastVID | HoliTom | EarlyTom
METHODS: dict[str, type] = {method.kind: method for method in (EVS, VidCom2, FastVID, HoliTom, EarlyTom)}


def tower_capture(method: BeforeLLM | None, family: Any, model: nn.Module
                  ) -> FrameMergingTower | TowerSignalCapture | PackedTowerSignalCapture | None:
    """What `method` (resolved) runs in the vision tower of `model` (of `family`), not yet installed: EarlyTom's frame
    merging; HoliTom's and FastVID's signal capture where the tower encodes frames as a batch or packs them (Qwen-VL;
    elsewhere they take the substitutes); None for the other methods. ValueError when EarlyTom or a pooling head cannot
    run."""
    if not isinstance(method, (EarlyTom, HoliTom, FastVID)):
        return None
    parts = family.batch_tower(model)
    if isinstance(method, EarlyTom):
        if parts is None:
            raise ValueError(f"EarlyTom cannot merge frames in this {family.name} model's vision tower (its features "
                             "come from an earlier layer than the last)")
        return FrameMergingTower(parts, method)
    if parts is None:
        packed = family.packed_tower(model)
        return None if packed is None else PackedTowerSignalCapture(packed, received=isinstance(method, HoliTom))
    head = None
    if isinstance(method, FastVID) and method.pooling_head is not None:
        weight = next(parts.tower.parameters())
        head = load_pooling_head(method.pooling_head, weight.dtype, str(weight.device))
        width = parts.tower.config.hidden_size
        if head.width != width:
            raise ValueError(f"the SigLIP pooling head of {method.pooling_head} is {head.width} wide, this model's "
                             f"vision tower {width}: name the SigLIP checkpoint the tower comes from")
    return TowerSignalCapture(parts, head)


def signals_used(kind: str, vision_plan: Any) -> str:
    """Where the signals of a HoliTom or FastVID stage (`kind`) came from, for reports: the vision tower (vision_plan:
    its TowerSignals) or the substitutes."""
    tower = vision_plan if isinstance(vision_plan, TowerSignals) else None
    used = [f"attention: {tower.source}" if tower is not None
            else "attention: the frame-mean query over the LLM input (a substitute)"]
    if kind == "fastvid":
        has_vectors = tower is not None and tower.frame_vectors is not None
        used.append(f"frame vector: {tower.source}" if has_vectors else "frame vector: the frame's mean token")
    return "; ".join(used)


def video_grids(patch_types: torch.Tensor) -> list[torch.Tensor]:
    """The sequence positions of each video's tokens, [T, P] frame by frame, from a prompt's patch types [L].

    A video's types are base..base+P-1, its first frame contiguous in the sequence; the next video starts at type
    base + P after a token that is not video (see Family.patch_types).
    """
    video_positions = torch.nonzero(patch_types >= 0).squeeze(1)
    types = patch_types[video_positions]
    listed_types, listed_positions = types.tolist(), video_positions.tolist()
    grids, base, first = [], 0, 0
    while first < len(listed_types):
        per_frame = 1
        while (first + per_frame < len(listed_types) and listed_types[first + per_frame] == base + per_frame
               and listed_positions[first + per_frame] == listed_positions[first + per_frame - 1] + 1):
            per_frame += 1
        in_video = (types >= base) & (types < base + per_frame)
        grids.append(video_positions[in_video].reshape(-1, per_frame))
        first += int(in_video.sum())
        base += per_frame
    return grids


def frame_query_attention(features: torch.Tensor) -> torch.Tensor:
    """The attention of each frame's mean token over the frame's tokens: features [T, S, C] -> [T, S], float32,
    each row summing to 1. The stand-in for the vision tower's attention the official code reads."""
    frames = features.float()
    query = frames.mean(dim=1, keepdim=True)  # [T, 1, C]
    scores = (query @ frames.transpose(1, 2))[:, 0] / math.sqrt(frames.shape[-1])
    return torch.softmax(scores, dim=-1)


def reduce(method: BeforeLLM, hidden_states: torch.Tensor, patch_types: torch.Tensor,
           vision_plan: VisionPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a (resolved) method on one prompt: hidden_states [L, d], patch_types [L]; vision_plan: what the vision
    tower gave for the prompt's videos: EarlyTom's Stage I result (EarlyTom), or TowerSignals (HoliTom, FastVID; None:
    the substitute signals).

    Returns (rows [L, d]: the input with merged tokens written at their kept positions, keep [L] bool): the tokens
    left are rows[keep]. Tokens that are not video are always kept.
    """
    if isinstance(method, EVS) and not method.per_video:
        return hidden_states, evs.keep_by_patch(hidden_states, patch_types, method.pruning_rate)
    grids = video_grids(patch_types)
    if isinstance(method, EarlyTom):
        return _select_after_stage_one(method, hidden_states, grids, vision_plan)
    keep = torch.ones(patch_types.shape, dtype=torch.bool, device=hidden_states.device)
    rows = hidden_states
    signals: list[TowerSignals | None] = [None] * len(grids)
    if isinstance(vision_plan, TowerSignals) and isinstance(method, (FastVID, HoliTom)) and grids:
        signals = vision_plan.per_video([grid.shape[0] for grid in grids])
    for grid, video_signals in zip(grids, signals, strict=True):
        positions = grid.reshape(-1)
        frames = hidden_states[positions].reshape(*grid.shape, -1)  # [T, P, d]
        kept, tokens = _reduce_video(method, frames, video_signals)
        keep[positions] = False
        keep[positions[kept]] = True
        if tokens is not None:
            if rows is hidden_states:
                rows = hidden_states.clone()
            rows[positions[kept]] = tokens.to(rows.dtype)
    return rows, keep


def _reduce_video(method: BeforeLLM, frames: torch.Tensor, signals: TowerSignals | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One video, frames [T, P, d]: (kept flat indices t * P + p, the tokens written there or None: unchanged);
    signals: the tower's for these frames, or None (the substitutes)."""
    count, per_frame, _ = frames.shape
    flat = frames.reshape(count * per_frame, -1)
    if isinstance(method, EVS):
        return torch.nonzero(evs.keep_mask(flat, per_frame, method.pruning_rate)).squeeze(1), None
    if isinstance(method, VidCom2):
        return torch.nonzero(vidcom2.keep_mask(flat, per_frame, method.pruning_rate)).squeeze(1), None
    # The merging methods run in float32: their clustering distances and means are float32 in the official runs.
    features = frames.float()
    if signals is None:
        attention = frame_query_attention(features)
    else:
        if signals.attention.shape != features.shape[:2]:
            raise ValueError(f"the vision tower's attention has shape {tuple(signals.attention.shape)}, the video's "
                             f"tokens {tuple(features.shape[:2])}: the family pools its scores unlike its tokens")
        attention = signals.attention.to(features.device, torch.float32)
    if isinstance(method, FastVID):
        vectors = signals.frame_vectors if signals is not None else None
        global_features = features.mean(dim=1) if vectors is None else vectors.to(features.device, torch.float32)
        run = fastvid.reduce if method.variant == "parallel" else fastvid.reduce_segmentwise
        tokens, kept = run(features, attention, global_features, retain_ratio=method.retain_ratio)
        return kept, tokens
    tokens, kept = holitom.reduce_in_place(features, attention, retain_ratio=method.retain_ratio, tau=method.tau,
                                           max_window=method.max_window, beta=method.beta, knn=method.knn)
    return kept, tokens


def _select_after_stage_one(method: EarlyTom, hidden_states: torch.Tensor, grids: list[torch.Tensor],
                            plan: VisionPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
    """EarlyTom's Stage II on the one video of a prompt whose frames Stage I merged: the first `plan.frames` frames
    are real. Its tokens take the video's first positions in the official order (segments in time, a segment's first
    frame, middle frames, last frame), as the official code numbers them from the video's start."""
    if plan is None:
        raise ValueError("EarlyTom selects tokens among the frames its vision stage merged, but no video was encoded "
                         "under it: pass the pixel values (not precomputed features) or encode with the profile")
    if len(grids) != 1 or grids[0].shape[0] != plan.frames_in:
        raise ValueError("EarlyTom reduces prompts with one video, encoded under it just before; "
                         f"this prompt has {len(grids)} video(s)")
    grid = grids[0]
    frames = hidden_states[grid[:plan.frames].reshape(-1)].reshape(plan.frames, grid.shape[1], -1)
    tokens = earlytom.select_tokens(frames.float(), plan.scores.to(frames.device), plan.groups,
                                    retain_ratio=method.retain_ratio, frames_in=plan.frames_in)
    positions = grid.reshape(-1)[:tokens.shape[0]]
    keep = torch.ones(hidden_states.shape[0], dtype=torch.bool, device=hidden_states.device)
    keep[grid.reshape(-1)] = False
    keep[positions] = True
    rows = hidden_states.clone()
    rows[positions] = tokens.to(rows.dtype)
    return rows, keep
