"""VidCom2 (Liu et al., EMNLP 2025), before the LLM: keep the video tokens least like the video's and their frame's
average token, with a larger share for the most distinctive frame. Pure tensor functions that give vLLM's
`video_prune/vidcom2.py` masks (the same interface as `framefusion.methods.evs`).

Scoring follows vLLM's order of operations (channel pick, normalise, centres, Gaussians in ascending bandwidth) and
stays in the input dtype, because float rounding decides near ties and the masks must be equal, not only close.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from framefusion.errors import InputError

# Bandwidths of the summed Gaussian kernels, in the order they are added (2^-3 .. 2^1).
GAUSSIAN_BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)
# Share of channels scored: those with the lowest variance over the video.
LOW_VARIANCE_SHARE = 0.5
# Temperature of the softmax that hands the extra budget to the most distinctive frame.
FRAME_SOFTMAX_TEMPERATURE = 0.01


def kept_count(frames: int, per_frame: int, pruning_rate: float) -> int:
    """Tokens VidCom2 keeps of `frames` frames of `per_frame` tokens: at least one a frame on average, at most all."""
    total = frames * per_frame
    return max(frames, min(int(total * (1.0 - pruning_rate)), total))


def keep_mask(embeddings: torch.Tensor, per_frame: int, pruning_rate: float) -> torch.Tensor:
    """VidCom2's kept video tokens. embeddings: [T * P, C], frame after frame, row-major in a frame
    (P = per_frame, T = embeddings.shape[0] // P); pruning_rate: q in [0, 1).
    Returns a bool mask [T * P] with exactly kept_count(T, P, pruning_rate) True values.
    The input is left unchanged."""
    if not 0.0 <= pruning_rate < 1.0:
        raise InputError("must lie in [0, 1): the share of each video's tokens to drop",
                         setting="pruning_rate", value=pruning_rate)
    total = embeddings.shape[0]
    if per_frame <= 0 or total == 0:
        return torch.zeros(0, dtype=torch.bool, device=embeddings.device)
    if total % per_frame:
        raise InputError(f"must divide the number of video tokens ({total})", setting="per_frame", value=per_frame)
    frames = total // per_frame

    redundancy, to_video_centre = _redundancy(embeddings, frames, per_frame)
    keep = _keep_per_frame(redundancy, _frame_budgets(to_video_centre, per_frame, pruning_rate)).reshape(-1)
    return _reconcile(keep, redundancy.reshape(-1), min(kept_count(frames, per_frame, pruning_rate), total))


def _redundancy(embeddings: torch.Tensor, frames: int, per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([T, P] similarity to the video centre plus to the frame centre, [T, P] similarity to the video centre)."""
    variance = embeddings.var(dim=0, unbiased=False)
    scored_channels = max(1, int(embeddings.shape[-1] * LOW_VARIANCE_SHARE))
    # topk's order (ascending variance) is kept: it fixes the order of the channel sums, hence their rounding.
    quiet = torch.topk(variance, k=scored_channels, largest=False).indices
    tokens = F.normalize(embeddings.index_select(-1, quiet).reshape(frames, per_frame, scored_channels), dim=-1)
    to_video_centre = _gaussian_similarity(tokens, tokens.mean(dim=(0, 1), keepdim=True))
    to_frame_centre = _gaussian_similarity(tokens, tokens.mean(dim=1, keepdim=True))
    return to_video_centre + to_frame_centre, to_video_centre


def _gaussian_similarity(tokens: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Sum over GAUSSIAN_BANDWIDTHS a of exp(-|x - centre|^2 / 2a). tokens [T, P, k], centre broadcastable -> [T, P]."""
    squared_distance = (tokens - centre).pow(2).sum(dim=-1)
    total = torch.exp(-squared_distance / (2.0 * GAUSSIAN_BANDWIDTHS[0]))
    for bandwidth in GAUSSIAN_BANDWIDTHS[1:]:
        total = total + torch.exp(-squared_distance / (2.0 * bandwidth))
    return total


def _frame_budgets(to_video_centre: torch.Tensor, per_frame: int, pruning_rate: float) -> torch.Tensor:
    """[T] tokens each frame keeps before the reconciliation: 1 .. P, most for the frame least like the video."""
    distinctiveness = -to_video_centre.mean(dim=-1)
    weights = F.softmax((distinctiveness - distinctiveness.max()) / FRAME_SOFTMAX_TEMPERATURE, dim=0)
    scale = ((1.0 - pruning_rate) * (1.0 + weights - weights.mean())).clamp(max=1.0)
    return (scale * per_frame).round().long().clamp(min=1, max=per_frame)


def _keep_per_frame(redundancy: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """[T, P] bool: in each frame, its budget of least redundant tokens."""
    # One topk a frame, as vLLM calls it: exact ties (frequent in bf16) then fall the same way.
    keep = torch.zeros(redundancy.shape, dtype=torch.bool, device=redundancy.device)
    for frame, budget in enumerate(budgets.tolist()):
        keep[frame, torch.topk(redundancy[frame], k=budget, largest=False, sorted=False).indices] = True
    return keep


def _reconcile(keep: torch.Tensor, redundancy: torch.Tensor, target: int) -> torch.Tensor:
    """keep [N] brought to exactly `target` kept tokens: drop the most redundant kept ones, or add the least
    redundant dropped ones, chosen over the whole video."""
    keep = keep.clone()
    kept = int(keep.sum())
    if kept != target:
        dropping = kept > target
        candidates = torch.nonzero(keep if dropping else ~keep).squeeze(-1)
        chosen = torch.topk(redundancy[candidates], k=abs(kept - target), largest=dropping, sorted=False).indices
        keep[candidates[chosen]] = not dropping
    return keep
