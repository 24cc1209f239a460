"""Efficient Video Sampling (EVS), before the LLM: keep the video tokens least similar to the same position in the
previous frame, the first frame always, at a given pruning rate. Pure tensor functions, as vLLM's
`video_prune/evs.py` computes them (the same masks).
"""

from __future__ import annotations

import torch

from framefusion.methods.framefusion import NO_PREDECESSOR, similarity_to_previous_frame


def kept_count(frames: int, per_frame: int, pruning_rate: float) -> int:
    """Tokens EVS keeps of a video of `frames` frames of `per_frame` tokens: the first frame at least."""
    return max(per_frame, int(frames * per_frame * (1 - pruning_rate)))


def keep_mask(embeddings: torch.Tensor, per_frame: int, pruning_rate: float) -> torch.Tensor:
    """Which video tokens EVS keeps. embeddings: [T * P, d], frame after frame (P = per_frame). Returns [T * P] bool.

    A token's score is its dissimilarity (1 - cosine) to the same position in the previous frame; the first frame
    scores above any dissimilarity (always kept). The highest scores are kept, ties in frame-major order (stable sort).
    """
    frames = embeddings.shape[0] // per_frame
    grid = embeddings.reshape(frames, per_frame, -1).float()
    dissimilarity = 1 - torch.nn.functional.cosine_similarity(grid[1:], grid[:-1], dim=-1)
    first_frame = torch.full((1, per_frame), float("inf"), device=grid.device)
    scores = torch.cat([first_frame, dissimilarity], dim=0).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[: kept_count(frames, per_frame, pruning_rate)]] = True
    return keep


def keep_by_patch(hidden_states: torch.Tensor, patch_types: torch.Tensor, pruning_rate: float) -> torch.Tensor:
    """EVS on a whole prompt: which tokens to keep. hidden_states [L, d] (the embeddings entering the LLM),
    patch_types [L]. Returns [L] bool; tokens that are not video are always kept.

    The same rule as `keep_mask`, with frames read from the patch types (the same spatial position in the
    previous frame is the previous token of the same type), so it works on any family's layout, newline tokens and
    several videos included (the budget then counts all the prompt's video tokens together).
    """
    is_video = patch_types >= 0
    positions_by_patch, similarity = similarity_to_previous_frame(hidden_states, patch_types)
    scores = torch.full(patch_types.shape, float("-inf"), device=hidden_states.device)
    # A first frame's token has no predecessor (similarity NO_PREDECESSOR): it scores above any dissimilarity.
    dissimilarity = torch.where(similarity <= NO_PREDECESSOR, torch.full_like(similarity, float("inf")),
                                1 - similarity.float())
    scores[positions_by_patch] = dissimilarity
    video_positions = torch.nonzero(is_video).squeeze(-1)
    per_frame = int(torch.unique(patch_types[is_video]).numel())
    kept = max(per_frame, int(video_positions.numel() * (1 - pruning_rate)))
    order = torch.argsort(scores[video_positions], descending=True, stable=True)
    keep = ~is_video
    keep[video_positions[order[:kept]]] = True
    return keep
