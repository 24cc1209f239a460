"""FastVID (Shen et al., NeurIPS 2025), before the LLM: split the video where consecutive frames stop looking alike
(DySeg), keep each frame's most attended tokens, and fold the rest of each segment into a few density-peak anchor
tokens (STPrune). Pure tensor functions that give the outputs of github.com/LunarShen/FastVID:
`reduce` is its parallel LLaVA-OneVision version (the paper's numbers), `reduce_segmentwise` its Qwen2.5-VL version,
which also drops near-duplicate frames.

Where the official code crashes, these functions do not: fewer frames than `c` cuts every transition (the official
result at c = T), no cut gives one segment, a budget without anchor (or salient) tokens keeps what it has, and
anchor budgets larger than what a frame has left (or a density k above its token count) are capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

from framefusion.errors import InputError

# Tie noise the official density adds (torch.rand times this), so that equal densities get an order.
DENSITY_NOISE = 1e-6


def segment(global_features: torch.Tensor, *, c: int = 8, tau: float = 0.9) -> list[int]:
    """DySeg, the temporal segments. global_features [T, G]: one vector per frame (cosine is taken, scale is
    irrelevant). Returns the segment lengths in temporal order, sum T. Cuts: the min(c-1, T-1) least similar
    transitions plus every transition with cos < tau. T == 1 -> [1]."""
    if c < 1:
        raise InputError("must be at least 1: the fewest segments a video is cut into", setting="c", value=c)
    frames = global_features.shape[0]
    if frames == 0:
        return []
    similarity = _neighbour_similarity(global_features)
    least_similar = torch.topk(similarity, k=min(c - 1, frames - 1), largest=False).indices
    below_tau = torch.nonzero(similarity < tau).squeeze(1)
    cuts = sorted(set(least_similar.tolist()) | set(below_tau.tolist()))
    # Transition j lies between frames j and j + 1: a segment ends at each cut and at the last frame.
    ends = [-1, *cuts, frames - 1]
    return [end - start for start, end in pairwise(ends)]


def allocate(segment_sizes: Sequence[int], frame_tokens: int, *, retain_ratio: float = 0.10, d: float = 0.4,
             p: int = 4) -> tuple[list[int], list[int]]:
    """Budget of the parallel (LLaVA-OneVision) STPrune. frame_tokens = S, r = int(S * retain_ratio), X = int(r * d).
    Returns (salient tokens per frame [T], all equal to r - int(r*d); anchor tokens per frame [T]: (X*L)//ceil(L/p)
    on the last frame of each segment and every p-th frame before it, 0 elsewhere)."""
    _check_settings(p)
    salient, anchor_share = _parallel_frame_budget(frame_tokens, retain_ratio, d)
    anchors = []
    for length in segment_sizes:
        anchor_frames = -(-length // p)
        # The segment's anchor budget is shared by its anchor frames; the division's remainder is lost, as there.
        per_anchor_frame = anchor_share * length // anchor_frames
        anchors += [per_anchor_frame if (length - 1 - frame) % p == 0 else 0 for frame in range(length)]
    return [salient] * sum(segment_sizes), anchors


def density_score(tokens: torch.Tensor, *, k: int = 4) -> torch.Tensor:
    """DPC-kNN score: local density times the distance to the nearest denser token. tokens [B, N, C] -> [B, N]
    float32; each row b is independent. The k nearest include the token itself; distances are divided by sqrt(C);
    1e-6 uniform tie noise is added to the density."""
    batch, count, width = tokens.shape
    if count == 0:
        return torch.zeros(batch, 0, device=tokens.device)
    distance = torch.cdist(tokens.float(), tokens.float()) / (width ** 0.5)
    # The official k is fixed at 4 and crashes on a frame with fewer tokens; here such a frame uses all it has.
    nearest = torch.topk(distance, k=min(k, count), dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=tokens.device, dtype=density.dtype) * DENSITY_NOISE
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: token j is denser than token i
    # The densest token has no denser one: it takes the largest distance of its whole frame, not of its row.
    farthest = distance.flatten(1).max(dim=-1).values[:, None, None]
    to_denser = torch.where(denser, distance, farthest).min(dim=-1).values
    return to_denser * density


def merge(targets: torch.Tensor, pool: torch.Tensor, *, beta: float = 0.6) -> torch.Tensor:
    """DTM, pool tokens folded into their most similar anchor. targets [B, K, C] (anchor tokens), pool [B, M, C]
    (tokens to fold in; it may contain the targets themselves, as LLaVA-OneVision's does) -> [B, K, C]:
    w*y + (1-w)*mean(assigned pool tokens), w = max(1/(n+1), beta), n = pool tokens whose most cosine-similar target
    is y (the first such target on ties)."""
    if targets.shape[1] == 0:
        return targets.clone()
    unit_targets = targets / targets.norm(dim=-1, keepdim=True)
    unit_pool = pool / pool.norm(dim=-1, keepdim=True)
    nearest_target = torch.bmm(unit_pool, unit_targets.transpose(1, 2)).argmax(dim=2)  # [B, M], first on ties
    assignment = torch.zeros(*pool.shape[:2], targets.shape[1], dtype=targets.dtype, device=targets.device)
    assignment.scatter_(2, nearest_target.unsqueeze(-1), 1)
    assigned = assignment.sum(dim=1).unsqueeze(-1)  # [B, K, 1]
    own_weight = (1 / (assigned + 1)).clamp(min=beta)
    mean_assigned = torch.bmm(assignment.transpose(1, 2), pool) / assigned.clamp(min=1)
    return own_weight * targets + (1 - own_weight) * mean_assigned


def reduce(features: torch.Tensor, attention: torch.Tensor, global_features: torch.Tensor, *,
           retain_ratio: float = 0.10, c: int = 8, tau: float = 0.9, d: float = 0.4, p: int = 4,
           beta: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """FastVID as run on LLaVA-OneVision (the parallel implementation: DySeg, then every frame at once).
    features [T, S, C] video tokens (frame-major, row-major; no newline), attention [T, S] per-token [CLS]-like score,
    global_features [T, G]. Returns (tokens [K, C], kept [K] int64): ascending flat indices t*S + s of the kept tokens;
    tokens[i] is the (possibly merged) token at kept[i]. The adapter maps kept to sequence positions."""
    _check_settings(p, retain_ratio)
    frames, per_frame, width = features.shape
    sizes = segment(global_features, c=c, tau=tau)
    salient_counts, anchor_counts = allocate(sizes, per_frame, retain_ratio=retain_ratio, d=d, p=p)
    salient = salient_counts[0] if frames else 0
    anchor_share = _parallel_frame_budget(per_frame, retain_ratio, d)[1]

    salient_positions = torch.topk(attention.reshape(frames, per_frame), k=salient, dim=1).indices  # [T, s]
    is_salient = torch.zeros(frames, per_frame, dtype=torch.bool, device=features.device)
    is_salient.scatter_(1, salient_positions, True)
    positions = torch.arange(per_frame, device=features.device).expand(frames, per_frame)
    rest_positions = positions[~is_salient].reshape(frames, per_frame - salient)  # ascending in each frame
    rest = torch.gather(features, 1, rest_positions.unsqueeze(-1).expand(-1, -1, width))  # [T, N, C]
    scores = density_score(rest)
    frame_starts = torch.arange(frames, device=features.device).unsqueeze(1) * per_frame

    kept = [(salient_positions + frame_starts).reshape(-1)]
    tokens = [torch.gather(features, 1, salient_positions.unsqueeze(-1).expand(-1, -1, width)).reshape(-1, width)]

    def keep_anchors(anchor_frames: list[int], count: int, pool: torch.Tensor) -> None:
        """The top-`count` density peaks of each anchor frame's rest, merged with `pool` [len(anchor_frames), M, C]."""
        chosen = torch.topk(scores[anchor_frames], k=min(count, rest.shape[1]), dim=-1).indices
        targets = torch.gather(rest[anchor_frames], 1, chosen.unsqueeze(-1).expand(-1, -1, width))
        kept.append((torch.gather(rest_positions[anchor_frames], 1, chosen) + frame_starts[anchor_frames]).reshape(-1))
        tokens.append(merge(targets, pool, beta=beta).reshape(-1, width))

    # A frame whose anchor count equals the per-frame share X merges its own rest only: every one-frame segment, and
    # the anchor frames of a segment whose division gives exactly X (p = 1, or p = 2 with X = 1 and an odd length).
    # Frames above X merge the rest of their whole segment. Other frames keep only their salient tokens.
    own_frame = [frame for frame, count in enumerate(anchor_counts) if count == anchor_share]
    if own_frame and anchor_share > 0:
        keep_anchors(own_frame, anchor_share, rest[own_frame])
    start = 0
    for length in sizes:
        segment_frames = range(start, start + length)
        whole_segment = [frame for frame in segment_frames if anchor_counts[frame] > anchor_share]
        if length > 1 and whole_segment:
            pool = rest[start:start + length].reshape(1, -1, width).expand(len(whole_segment), -1, -1)
            keep_anchors(whole_segment, anchor_counts[start + length - 1], pool)
        start += length
    return _in_index_order(torch.cat(tokens), torch.cat(kept))


def reduce_segmentwise(features: torch.Tensor, attention: torch.Tensor, global_features: torch.Tensor, *,
                       retain_ratio: float = 0.27, c: int = 8, tau: float = 0.84, ignore: float = 0.95,
                       d: float = 0.4, p: int = 4, beta: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """FastVID as run on Qwen2.5-VL (the straightforward implementation, segment by segment, which also drops
    near-duplicate frames: runs of neighbours at cos >= ignore collapse onto their last frame).
    Same shapes and return as reduce; S = merged tokens per temporal patch. ignore > 1 disables the skipping."""
    _check_settings(p, retain_ratio)
    frames, per_frame, width = features.shape
    attention = attention.reshape(frames, per_frame)
    similarity = _neighbour_similarity(global_features)
    per_frame_budget = int(per_frame * retain_ratio)
    tokens, kept = [], []
    start = 0
    for length in segment(global_features, c=c, tau=tau):
        budgets = _segment_budget(length, per_frame_budget, per_frame, similarity[start:start + length - 1],
                                  ignore=ignore, d=d, p=p)
        segment_tokens, segment_kept = _reduce_one_segment(features[start:start + length],
                                                           attention[start:start + length], budgets, beta=beta)
        tokens.append(segment_tokens)
        kept.append(segment_kept + start * per_frame)
        start += length
    if not tokens:
        return features.new_zeros(0, width), torch.zeros(0, dtype=torch.long, device=features.device)
    return torch.cat(tokens), torch.cat(kept)


def _segment_budget(length: int, per_frame_budget: int, per_frame: int, similarity: torch.Tensor, *, ignore: float,
                    d: float, p: int) -> list[tuple[int, int]]:
    """(salient, anchor) tokens of each frame of one segment in the segment-wise STPrune.
    similarity [length - 1]: cosine of each frame's global vector with the next one's."""
    budget = per_frame_budget * length
    anchor_budget = max(int(budget * d), 1)
    salient_budget = budget - anchor_budget
    if length == 1:
        return [(salient_budget, anchor_budget)]
    # Runs of near duplicates (neighbours at cos >= ignore) collapse onto their last frame.
    run_ends = [*torch.nonzero(similarity < ignore).squeeze(1).tolist(), length - 1]
    run_lengths = [end - previous for previous, end in pairwise([-1, *run_ends])]
    runs = len(run_lengths)
    # Salient remainder to the earliest runs; anchor remainder to the latest anchor run (chunk 0).
    salient_per_run = [salient_budget // runs + (1 if run < salient_budget % runs else 0) for run in range(runs)]
    anchor_runs = -(-runs // p)
    chunks = [anchor_budget // anchor_runs + (1 if chunk < anchor_budget % anchor_runs else 0)
              for chunk in range(anchor_runs)]
    budgets = []
    for run, run_length in enumerate(run_lengths):
        from_last = runs - 1 - run
        anchors = min(chunks[from_last // p], per_frame // 2) if from_last % p == 0 else 0
        salient = min(salient_per_run[run], per_frame - anchors)
        budgets += [(0, 0)] * (run_length - 1) + [(salient, anchors)]
    return budgets


def _reduce_one_segment(features: torch.Tensor, attention: torch.Tensor, budgets: list[tuple[int, int]], *,
                        beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment-wise STPrune of one segment. features [L, S, C], attention [L, S], budgets per frame.
    Returns (tokens [K, C], kept [K]): ascending flat indices into the segment's L * S tokens."""
    length, per_frame, width = features.shape
    flat = features.reshape(length * per_frame, width)
    salient, anchors = [], []
    for frame, (salient_count, anchor_count) in enumerate(budgets):
        is_salient = torch.zeros(per_frame, dtype=torch.bool, device=features.device)
        if salient_count > 0:
            top = torch.topk(attention[frame], k=salient_count).indices
            is_salient[top] = True
            salient.append(top + frame * per_frame)
        if anchor_count > 0:
            rest = torch.nonzero(~is_salient).squeeze(1)
            scores = density_score(features[frame, rest].unsqueeze(0))[0]
            peaks = torch.topk(scores, k=anchor_count).indices.sort().values
            anchors.append(rest[peaks] + frame * per_frame)
    everything = torch.arange(length * per_frame, device=features.device)
    salient = torch.cat(salient) if salient else everything[:0]
    tokens, kept = [flat[salient]], [salient]
    for targets in anchors:
        # Each anchor frame folds in every token of the segment that is kept neither as salient nor as its own
        # target: dropped near duplicates, every frame's non-salient rest, other anchor frames' targets.
        pool = everything[~torch.isin(everything, torch.cat([salient, targets]))]
        tokens.append(merge(flat[targets].unsqueeze(0), flat[pool].unsqueeze(0), beta=beta)[0])
        kept.append(targets)
    return _in_index_order(torch.cat(tokens), torch.cat(kept))


def _neighbour_similarity(global_features: torch.Tensor) -> torch.Tensor:
    """[T - 1]: cosine of each frame's global vector with the next frame's."""
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    return (unit[:-1] * unit[1:]).sum(dim=1)


def _parallel_frame_budget(frame_tokens: int, retain_ratio: float, d: float) -> tuple[int, int]:
    """(salient, anchor share) of each frame in the parallel STPrune: r = int(S * ratio) split as
    (r - int(r * d), int(r * d))."""
    per_frame = int(frame_tokens * retain_ratio)
    anchor_share = int(per_frame * d)
    return per_frame - anchor_share, anchor_share


def _check_settings(p: int, retain_ratio: float = 0.0) -> None:
    if not 0.0 <= retain_ratio <= 1.0:
        raise InputError("must lie in [0, 1]: the share of each frame's tokens kept", setting="retain_ratio",
                         value=retain_ratio)
    if p < 1:
        raise InputError("must be at least 1: anchors sit on a segment's last frame and every p-th before it",
                         setting="p", value=p)


def _in_index_order(tokens: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(kept)
    return tokens[order], kept[order]
