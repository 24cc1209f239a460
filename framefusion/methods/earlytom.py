"""EarlyTom (CVPR 2026). Stage I, inside the vision encoder after chosen layers: cut the frames into segments where
the similarity to the segment's first frame (an EMA) drops, and drop or pairwise-mix each segment's middle frames,
so that later layers see fewer frames (`merge_frames`). Stage II, after the projector: a segment's two end frames
keep their most attended tokens, its middle frames one most attended token per contiguous run of positions
(`select_tokens`). Pure tensor functions that give the outputs of github.com/viridisGreen/EarlyTom ("mixing" mode,
D = 0, the one-token layout of LLaVA-OneVision). Its inner-LLM merge is `inner_merge`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framefusion.errors import InputError
from framefusion.methods.holitom import most_attended


def segments(unit_frames: torch.Tensor, *, tau: float, max_window: int, ema: float) -> list[tuple[int, int]]:
    """Stage I's temporal segments. unit_frames [T, S, D], T >= 1, each token of unit length. A frame joins the
    segment while s = ema * (mean cosine to the segment's first frame) + (1 - ema) * s (s = 1 at a segment's start)
    stays at least tau and the segment stays under max_window frames. Returns inclusive (start, end) pairs."""
    groups = []
    start, reference, similarity = 0, unit_frames[0], 1.0
    for frame in range(1, len(unit_frames)):
        mean_cosine = F.cosine_similarity(reference, unit_frames[frame], dim=-1).mean()
        similarity = ema * mean_cosine + (1 - ema) * similarity
        if similarity < tau or frame - start + 1 >= max_window:
            groups.append((start, frame - 1))
            start, reference, similarity = frame, unit_frames[frame], 1.0
    groups.append((start, len(unit_frames) - 1))
    return groups


def mix_middle_frames(frames: torch.Tensor, scores: torch.Tensor,
                      threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A segment's middle frames, fewer. frames [L, S, D], scores [L, ...] (mixed alike), threshold: the mean cosine
    of the segment's end frames. Walking pairs (i, i+1): when their mean cosine c_i is above threshold and above
    c_(i+1), they become w*f_i + (1-w)*f_(i+1), w = c_i / (c_i + c_(i+1)); else f_i stays alone. As in the official
    code, the last frame only ever enters a mix with weight 0, so it is lost (when L >= 2)."""
    count = len(frames)
    if count < 2:
        return frames, scores
    unit = F.normalize(frames, dim=-1)
    similarity = F.cosine_similarity(unit[:-1], unit[1:], dim=-1).mean(dim=-1)  # [L-1]
    mixed_frames, mixed_scores = [], []
    index = 0
    while index < count - 1:
        current = similarity[index]
        if index + 1 < count - 1:
            following = similarity[index + 1]
            mix = current > threshold and current > following
        else:
            following = 0.0
            mix = current > threshold
        if mix:
            weight = current / (current + following) if following != 0 else 1.0
            mixed_frames.append(weight * frames[index] + (1 - weight) * frames[index + 1])
            mixed_scores.append(weight * scores[index] + (1 - weight) * scores[index + 1])
            index += 2
        else:
            mixed_frames.append(frames[index])
            mixed_scores.append(scores[index])
            index += 1
    return torch.stack(mixed_frames), torch.stack(mixed_scores)


def merge_frames(hidden: torch.Tensor, scores: torch.Tensor, *, tau: float, max_window: int, ema: float,
                 regroup: bool) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Stage I at one prune layer. hidden [T, S, D] the layer's output, scores [T, S] (or any [T, ...]) its attention
    received, mean over heads and queries. Each segment (`segments`) keeps its first and last frame, its middle
    frames mixed by `mix_middle_frames` (the end frames' mean cosine as threshold). Returns (merged [T', S, D],
    merged scores [T', ...], groups): the segments of the input frames, or, with regroup (the last prune layer),
    the segments of the merged frames, which Stage II uses."""
    if max_window < 1:
        raise InputError("must be at least 1 frame", setting="max_window", value=max_window)
    if len(hidden) <= 1:
        return hidden, scores, [(0, len(hidden) - 1)]
    unit = F.normalize(hidden, p=2, dim=-1)
    groups = segments(unit, tau=tau, max_window=max_window, ema=ema)
    merged, merged_scores = [], []
    for start, end in groups:
        if end - start + 1 <= 2:
            merged.append(hidden[start:end + 1])
            merged_scores.append(scores[start:end + 1])
            continue
        threshold = F.cosine_similarity(unit[start], unit[end], dim=-1).mean(dim=-1)
        middle, middle_scores = mix_middle_frames(hidden[start + 1:end], scores[start + 1:end], threshold)
        merged += [hidden[start:start + 1], middle, hidden[end:end + 1]]
        merged_scores += [scores[start:start + 1], middle_scores, scores[end:end + 1]]
    merged, merged_scores = torch.cat(merged), torch.cat(merged_scores)
    if regroup:
        # After a cut the official code compares with the merged frame unnormalised; cosine ignores the scale.
        groups = segments(F.normalize(merged, p=2, dim=-1), tau=tau, max_window=max_window, ema=ema)
    return merged, merged_scores, groups


def best_per_run(frames: torch.Tensor, scores: torch.Tensor, runs: int) -> torch.Tensor:
    """The most attended token of each of `runs` contiguous runs of positions (raster order, so runs straddle rows;
    the first S mod runs runs are one token longer). frames [F, S, C], scores [F, S]. Returns [F, runs, C]."""
    count, per_frame, width = frames.shape
    short, longer = divmod(per_frame, runs)
    picks = []
    # Runs of one length are scored as one [F, runs, length] block.
    for first, run_count, length in ((0, longer, short + 1), (longer * (short + 1), runs - longer, short)):
        if run_count == 0:
            continue
        block = scores[:, first:first + run_count * length].reshape(count, run_count, length)
        run_starts = first + length * torch.arange(run_count, device=frames.device)
        picks.append(block.topk(1, dim=-1).indices.squeeze(-1) + run_starts)
    picked = torch.cat(picks, dim=1)  # [F, runs]
    return torch.gather(frames, 1, picked.unsqueeze(-1).expand(-1, -1, width))


def select_tokens(features: torch.Tensor, scores: torch.Tensor, groups: list[tuple[int, int]], *,
                  retain_ratio: float, frames_in: int) -> torch.Tensor:
    """Stage II. features [T', S, C] after the projector and pooling, scores [T', S] the last prune layer's attention
    received (mixed with the frames, pooled alike), groups Stage I's segments of the T' frames, frames_in T before
    Stage I. r = min(retain_ratio * T / T', 1). A segment of 1 or 2 frames: each frame's ceil(S*r) most attended
    tokens. Longer: [first frame's ceil(S*r) most attended, each middle frame's best of max(1, round(S*r)) runs,
    last frame's ceil(S*r) most attended]. Segments in order. Returns [n, C], without newline."""
    frames, per_frame, _ = features.shape
    if frames_in < frames:
        raise InputError(f"cannot be fewer than the {frames} frames left after Stage I",
                         setting="frames_in", value=frames_in)
    total = frames_in * per_frame
    removed = (frames_in - frames) * per_frame
    ratio = min(retain_ratio / ((total - removed) / total), 1)
    end_frame_count = math.ceil(per_frame * ratio)
    runs = max(1, round(per_frame * ratio))
    positions = torch.arange(per_frame, device=features.device)
    pieces = []
    for start, end in groups:
        if end - start + 1 <= 2:
            kept, _ = most_attended(features[start:end + 1], scores[start:end + 1], positions, end_frame_count)
            pieces.append(kept.flatten(0, 1))
            continue
        ends = torch.tensor([start, end], device=features.device)
        kept, _ = most_attended(features[ends], scores[ends], positions, end_frame_count)
        middle = best_per_run(features[start + 1:end], scores[start + 1:end], runs)
        pieces += [kept[0], middle.flatten(0, 1), kept[1]]
    return torch.cat(pieces)
