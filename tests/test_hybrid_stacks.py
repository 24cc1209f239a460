"""FrameFusion inside a hybrid language model: Qwen3.5's stack of Gated DeltaNet linear-attention layers with a gated
softmax-attention layer every fourth (random:tiny-qwen3.5: layers 3 and 7 are full attention).

Merging runs after any layer; the prune step needs the last queries' attention and so runs after the nearest
full-attention layer, the layers it waits through counted in the budget. The linear-attention layers run on the kept
tokens, so their convolution windows and recurrent states, which decoding reads, are the kept tokens' own.
"""

from __future__ import annotations

import pytest
import torch

from cache_check import assert_cached_equals_recomputed, generate_recording_prune, recompute_without_cache
from framefusion import apply_framefusion, remove_framefusion
from framefusion.methods import framefusion as core
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.hooks import rotate
from framefusion.runtime.reduction import FrameFusionSettings, PrefillReduction
from framefusion.families import supported_families
from test_families import loaded, processor_inputs

FAMILY = "qwen3.5"
# The family runs from transformers 5.25 on (its linear caches count their tokens there); before, it refuses, which
# test_qwen35_is_refused_in_one_line_where_transformers_is_too_old checks. The tests of the stack need the family.
RUNS_HERE = FAMILY in supported_families()
needs_the_family = pytest.mark.skipif(not RUNS_HERE, reason="Qwen3.5 needs transformers >= 5.25; its refusal is tested")
# S_th so high that layer 0's merge finds almost nothing: merging finishes at once and the prune does the work.
STRICT_SIMILARITY = 0.99
# transformers' reference PyTorch kernels for the linear-attention layers: the chunked prefill and the token-by-token
# decode of the unpatched model already differ by ~1e-5 in the logits (measured below), so the checks allow 1e-4.
KERNEL_ATOL = 1e-4


def layer_types(model) -> list[str]:
    return list(model.config.text_config.layer_types)


@needs_the_family
def test_the_tiny_checkpoint_keeps_the_hybrid_layout():
    model, _ = loaded(FAMILY)
    kinds = layer_types(model)
    assert kinds == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    layers = model.model.language_model.layers
    assert all(hasattr(layer, compat.LINEAR_ATTENTION_MODULE) != hasattr(layer, compat.ATTENTION_MODULE)
               for layer in layers)
    rotary = model.config.text_config.rope_parameters["partial_rotary_factor"]
    assert 0 < rotary < 1  # part of each head rotates, as in the published models


@needs_the_family
def test_the_prune_waits_for_the_nearest_full_attention_layer():
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    with torch.no_grad():
        model(**inputs)
    stats = handle.stats
    merges = [step for step in stats.steps if step.kind == "merge"]
    prunes = [step for step in stats.steps if step.kind == "prune"]
    assert merges and all(step.layer == 0 for step in merges)  # merging finished in layer 0 (a linear layer)
    assert len(prunes) == 1 and prunes[0].layer == layer_types(model).index("full_attention") == 3
    # Layers 0-3 see what merging left; the prune shortens the sequence from layer 4 on.
    assert len(set(stats.tokens_per_layer[:4])) == 1 and stats.tokens_per_layer[4] < stats.tokens_per_layer[3]
    assert stats.achieved_cost == pytest.approx(0.3, abs=0.03)


@needs_the_family
def test_the_layers_the_prune_waits_through_count_in_the_budget():
    """Waiting at the token count merging left is a step that removed nothing: the prune is sized for the layers
    that are really left, so the whole prefill still meets the budget."""
    settings = FrameFusionSettings(cost=0.6, similarity_lower_bound=0.99, ratio_lower_bound=0.1)
    patch_types = torch.tensor([-1] + [index % 4 for index in range(32)] + [-1])
    state = PrefillReduction(settings, patch_types, num_layers=8, measure=False)
    state.sparsities, state.merging_finished = [0.05], True  # layer 0's merge removed 5% and finished merging
    assert [state.step_after_attention(layer, rates_importance=False) for layer in range(3)] == [None] * 3
    assert state.step_after_attention(3, rates_importance=True) == "prune"
    assert state.sparsities == [0.05, 0.0, 0.0, 0.0]
    required = core.required_sparsity(state.sparsities, 8, 0.6)
    kept = 0.95
    assert 0 < required < 1 and 4 * kept + 4 * kept * (1 - required) == pytest.approx(8 * 0.6)
    # A standard stack prunes right after merging finished, with nothing appended.
    standard = PrefillReduction(settings, patch_types, num_layers=8, measure=False)
    standard.sparsities, standard.merging_finished = [0.05], True
    assert standard.step_after_attention(0, rates_importance=True) == "prune" and standard.sparsities == [0.05]


@needs_the_family
def test_prune_only_prunes_at_the_first_full_attention_layer_after_the_dense_ones():
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.6, merge=False, dense_layers=2)
    with torch.no_grad():
        model(**inputs)
    stats = handle.stats
    assert [(step.kind, step.layer) for step in stats.steps] == [("prune", 3)]
    # Four layers with every video token, four with the rest of the budget: 0.6 * 8 = 4 + 4 * 0.2.
    assert stats.video_tokens_per_layer[4] == round(stats.video_tokens * 0.2)
    assert stats.achieved_cost == pytest.approx(0.6, abs=0.01)


@needs_the_family
def test_importance_is_the_full_attention_layers_own_attention():
    """The prune rates tokens with the layer's own rotated queries and keys (q_proj also carries the output gate,
    and only part of each head rotates): the same weights eager attention computes for the last queries."""
    model, processor = loaded(FAMILY, "eager")
    inputs = processor_inputs(processor)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions  # full-attention layers only
    expected = attentions[0][0, :, -4:, :].float().mean(dim=(0, 1))  # layer 3, the last 4 queries
    recorded = {}
    original = core.last_query_importance

    def recording(queries, keys, scaling, key_padding_mask=None):
        recorded["importance"] = original(queries, keys, scaling, key_padding_mask)
        return recorded["importance"]

    core.last_query_importance = recording
    try:
        # S_th 1.0: nothing merges, merging finishes before layer 0 and the prune rates the full sequence at layer 3.
        handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=1.0)
        with torch.no_grad():
            model(**inputs)
    finally:
        core.last_query_importance = original
    assert [(step.kind, step.layer) for step in handle.stats.steps] == [("merge", 0), ("prune", 3)]
    assert torch.allclose(recorded["importance"], expected, atol=1e-6)


@needs_the_family
def test_partial_rotation_matches_the_models_own():
    from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 1, 3, 5, 16, generator=generator)  # [batch, heads, tokens, head_dim]
    cos, sin = torch.randn(2, 1, 5, 8, generator=generator)  # half of each head rotates
    expected_queries, expected_keys = apply_rotary_pos_emb(queries, keys, cos, sin)
    assert torch.allclose(rotate(queries[0], cos[0], sin[0]), expected_queries[0])
    assert torch.allclose(rotate(keys[0], cos[0], sin[0]), expected_keys[0])


@needs_the_family
def test_every_layers_cache_holds_exactly_the_tokens_it_saw():
    """Full-attention layers keep keys and values of their tokens; linear-attention layers count the tokens whose
    convolution window and recurrent state they hold. Both equal the layer's token count after the reduction."""
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    with torch.no_grad():
        cache = compat.output_cache(model(**inputs, use_cache=True))
    counts = handle.stats.tokens_per_layer
    assert len(set(counts)) > 1
    assert [compat.cached_length(cache, index) for index in range(len(counts))] == counts


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@needs_the_family
@pytest.mark.parametrize("similarity", [None, STRICT_SIMILARITY], ids=["merge", "merge-then-prune"])
def test_generation_after_a_reduced_prefill_equals_generation_on_the_reduced_sequence(attn, similarity):
    """Cached greedy decoding after the reduced prefill against one uncached forward over prompt + generated tokens
    with the same reduction (the prune's choice frozen): the same logits within the kernels' noise, the same tokens."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    # The noise floor: the unpatched model, cached against uncached.
    output, _ = generate_recording_prune(model, inputs, max_new_tokens=4, min_new_tokens=4)
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    floor = max(float((output.logits[step][0] - recompute_without_cache(model, inputs, new_tokens[:step], None))
                      .abs().max()) for step in range(len(new_tokens)))
    assert floor < KERNEL_ATOL
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=similarity)
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=4, min_new_tokens=4, atol=KERNEL_ATOL)
    assert handle.stats.reduced
    if similarity is not None:
        assert any(step.kind == "prune" for step in handle.stats.steps)
    remove_framefusion(model)


@pytest.mark.slow
@needs_the_family
def test_bench_runs_on_the_published_shape():
    """`bench` on random weights at Qwen3.5-0.8B's real shape (24 layers, 18 of them linear attention): FrameFusion's
    reduction inside the hybrid stack, timed against the baseline. About 3.5 GB of memory in float32."""
    import json

    from cli_checks import run_cli

    result = run_cli("bench", "--model", "random:qwen3.5-0.8b", "--frames", "4", "--repeat", "1", "--warmup", "0",
                     "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    baseline, framefusion = json.loads(result.stdout)["results"]
    assert len(baseline["tokens"]["per_layer"]) == 24
    assert framefusion["tokens"]["prompt"] == baseline["tokens"]["prompt"] > framefusion["tokens"]["final"]
    assert sum(framefusion["tokens"]["per_layer"]) < sum(baseline["tokens"]["per_layer"])


@pytest.mark.skipif(RUNS_HERE, reason="checks the refusal on transformers older than 5.25")
def test_qwen35_is_refused_in_one_line_where_transformers_is_too_old():
    from transformers import Qwen3_5Config

    from framefusion.errors import InputError
    from framefusion.families import family_for, registered_families

    [family] = [family for family in registered_families() if family.name == FAMILY]
    assert family.refuses and "random:tiny-qwen3.5" not in " ".join(f"random:tiny-{name}" for name in
                                                                     supported_families())
    model = torch.nn.Module()
    model.config = Qwen3_5Config()
    with pytest.raises(InputError, match=r"Qwen3\.5 with transformers 5\.25\.0 or newer.*pip install -U transformers"):
        family_for(model)
