"""FrameFusion on real transformers models (tiny, random weights): exactness, caching, budget, pass-through, errors."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from framefusion import apply_framefusion, remove_framefusion
from framefusion.api import framefusion_handle

import tiny_models
from cache_check import assert_cached_equals_recomputed

FAMILIES = sorted(tiny_models.FAMILIES)


def build(family: str, **kwargs):
    make_model, make_inputs = tiny_models.FAMILIES[family]
    return make_model(**kwargs), make_inputs()


@torch.no_grad()
def logits(model, inputs):
    return model(**inputs).logits


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cost_one_is_bit_identical_and_remove_restores_the_model(family, attn):
    model, inputs = build(family, attn=attn)
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=1.0, reference_positions=False)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * handle.num_layers
    assert handle.stats.achieved_cost == 1.0

    apply_framefusion(model, cost=0.3, reference_positions=False)
    assert not torch.equal(logits(model, inputs)[:, -1], baseline[:, -1])
    remove_framefusion(model)
    assert framefusion_handle(model) is None
    assert all("forward" not in layer.__dict__ for layer in model.model.language_model.layers)
    assert torch.equal(logits(model, inputs), baseline)
    remove_framefusion(model)  # removing twice is harmless


def test_apply_twice_is_apply_once():
    model, inputs = build("qwen2-vl")
    apply_framefusion(model, cost=0.3, reference_positions=False)
    once = logits(model, inputs)
    hooks_once = len(model.model._forward_pre_hooks)
    handle = apply_framefusion(model, cost=0.3, reference_positions=False)
    assert len(model.model._forward_pre_hooks) == hooks_once
    assert torch.equal(logits(model, inputs), once)
    assert handle.stats.reduced


@pytest.mark.parametrize("family", FAMILIES)
def test_reduction_follows_the_budget_of_the_models_own_depth(family):
    for num_layers in (4, 28):
        model, inputs = build(family, num_layers=num_layers)
        handle = apply_framefusion(model, cost=0.3, reference_positions=False)
        out = logits(model, inputs)
        stats = handle.stats
        assert len(stats.tokens_per_layer) == num_layers
        assert stats.achieved_cost == pytest.approx(0.3, abs=0.015), (num_layers, stats.steps)
        # The per-layer counts are what the achieved cost is made of.
        text_tokens = stats.prompt_tokens - stats.video_tokens
        video_per_layer = [n - text_tokens for n in stats.tokens_per_layer]
        assert sum(video_per_layer) / (num_layers * stats.video_tokens) == pytest.approx(stats.achieved_cost)
        assert stats.tokens_per_layer == sorted(stats.tokens_per_layer, reverse=True)
        assert out.shape[1] == stats.final_tokens == stats.tokens_per_layer[-1]
        # Every text token survives, in order; kept positions index the input.
        input_ids = inputs["input_ids"][0]
        kept = torch.tensor(stats.kept_positions)
        assert kept.tolist() == sorted(kept.tolist())
        assert set(torch.nonzero(input_ids != tiny_models.VIDEO_TOKEN).squeeze(-1).tolist()) <= set(kept.tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_both_kinds_of_step_run(family):
    model, inputs = build(family)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.9, reference_positions=False)
    logits(model, inputs)
    kinds = [step.kind for step in handle.stats.steps]
    assert kinds[0] == "merge" and handle.stats.steps[0].where == "before_attention"
    assert "prune" in kinds, handle.stats.steps
    first_merge = handle.stats.steps[0]
    assert first_merge.video_tokens_after < first_merge.video_tokens_before


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_select_the_same_tokens(family):
    kept = {}
    for attn in ("sdpa", "eager"):
        model, inputs = build(family, attn=attn)
        handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.9, reference_positions=False)
        out = logits(model, inputs)
        kept[attn] = (handle.stats.kept_positions, handle.stats.tokens_per_layer, out[0, -1])
    assert kept["sdpa"][0] == kept["eager"][0]
    assert kept["sdpa"][1] == kept["eager"][1]
    assert torch.allclose(kept["sdpa"][2], kept["eager"][2], atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_recomputation_with_kept_sets_frozen(family, attn):
    model, inputs = build(family, attn=attn)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.9, reference_positions=False)
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=6, pad_token_id=0)
    # The recomputations are prefills of their own: check the generation's own prefill through a fresh one.
    logits(model, inputs)
    assert handle.stats.reduced and handle.stats.tokens_per_layer[-1] < inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_without_video_pass_through_untouched(family):
    model, _ = build(family)
    inputs = tiny_models.text_only_inputs()
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=0.3, reference_positions=False)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.steps == []
    assert handle.stats.kept_positions == list(range(inputs["input_ids"].shape[1]))
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_image_prompt_passes_through_untouched():
    model, _ = build("qwen2-vl")
    video = tiny_models.qwen_video_inputs([(1, 8, 8)])
    image_ids = video["input_ids"].masked_fill(video["input_ids"] == tiny_models.VIDEO_TOKEN, tiny_models.IMAGE_TOKEN)
    pixels = video["pixel_values_videos"]
    inputs = dict(input_ids=image_ids, attention_mask=torch.ones_like(image_ids),
                  mm_token_type_ids=(image_ids == tiny_models.IMAGE_TOKEN).int(),
                  pixel_values=pixels, image_grid_thw=torch.tensor([[1, 8, 8]]))
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=0.3, reference_positions=False)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.steps == []


def test_two_videos_in_one_prompt_are_reduced_separately():
    model, _ = build("qwen2-vl")
    inputs = tiny_models.qwen_video_inputs([(4, 8, 8), (4, 8, 4)], between=[60, 61])
    handle = apply_framefusion(model, cost=0.3, reference_positions=False)
    out = logits(model, inputs)
    assert torch.isfinite(out).all()
    assert handle.stats.video_tokens == 4 * 16 + 4 * 8
    assert handle.stats.achieved_cost == pytest.approx(0.3, abs=0.02)


def test_merging_never_crosses_from_one_video_into_the_other():
    # Any similarity counts, so every token that has a predecessor may merge into it. A token merges only into the
    # same position of the previous frame of the same video: each video's first frame has none and stays whole,
    # while later frames of both videos lose tokens. (Sharing positions across the boundary, the second video's
    # first frame would merge into the first video's last one.)
    model, _ = build("qwen2-vl")
    inputs = tiny_models.qwen_video_inputs([(4, 8, 8), (4, 8, 4)], between=[60, 61])
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=-1.0, ratio_lower_bound=0.01, prune=False,
                               reference_positions=False)
    logits(model, inputs)
    video = torch.nonzero(inputs["input_ids"][0] == tiny_models.VIDEO_TOKEN).squeeze(-1).tolist()
    first, second = video[: 4 * 16], video[4 * 16:]  # 16 tokens a frame in the first video, 8 in the second
    kept = set(handle.stats.kept_positions)
    assert set(first[:16]) <= kept and set(second[:8]) <= kept
    assert not set(first[16:]) <= kept and not set(second[8:]) <= kept


def test_a_batch_of_prompts_with_video_is_refused_clearly():
    model, inputs = build("qwen2-vl")
    apply_framefusion(model, cost=0.3, reference_positions=False)
    batch = {key: (torch.cat([value, value]) if key != "pixel_values_videos" else torch.cat([value, value]))
             for key, value in inputs.items() if key != "video_grid_thw"}
    batch["video_grid_thw"] = torch.cat([inputs["video_grid_thw"]] * 2)
    with pytest.raises(ValueError, match="one prompt at a time"):
        logits(model, batch)


def test_output_attentions_does_not_crash():
    model, inputs = build("qwen2-vl", attn="eager")
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.9, reference_positions=False)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    assert len(out.attentions) == handle.num_layers
    assert out.attentions[-1].shape[-1] == handle.stats.tokens_per_layer[-1]


def test_merge_only_and_prune_only():
    model, inputs = build("qwen2-vl")
    handle = apply_framefusion(model, cost=0.3, prune=False, reference_positions=False)
    logits(model, inputs)
    assert {step.kind for step in handle.stats.steps} == {"merge"}

    handle = apply_framefusion(model, cost=0.3, merge=False, dense_layers=2, reference_positions=False)
    logits(model, inputs)
    (step,) = handle.stats.steps
    assert (step.kind, step.layer) == ("prune", 1)
    per_layer = handle.stats.tokens_per_layer
    assert per_layer[0] == per_layer[1] == handle.stats.prompt_tokens
    assert handle.stats.achieved_cost == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(cost=0.0), "cost must be in"),
        (dict(cost=1.5), "cost must be in"),
        (dict(cost=0.05), "too small for a model with 8 decoder layers"),
        (dict(similarity_lower_bound=1.5), "similarity_lower_bound must be in"),
        (dict(similarity_lower_bound=-1.01), "similarity_lower_bound must be in"),
        (dict(ratio_lower_bound=0.0), "ratio_lower_bound must be in"),
        (dict(merge=False, prune=False), "nothing would be reduced"),
    ],
)
def test_bad_arguments_are_rejected_at_apply(kwargs, message):
    model, _ = build("qwen2-vl")
    with pytest.raises(ValueError, match=message):
        apply_framefusion(model, **kwargs)
    assert framefusion_handle(model) is None


def test_unsupported_family_names_the_supported_ones():
    config = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match="supported families: qwen2-vl, qwen2.5-vl, llava-onevision"):
        apply_framefusion(Qwen2ForCausalLM(config))


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_cost_one_with_reference_positions_on_both_sides_is_bit_identical(family):
    from framefusion import has_reference_positions, restore_reference_positions

    model, inputs = build(family)
    restore_reference_positions(model)
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=1.0)
    assert torch.equal(logits(model, inputs), baseline)
    # Positions restored before apply belong to the caller: removing FrameFusion leaves them on.
    assert not handle.reference_positions
    remove_framefusion(model)
    assert has_reference_positions(model)


def test_apply_restores_reference_positions_and_remove_undoes_them():
    from framefusion import has_reference_positions

    model, inputs = build("qwen2-vl")
    handle = apply_framefusion(model, cost=0.3)
    assert handle.reference_positions and has_reference_positions(model)
    remove_framefusion(model)
    assert not has_reference_positions(model)


def test_accelerate_style_forward_wrappers_stay_in_place():
    """device_map models: accelerate wraps `forward` and keeps the real one as `_old_forward`."""
    model, inputs = build("qwen2-vl")
    baseline = logits(model, inputs)
    calls = []
    for layer in model.model.language_model.layers:
        layer._hf_hook = object()
        layer._old_forward = layer.forward

        def wrapper(*args, _layer=layer, **kwargs):
            calls.append(1)
            return _layer._old_forward(*args, **kwargs)

        layer.forward = wrapper
    wrappers = [layer.forward for layer in model.model.language_model.layers]
    old_forwards = [layer._old_forward for layer in model.model.language_model.layers]

    handle = apply_framefusion(model, cost=0.3, reference_positions=False)
    logits(model, inputs)
    assert handle.stats.reduced and calls, "FrameFusion ran inside the wrapper"
    remove_framefusion(model)
    assert [layer.forward for layer in model.model.language_model.layers] == wrappers
    assert [layer._old_forward for layer in model.model.language_model.layers] == old_forwards
    assert torch.equal(logits(model, inputs), baseline)
