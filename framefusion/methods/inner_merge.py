"""The inner-LLM step of HoliTom and EarlyTom (the same code in both): before decoder layer k, keep the video tokens the
last prompt token attends to most and fold each other video token into its most cosine-similar kept one. Pure tensor
functions that give the outputs of github.com/cokeshao/HoliTom (`holitom/modeling_qwen2.py`) and
github.com/viridisGreen/EarlyTom (`earlytom/modeling_qwen2.py`).
"""

from __future__ import annotations

import torch

from framefusion.errors import InputError


def merge(hidden: torch.Tensor, attention: torch.Tensor, *, start: int, length: int,
          ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, N, C] (the reference runs B = 1) the input of layer k, attention [N] the last token's attention at
    layer k-1, mean over heads; the video span is start..start+length-1 (newlines included).

    Keeps round(length * (1 - ratio)) span tokens, the most attended. Each other span token u, in ascending u, is
    folded into its most similar kept token t (cosine on the unmodified states): h_t <- (h_t + h_u) / 2, so later
    members weigh more than earlier ones, as in the reference (not a mean). With no token kept, the span is dropped.
    hidden is not changed. Returns (merged [B, N', C], keep [N']: the kept original positions, ascending).
    """
    tokens = hidden.shape[1]
    if not 0 <= start <= start + length <= tokens:
        raise InputError(f"the video span {start}..{start + length - 1} must lie within the {tokens} tokens",
                         setting="length", value=length)
    if not 0 <= ratio <= 1:
        raise InputError("must be between 0 and 1: the share of video tokens folded away", setting="ratio",
                         value=ratio)
    kept_count = round(length * (1 - ratio))
    top = attention[start:start + length].topk(kept_count).indices + start  # most attended first
    is_top = torch.zeros(length, dtype=torch.bool, device=hidden.device)
    is_top[top - start] = True
    rest = torch.nonzero(~is_top).squeeze(1) + start  # ascending
    merged = hidden.clone()
    if kept_count > 0 and len(rest) > 0:
        for row in range(hidden.shape[0]):
            _fold_in_order(merged[row], hidden[row], top, rest)
    device = hidden.device
    keep = torch.cat([torch.arange(start, device=device), top,
                      torch.arange(start + length, tokens, device=device)]).sort().values
    return merged[:, keep], keep


def _fold_in_order(merged: torch.Tensor, states: torch.Tensor, top: torch.Tensor, rest: torch.Tensor) -> None:
    """merged[t] <- (merged[t] + states[u]) / 2 for each u in rest (ascending), t the kept token of `top` most
    cosine-similar to states[u]. merged, states [N, C]. Updates merged in place."""
    rest_states, top_states = states[rest][None], states[top][None]
    similarity = torch.bmm(rest_states, top_states.transpose(1, 2)) / (
        torch.norm(rest_states, dim=-1, keepdim=True) * torch.norm(top_states, dim=-1, keepdim=True).transpose(1, 2))
    target = top[similarity.max(dim=-1).indices[0]]  # [len(rest)]
    # A target's k-th member (in ascending u) is folded in round k: a round touches each target at most once, so
    # the rounds give the reference's one-by-one result with a handful of vector steps.
    order = torch.argsort(target, stable=True)
    sorted_target = target[order]
    first_of_target = torch.ones_like(sorted_target, dtype=torch.bool)
    first_of_target[1:] = sorted_target[1:] != sorted_target[:-1]
    slots = torch.arange(len(order), device=order.device)
    rank = torch.empty_like(order)
    rank[order] = slots - torch.cummax(torch.where(first_of_target, slots, 0), dim=0).values
    for round_ in range(int(rank.max()) + 1):
        members = rest[rank == round_]
        targets = target[rank == round_]
        merged[targets] = (merged[targets] + states[members]) / 2
