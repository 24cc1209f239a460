"""HoliTom (Shao et al., NeurIPS 2025), before the LLM: split the video into the windows that free the most static
tokens (dynamic programming), fold each window's static tokens into one per position and cluster those (DPC-KNN),
and keep each frame's most attended other tokens. Pure tensor functions that give the outputs of
github.com/cokeshao/HoliTom (`holitom/llava_arch.py`, D = 0, beta used). Its inner-LLM merge is `inner_merge`.

The official clustering adds 1e-6 uniform noise (global torch RNG) to the densities so that equal densities get an
order; so does `reduce`: seed torch for a reproducible result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framefusion.errors import InputError

LAYOUTS = ("one_token", "grid")
DENSITY_NOISE = 1e-6


def static_windows(similarity: torch.Tensor, tau: float,
                   max_window: int = 1024) -> tuple[list[tuple[int, int]], int]:
    """The split of the video into windows that makes the most tokens removable.

    similarity [T-1, S]: cosine of each token to the same position in the next frame. A position is static in a
    window (s, e) when its similarity stays above tau from frame s to e; folding it into one token removes e - s.
    Returns (windows: inclusive (start, end) frame pairs covering 0..T-1 in order, at most max_window frames each;
    reduced: the tokens the split removes). Of equally good splits, the one with the shorter last window wins.
    """
    if max_window < 1:
        raise InputError("must be at least 1 frame", setting="max_window", value=max_window)
    frames = similarity.shape[0] + 1
    static = similarity > tau
    # still_static[s][j]: positions static from frame s through frame s + j + 1.
    still_static = [torch.cumprod(static[start:start + max_window - 1].int(), dim=0).sum(dim=1).tolist()
                    for start in range(frames - 1)]
    most_removed = [0] * (frames + 1)  # most_removed[i]: best over frames 0..i-1
    window_start = [0] * frames
    for end in range(frames):
        best, best_start = most_removed[end], end
        # Longer windows only replace a shorter one when they remove strictly more (ascending length).
        for start in range(end - 1, max(end - max_window, -1), -1):
            removed = most_removed[start] + still_static[start][end - start - 1] * (end - start)
            if removed > best:
                best, best_start = removed, start
        most_removed[end + 1], window_start[end] = best, best_start
    windows = []
    end = frames - 1
    while end >= 0:
        windows.append((window_start[end], end))
        end = window_start[end] - 1
    return windows[::-1], most_removed[frames]


def most_attended(tokens: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's `count` most attended tokens, in ascending position. tokens [F, n, C], attention [F, n],
    positions [n] (the tokens' positions in the frame). Returns ([F, count, C], positions [F, count])."""
    frames, available, width = tokens.shape
    chosen = torch.zeros(frames, available, dtype=torch.bool, device=tokens.device)
    chosen.scatter_(1, attention.topk(count, dim=1).indices, True)
    return (tokens[chosen].reshape(frames, count, width),
            positions.expand(frames, available)[chosen].reshape(frames, count))


def density_peak_merge(tokens: torch.Tensor, count: int, *, knn: int = 7,
                       beta: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN: `count` density peaks of tokens [N, C], each merged with the tokens nearest to it.

    Density is exp(-mean squared distance to the knn nearest, itself included), distances divided by sqrt(C); a
    peak scores density times the distance to the nearest denser token. Every other token joins its nearest peak
    (the first on ties). Returns (merged [count, C]: beta * peak + (1 - beta) * mean(members), or the peak alone;
    peaks [count]: their indices, ascending).
    """
    points, width = tokens.shape
    batched = tokens.float()[None]
    distance = torch.cdist(batched, batched) / (width ** 0.5)  # [1, N, N]
    nearest = torch.topk(distance, min(knn, count), dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=density.device, dtype=density.dtype) * DENSITY_NOISE
    denser = density[:, None, :] > density[:, :, None]  # [1, i, j]: token j is denser than token i
    # The densest token has no denser one: it takes the largest distance of all.
    farthest = distance.flatten(1).max(dim=-1).values[:, None, None]
    to_denser = torch.where(denser, distance, farthest).min(dim=-1).values
    peaks = (to_denser * density).topk(count, dim=-1).indices[0].sort().values
    is_peak = torch.zeros(points, dtype=torch.bool, device=tokens.device)
    is_peak[peaks] = True
    members = torch.nonzero(~is_peak).squeeze(1)
    cluster = distance[0][members][:, peaks].argmin(dim=-1)  # [N - count]: which peak each member joins
    summed = torch.zeros(count, width, dtype=tokens.dtype, device=tokens.device).index_add_(0, cluster, tokens[members])
    sizes = torch.bincount(cluster, minlength=count).unsqueeze(1)
    merged = beta * tokens[peaks] + (1 - beta) * summed / sizes.clamp(min=1)
    return torch.where(sizes > 0, merged, tokens[peaks]), peaks


def with_row_newlines(tokens: torch.Tensor, positions: torch.Tensor, grid: int,
                      newline: torch.Tensor) -> torch.Tensor:
    """LLaVA-Video's grid layout for one frame's kept tokens: sorted by position, a newline after each row that has
    a token. tokens [n, C], positions [n] (row = position // grid), newline [C]. Returns [n + rows with tokens, C]."""
    positions, order = positions.sort()
    tokens = tokens[order]
    rows = positions // grid
    row_ends = torch.ones_like(rows, dtype=torch.bool)
    row_ends[:-1] = rows[1:] != rows[:-1]
    newlines_before = torch.cumsum(row_ends.long(), dim=0) - row_ends.long()
    token_slots = torch.arange(len(tokens), device=tokens.device) + newlines_before
    laid_out = newline.to(tokens.device, tokens.dtype).expand(len(tokens) + int(row_ends.sum()), -1).clone()
    laid_out[token_slots] = tokens
    return laid_out


def reduce(features: torch.Tensor, attention: torch.Tensor, *, retain_ratio: float, tau: float, layout: str,
           newline: torch.Tensor, max_window: int = 1024, beta: float = 0.6, knn: int = 7) -> torch.Tensor:
    """HoliTom's outer step on one video. features [T, S, C] after the projector and pooling, attention [T, S] the
    vision tower's last-layer attention received (mean over heads and queries, pooled alike), newline [C].

    Per window (`static_windows` on the cosine of consecutive frames): positions static across the window are
    averaged over time and clustered to round(n_static * r) tokens (`density_peak_merge`); each frame keeps its
    ceil(n_dynamic * r) most attended other tokens. r = min(retain_ratio * T*S / (T*S - reduced), 1).
    layout "one_token" (LLaVA-OneVision): per window [clustered static, frame by frame kept dynamic], one newline
    at the very end. layout "grid" (LLaVA-Video): each frame's tokens by position, the static ones in the window's
    first frame, a newline after each row that has a token. Returns [n, C].
    """
    if layout not in LAYOUTS:
        raise InputError(f"must be one of {', '.join(LAYOUTS)}", setting="layout", value=layout)
    frames, per_frame, _ = features.shape
    grid = math.isqrt(per_frame)
    if layout == "grid" and grid * grid != per_frame:
        raise InputError(f"the grid layout needs square frames; a frame has {per_frame} tokens",
                         setting="layout", value=layout)
    pieces = []
    for window in _windows(features, attention, retain_ratio=retain_ratio, tau=tau, max_window=max_window,
                           beta=beta, knn=knn):
        if layout == "one_token":
            pieces += [window.static_tokens, window.kept.flatten(0, 1)]
            continue
        pieces.append(with_row_newlines(torch.cat([window.static_tokens, window.kept[0]]),
                                        torch.cat([window.static_positions, window.kept_positions[0]]), grid, newline))
        pieces += [with_row_newlines(tokens, where, grid, newline)
                   for tokens, where in zip(window.kept[1:], window.kept_positions[1:])]
    if layout == "one_token":
        pieces.append(newline[None].to(features.device, features.dtype))
    return torch.cat(pieces)


def reduce_in_place(features: torch.Tensor, attention: torch.Tensor, *, retain_ratio: float, tau: float,
                    max_window: int = 1024, beta: float = 0.6, knn: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """The outer step of `reduce` with every token at a place in the input instead of the official layout.

    features [T, S, C], attention [T, S]. Returns (tokens [K, C], kept [K]: ascending flat indices t * S + s): a
    dynamic token stays where it was; a static cluster sits at its peak's position in its window's first frame.
    The same tokens as `reduce` without newlines, in input order (for a model that keeps each token's position).
    """
    frames, per_frame, _ = features.shape
    tokens, kept = [], []
    for window in _windows(features, attention, retain_ratio=retain_ratio, tau=tau, max_window=max_window,
                           beta=beta, knn=knn):
        tokens += [window.static_tokens, window.kept.flatten(0, 1)]
        frame_starts = (torch.arange(window.kept.shape[0], device=features.device) + window.start) * per_frame
        kept += [window.static_positions + window.start * per_frame,
                 (window.kept_positions + frame_starts[:, None]).flatten()]
    if not tokens:
        return features.new_zeros(0, features.shape[-1]), torch.zeros(0, dtype=torch.long, device=features.device)
    kept_indices = torch.cat(kept)
    order = torch.argsort(kept_indices)
    return torch.cat(tokens)[order], kept_indices[order]


@dataclass
class _Window:
    start: int
    static_tokens: torch.Tensor  # [n_static, C]: the clustered static tokens
    static_positions: torch.Tensor  # [n_static]: their peaks' positions in the frame
    kept: torch.Tensor  # [frames of the window, n_dynamic, C]: each frame's most attended dynamic tokens
    kept_positions: torch.Tensor  # [frames of the window, n_dynamic]


def _windows(features: torch.Tensor, attention: torch.Tensor, *, retain_ratio: float, tau: float, max_window: int,
             beta: float, knn: int) -> list[_Window]:
    """The outer step window by window (see `reduce`)."""
    frames, per_frame, _ = features.shape
    unit = F.normalize(features, p=2, dim=-1)
    similarity = F.cosine_similarity(unit[:-1], unit[1:], dim=-1)
    windows, reduced = static_windows(similarity, tau, max_window)
    total = frames * per_frame
    # Raise the ratio so that the budget counts the tokens the static folding already removed.
    ratio = min(retain_ratio / ((total - reduced) / total), 1)
    positions = torch.arange(per_frame, device=features.device)
    windows_out = []
    for start, end in windows:
        window = features[start:end + 1]
        if start == end:
            static = torch.zeros(per_frame, dtype=torch.bool, device=features.device)
        else:
            static = (similarity[start:end] > tau).all(dim=0)
        dynamic_count = math.ceil(int((~static).sum()) * ratio)
        kept, kept_positions = most_attended(window[:, ~static], attention[start:end + 1, ~static],
                                             positions[~static], dynamic_count)
        static_tokens, static_positions = window[:, static].mean(dim=0), positions[static]
        cluster_count = round(len(static_positions) * ratio)
        if cluster_count > 0:
            static_tokens, peaks = density_peak_merge(static_tokens, cluster_count, knn=knn, beta=beta)
            static_positions = static_positions[peaks]
        else:
            static_tokens, static_positions = static_tokens[:0], static_positions[:0]
        windows_out.append(_Window(start, static_tokens, static_positions, kept, kept_positions))
    return windows_out
