"""The FrameFusion algorithm as pure tensor functions: no model, no transformers.

Vocabulary used throughout:
- `patch_types`: (L,) long. -1 for every token that is not a video token (text, special, image, newline tokens),
  else the index of the token's spatial position within its frame (0 ... P-1). Frames follow each other, so a video
  span reads 0, 1, ..., P-1, 0, 1, ..., P-1, ... Several videos use disjoint ranges of types.
- "by-patch order": the video tokens sorted by patch type, then by position. In that order the token before each
  token is the same spatial position in the previous surviving frame (when their types match).
- sparsity of a step: the fraction of the current video tokens that the step removed.

See docs/algorithm.md for the behaviour these functions reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

NOT_VIDEO = -1
# Similarity given to a token that has no predecessor of its type: below any valid threshold (cosines lie in [-1, 1]).
NO_PREDECESSOR = -2.0


def required_sparsity(sparsities: Sequence[float], num_layers: int, cost: float) -> float:
    """The sparsity the next step must reach so that the whole prefill stays within `cost`.

    `sparsities` are the steps taken so far; the budget is counted in "all video tokens through one layer" units
    over `num_layers` layers. Returns a value in [0, 1]; 1 means the budget is already spent (callers keep at least
    one video token rather than fail in the middle of a forward).
    """
    steps_taken = len(sparsities)
    kept_fraction = 1.0
    spent = 0.0
    for sparsity in sparsities:
        kept_fraction *= 1.0 - sparsity
        spent += kept_fraction
    left = num_layers * cost - spent
    layers_left = num_layers - steps_taken
    if left < 0 or layers_left <= 0 or kept_fraction <= 0:
        return 1.0
    affordable = left / (layers_left * kept_fraction)
    if affordable > 1:
        return 0.0
    return 1.0 - affordable


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of a, b: [n, d] -> [n].

    Written as dot / (|a| |b|) with no epsilon, the same arithmetic as the reference implementation, so that tokens
    sitting exactly at the threshold are classified the same way.
    """
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def order_by_patch(patch_types: torch.Tensor) -> torch.Tensor:
    """Positions of the video tokens in by-patch order: patch_types [L] -> [V] (long)."""
    video_positions = torch.nonzero(patch_types >= 0).squeeze(-1)
    # A stable sort keeps frame order within each patch type.
    order = torch.sort(patch_types[video_positions], stable=True).indices
    return video_positions[order]


def similarity_to_previous_frame(
    hidden_states: torch.Tensor, patch_types: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each video token with the same spatial position in the previous surviving frame.

    hidden_states: [L, d] (the raw residual stream); patch_types: [L].
    Returns (positions_by_patch [V], similarity [V]), both in by-patch order. A token with no earlier token of its
    type gets NO_PREDECESSOR and can never be merged.
    """
    positions_by_patch = order_by_patch(patch_types)
    types_by_patch = patch_types[positions_by_patch]
    similarity = torch.full(
        (positions_by_patch.numel(),), NO_PREDECESSOR, dtype=hidden_states.dtype, device=hidden_states.device
    )
    if positions_by_patch.numel() > 1:
        tokens = hidden_states[positions_by_patch]
        consecutive = cosine_similarity(tokens[:-1], tokens[1:])
        same_type = types_by_patch[1:] == types_by_patch[:-1]
        similarity[1:] = torch.where(same_type, consecutive, similarity[1:])
    return positions_by_patch, similarity


@dataclass(frozen=True)
class MergePlan:
    """What one merge step decided.

    merge_by_patch: [V] bool in by-patch order, True for tokens folded into their anchor.
    ratio: fraction of the video tokens merged (the step's sparsity).
    merging_finished / pruning_finished: whether later steps still run.
    """

    merge_by_patch: torch.Tensor
    ratio: float
    merging_finished: bool
    pruning_finished: bool


def plan_merge(
    similarity: torch.Tensor,
    similarity_lower_bound: float,
    ratio_lower_bound: float,
    sparsity_upper_bound: float,
) -> MergePlan:
    """Choose the tokens to merge from their similarity to the previous frame ([V], by-patch order).

    If the tokens above the threshold are fewer than the budget asks for, all of them merge and merging goes on
    while it removes at least `ratio_lower_bound` of the tokens. Otherwise only the most similar
    int(upper * V) merge and the budget is met by merging alone: merging and pruning both finish.
    """
    num_video = similarity.numel()
    candidates = similarity >= similarity_lower_bound
    num_candidates = int(candidates.sum())
    ratio = num_candidates / num_video if num_video else 0.0
    if ratio < sparsity_upper_bound:
        return MergePlan(candidates, ratio, ratio < ratio_lower_bound, False)
    # Keep at least one video token even when the budget is exhausted.
    num_to_merge = min(int(sparsity_upper_bound * num_video), num_video - 1)
    merge = torch.zeros_like(candidates)
    if num_to_merge > 0:
        merge[torch.topk(similarity, num_to_merge).indices] = True
    return MergePlan(merge, num_to_merge / num_video, True, True)


def merge_anchors(merge_by_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token of a merge step ends up. merge_by_patch: [V] bool in by-patch order.

    Returns (anchor_index [V]: the by-patch index of the token each token folds into, itself when it is kept;
    run_lengths [V]: how many merged tokens fold into each token).
    """
    order = torch.arange(merge_by_patch.numel(), device=merge_by_patch.device)
    # The anchor of a token is the last unmerged token at or before it in by-patch order; the first token of every
    # patch type is never merged, so anchors never cross a patch-type boundary.
    anchor_index = torch.cummax(torch.where(merge_by_patch, -1, order), dim=0).values
    run_lengths = torch.bincount(anchor_index[merge_by_patch], minlength=merge_by_patch.numel())
    return anchor_index, run_lengths


def merge_tokens(
    hidden_states: torch.Tensor, positions_by_patch: torch.Tensor, merge_by_patch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold each merged token into its anchor: the nearest earlier surviving token of the same patch type.

    A maximal run of n merged tokens after an anchor gives the anchor (anchor + sum(run)) / (n + 1), a plain mean
    (the reference behaviour, even when the anchor already stands for earlier tokens).
    hidden_states: [L, d]; positions_by_patch, merge_by_patch: [V].
    Returns (new hidden states [L, d] with merged rows still present, keep [L] bool).
    """
    keep = torch.ones(hidden_states.shape[0], dtype=torch.bool, device=hidden_states.device)
    if not bool(merge_by_patch.any()):
        return hidden_states, keep
    anchor_index, run_lengths = merge_anchors(merge_by_patch)
    member_positions = positions_by_patch[merge_by_patch]
    member_anchor_positions = positions_by_patch[anchor_index[merge_by_patch]]
    anchors_with_members = run_lengths > 0

    merged = hidden_states.clone()
    merged.index_add_(0, member_anchor_positions, hidden_states[member_positions])
    anchor_positions = positions_by_patch[anchors_with_members]
    divisor = (run_lengths[anchors_with_members] + 1).to(merged.dtype).unsqueeze(-1)
    merged[anchor_positions] = merged[anchor_positions] / divisor
    keep[member_positions] = False
    return merged, keep


def last_query_importance(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention each token receives from the last q queries, averaged over heads and those queries.

    queries: [H, q, hd] rotated queries of the last q positions; keys: [H, L, hd] rotated keys (already repeated to
    H heads). The last queries attend causally among themselves. key_padding_mask: [L] bool, False for padding.
    Returns [L] in float32. Only q rows are formed, never the L x L matrix.
    """
    num_queries, length = queries.shape[-2], keys.shape[-2]
    scores = (queries @ keys.transpose(-2, -1)) * scaling
    query_positions = torch.arange(length - num_queries, length, device=queries.device)
    future = torch.arange(length, device=queries.device)[None, :] > query_positions[:, None]
    blocked = future if key_padding_mask is None else future | ~key_padding_mask[None, :]
    scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1)
    return weights.mean(dim=(0, 1))


def prune_keep_mask(importance: torch.Tensor, patch_types: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the round(V * (1 - sparsity)) most important video tokens (at least one) and every other token.

    importance, patch_types: [L]. Returns keep [L] bool. Python's round (half to even), as the reference: truncating
    would keep one token too few.
    """
    is_video = patch_types >= 0
    video_positions = torch.nonzero(is_video).squeeze(-1)
    num_video = video_positions.numel()
    keep = ~is_video
    if num_video == 0:
        return keep
    num_keep = min(max(round(num_video * (1.0 - sparsity)), 1), num_video)
    top = torch.topk(importance[video_positions], num_keep).indices
    keep[video_positions[top]] = True
    return keep
