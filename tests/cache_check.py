"""Cached generation against recomputation without cache, with FrameFusion's prune selection frozen.

Prompt tokens' hidden states do not depend on later tokens (causal attention), so merging decides the same with or
without the generated tokens appended; only the prune step looks at the last queries, so the recomputation reuses
what the prefill chose (generated tokens always kept).
"""

from __future__ import annotations

import torch

from framefusion.methods import framefusion as core


def generate_recording_prune(model, inputs: dict, **generate_kwargs):
    """generate() with output_logits; returns (output, the prefill's prune keep mask or None)."""
    recorded = {}
    original = core.prune_keep_mask

    def recording(importance, patch_types, sparsity):
        recorded["keep"] = original(importance, patch_types, sparsity)
        return recorded["keep"]

    core.prune_keep_mask = recording
    try:
        output = model.generate(**inputs, do_sample=False, output_logits=True, return_dict_in_generate=True,
                                **generate_kwargs)
    finally:
        core.prune_keep_mask = original
    return output, recorded.get("keep")


def recompute_without_cache(model, inputs: dict, new_tokens: list[int], prune_keep: torch.Tensor | None):
    """Last-position logits of prompt + new_tokens in one forward without cache, the prune selection frozen."""
    input_ids = torch.cat([inputs["input_ids"], torch.tensor([new_tokens], dtype=torch.long)], dim=1)
    extended = dict(inputs, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if "mm_token_type_ids" in inputs:
        token_types = inputs["mm_token_type_ids"]
        extended["mm_token_type_ids"] = torch.cat(
            [token_types, torch.zeros(1, len(new_tokens), dtype=token_types.dtype)], dim=1)
    original = core.prune_keep_mask

    def frozen(importance, patch_types, sparsity):
        if prune_keep is None:
            return original(importance, patch_types, sparsity)
        return torch.cat([prune_keep, torch.ones(len(new_tokens), dtype=torch.bool)])

    core.prune_keep_mask = frozen
    try:
        with torch.no_grad():
            return model(**extended, use_cache=False).logits[0, -1]
    finally:
        core.prune_keep_mask = original


def assert_cached_equals_recomputed(model, inputs: dict, max_new_tokens: int, atol: float = 1e-5,
                                    check_tokens: bool = True, **kwargs) -> None:
    output, prune_keep = generate_recording_prune(model, inputs, max_new_tokens=max_new_tokens, **kwargs)
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    assert new_tokens, "nothing was generated"
    for step in range(len(new_tokens)):
        expected = recompute_without_cache(model, inputs, new_tokens[:step], prune_keep)
        assert torch.allclose(output.logits[step][0], expected, atol=atol), f"step {step}"
        if check_tokens:
            assert int(expected.argmax()) == new_tokens[step], f"step {step}"
