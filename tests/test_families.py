"""The families added after the first three (Qwen3-VL, LLaVA-NeXT-Video, InternVL, SmolVLM2), end to end through
their tiny checkpoints: processor -> generate on real frames, exactness at cost 1.0, cached generation, budget,
backends; their frame layouts; Qwen3-VL's DeepStack after merging; MiniCPM-V's refusal."""

from __future__ import annotations

import pytest
import torch

from framefusion.runtime.transformers_compat import processor_videos
from framefusion import apply_framefusion, remove_framefusion
from framefusion.methods import framefusion as core
from framefusion.families import family_for, supported_families
from framefusion.errors import InputError
from framefusion.model_zoo import load_model, parse_model_spec
from framefusion.runtime.reduction import MergedRows

from cache_check import assert_cached_equals_recomputed
from videos import moving_square_frames

# Qwen3.5 where the installed transformers runs it (5.25 on; tests/test_hybrid_stacks.py checks the refusal before).
FAMILIES = [name for name in ["qwen3-vl", "qwen3.5", "llava-next-video", "internvl", "smolvlm"]
            if name in supported_families()]
FRAMES, SIDE = 8, 112
# Video tokens for 8 frames of 112x112 (8x8 patches of 14 px): Qwen3-VL 4 groups of 2 frames x 4x4 merged
# tokens, in 4 runs (Qwen3.5: the same processor); the others 8 frames x 16 tokens (pooled, or pixel-shuffled), one
# run or one run per frame.
VIDEO_TOKENS = {"qwen3-vl": 4 * 16, "qwen3.5": 4 * 16, "llava-next-video": 8 * 16, "internvl": 8 * 16,
                "smolvlm": 8 * 16}
VIDEO_RUNS = {"qwen3-vl": 4, "qwen3.5": 4, "llava-next-video": 1, "internvl": 8, "smolvlm": 8}
# Cached against uncached logits. Qwen3.5's linear-attention layers run transformers' reference PyTorch kernels here:
# the chunked prefill and the token-by-token decode differ by up to ~1e-5 on the unpatched model already
# (tests/test_hybrid_stacks.py measures that floor), so its check allows 1e-4.
CACHE_ATOL = {"qwen3.5": 1e-4}
QUESTION = "What is happening in this video?"


def processor_inputs(processor, content=({"type": "video"},), with_video=True) -> dict:
    conversation = [{"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    if not with_video:
        return dict(processor(text=[prompt], return_tensors="pt"))
    metadata = {"fps": 4.0, "total_num_frames": FRAMES, "frames_indices": list(range(FRAMES))}
    return dict(processor(text=[prompt], videos=processor_videos(moving_square_frames(FRAMES, SIDE)),
                          video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"))


_LOADED: dict = {}


def loaded(family: str, attn: str = "sdpa"):
    """(model, processor) of random:tiny-<family>, loaded once per backend; FrameFusion removed."""
    key = (family, attn)
    if key not in _LOADED:
        model = load_model(f"random:tiny-{family}", dtype=torch.float32, device="cpu", attn_implementation=attn)
        _LOADED[key] = (model.model, model.processor)
    model, processor = _LOADED[key]
    remove_framefusion(model)
    return model, processor


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_family_is_detected_from_the_class_and_the_layout_is_the_processors(family):
    model, processor = loaded(family)
    found = family_for(model)
    assert found.name == family
    inputs = processor_inputs(processor)
    video_id = found.video_token_id(model)
    is_video = inputs["input_ids"][0] == video_id
    assert int(is_video.sum()) == VIDEO_TOKENS[family]
    from framefusion.families.base import VideoInputs, video_token_runs

    assert len(video_token_runs(is_video)) == VIDEO_RUNS[family]
    types = found.patch_types(model, inputs["input_ids"][0], VideoInputs(inputs.get("video_grid_thw")))
    # Every video token has a spatial position; the frames follow each other across any separators.
    per_frame = 16
    assert torch.equal(types[is_video], torch.arange(VIDEO_TOKENS[family]) % per_frame)
    assert bool((types[~is_video] == -1).all())


def test_generate_on_real_frames_reduces_tokens_and_answers(family):
    model, processor = loaded(family)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3)
    output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    assert new_tokens.numel() == 4 and isinstance(processor.decode(new_tokens), str)
    stats = handle.stats
    assert stats.video_tokens == VIDEO_TOKENS[family]
    assert stats.reduced and stats.final_tokens < stats.prompt_tokens
    assert stats.tokens_per_layer[-1] < stats.prompt_tokens


def test_cost_one_is_bit_identical_to_the_unpatched_model(family):
    model, processor = loaded(family)
    inputs = processor_inputs(processor)
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=1.0)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * handle.num_layers
    remove_framefusion(model)
    assert torch.equal(logits(model, inputs), baseline)


def test_per_layer_counts_follow_the_budget(family):
    model, processor = loaded(family)
    inputs = processor_inputs(processor)
    for cost in (0.3, 0.5):
        handle = apply_framefusion(model, cost=cost)
        out = logits(model, inputs)
        stats = handle.stats
        assert stats.achieved_cost == pytest.approx(cost, abs=0.03), (cost, stats.steps)
        text_tokens = stats.prompt_tokens - stats.video_tokens
        video_per_layer = [n - text_tokens for n in stats.tokens_per_layer]
        assert sum(video_per_layer) / (handle.num_layers * stats.video_tokens) == pytest.approx(stats.achieved_cost)
        assert stats.tokens_per_layer == sorted(stats.tokens_per_layer, reverse=True)
        assert out.shape[1] == stats.final_tokens
        # Every non-video token survives.
        kept = set(stats.kept_positions)
        video_id = handle.family.video_token_id(model)
        assert set(torch.nonzero(inputs["input_ids"][0] != video_id).squeeze(-1).tolist()) <= kept


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_generation_equals_recomputation_with_the_prune_frozen(family, attn):
    model, processor = loaded(family, attn)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3)
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=4, min_new_tokens=4, check_tokens=False,
                                    atol=CACHE_ATOL.get(family, 1e-5))
    assert handle.stats.reduced


def test_sdpa_and_eager_select_the_same_tokens(family):
    results = {}
    for attn in ("sdpa", "eager"):
        model, processor = loaded(family, attn)
        handle = apply_framefusion(model, cost=0.3)
        out = logits(model, processor_inputs(processor))
        results[attn] = (handle.stats.kept_positions, handle.stats.tokens_per_layer, out[0, -1])
    assert results["sdpa"][:2] == results["eager"][:2]
    assert torch.allclose(results["sdpa"][2], results["eager"][2], atol=1e-4)


def test_prompts_without_video_pass_through_untouched(family):
    model, processor = loaded(family)
    inputs = processor_inputs(processor, content=(), with_video=False)
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=0.3)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.steps == []


@pytest.mark.parametrize("family_with_images", ["internvl", "smolvlm"])
def test_an_image_is_not_taken_for_a_video(family_with_images):
    """Frames and images are the same tokens in these families: a lone image (or its tiles) is never reduced."""
    model, processor = loaded(family_with_images)
    image = moving_square_frames(FRAMES, SIDE)[0]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
    baseline = logits(model, inputs)
    handle = apply_framefusion(model, cost=0.3)
    assert torch.equal(logits(model, inputs), baseline)
    assert handle.stats.steps == []


# ------------------------------------------------------------------ Qwen3-VL DeepStack


def test_merged_rows_average_deepstack_features_as_the_hidden_states_by_hand():
    # Positions 0..7; 0 and 7 are text, 1..6 are three frames of two patches (types 0, 1, 0, 1, 0, 1).
    patch_types = torch.tensor([-1, 0, 1, 0, 1, 0, 1, -1])
    rows = MergedRows(8, torch.device("cpu"))
    # Step 1 (layer 0): position 3 (type 0, frame 2) merges into 1.
    positions_by_patch = core.order_by_patch(patch_types)  # [1, 3, 5, 2, 4, 6]
    rows.fold(8, positions_by_patch, torch.tensor([False, True, False, False, False, False]))
    keep = torch.ones(8, dtype=torch.bool)
    keep[3] = False
    rows.keep(keep)
    patch_types = patch_types[keep]  # positions 0, 1, 2, 4, 5, 6, 7
    # Step 2: position 5 merges into the token at 1, which already averages 1 and 3: a plain mean again.
    positions_by_patch = core.order_by_patch(patch_types)  # current [1, 4, 2, 3, 5] = original [1, 5, 2, 4, 6]
    rows.fold(7, positions_by_patch, torch.tensor([False, True, False, False, False]))
    keep = torch.tensor([True, True, True, True, False, True, True])
    rows.keep(keep)  # original positions 0, 1, 2, 4, 6, 7 remain
    # Step 3, a prune: drop original position 4 (current index 3).
    rows.keep(torch.tensor([True, True, True, False, True, True]))  # original 0, 1, 2, 6, 7

    visual = torch.tensor([False, True, True, True, True, True, True, False])
    features = torch.randn(6, 5)  # DeepStack rows of positions 1..6
    added = rows.combine(5, visual, features)
    row = {position: features[position - 1] for position in range(1, 7)}
    expected = torch.stack([
        torch.zeros(5),                                          # text
        ((row[1] + row[3]) / 2 + row[5]) / 2,                   # anchor: 1/4, 1/4, 1/2
        row[2],
        row[6],
        torch.zeros(5),                                          # text
    ])
    assert torch.allclose(added, expected)


def test_deepstack_follows_the_surviving_tokens_in_the_model():
    """The additions DeepStack makes after a reduction equal the merges applied to the full-length additions."""
    model, processor = loaded("qwen3-vl")
    inputs = processor_inputs(processor)
    language_model = model.model.language_model
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.0)  # everything similar merges at layer 0
    patched = language_model._deepstack_process
    calls = []

    def spy(hidden_states, visual_pos_masks, visual_embeds):
        out = patched(hidden_states, visual_pos_masks, visual_embeds)
        positions = handle.runtime._prefill.positions.tolist()  # original positions of the tokens present
        calls.append((hidden_states.shape[1], visual_pos_masks.shape[1], out - hidden_states, visual_embeds, positions))
        return out

    language_model._deepstack_process = spy
    try:
        logits(model, inputs)
    finally:
        language_model._deepstack_process = patched
    assert handle.stats.steps[0].tokens_after < handle.stats.steps[0].tokens_before
    assert len(calls) == len(model.config.vision_config.deepstack_visual_indexes)
    visual = inputs["input_ids"][0] == model.config.video_token_id
    row_of_position = torch.cumsum(visual.long(), 0) - 1
    merge_steps = [step for step in handle.stats.steps if step.kind == "merge"]
    for present, full_length, added, visual_embeds, _ in calls:
        assert present < full_length and added.shape == (1, present, visual_embeds.shape[-1])
        assert calls[0][0] == merge_steps[0].tokens_after  # layer 0's addition came after its merge
    # Text tokens get nothing; the merged layer-0 tokens get means of visual rows: every addition is a convex
    # combination, so its norm never exceeds the largest row's and it is exactly a row for unmerged tokens.
    present, _, added, visual_embeds, state_positions = calls[0]
    text_rows = [i for i, p in enumerate(state_positions) if not visual[p]]
    assert text_rows and torch.equal(added[0, text_rows[:1]], torch.zeros(1, added.shape[-1]))
    # By hand: after layer 0's single merge, a present video token stands for itself and the merged tokens of its
    # spatial position that follow it up to the next present one; its addition is the plain mean of their rows.
    from framefusion.families.base import VideoInputs

    types = handle.family.patch_types(model, inputs["input_ids"][0], VideoInputs(inputs["video_grid_thw"]))
    present_set = set(state_positions)
    merged_somewhere = 0
    for index, position in enumerate(state_positions):
        if not visual[position]:
            continue
        group = [position]
        for later in range(position + 1, full_length):
            if types[later] == types[position]:
                if later in present_set:
                    break
                group.append(later)
        merged_somewhere += len(group) > 1
        expected = visual_embeds[row_of_position[group]].sum(0) / len(group)
        assert torch.allclose(added[0, index], expected, atol=1e-6), (position, group)
    assert merged_somewhere > 0
    remove_framefusion(model)
    assert "_deepstack_process" not in language_model.__dict__


# ------------------------------------------------------------------ MiniCPM-V, aliases


def test_minicpm_v_is_refused_with_the_reason():
    from transformers import AutoModelForImageTextToText, MiniCPMV4_6Config

    config = MiniCPMV4_6Config(
        text_config=dict(model_type="qwen3_5_text", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    )
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    with pytest.raises(InputError, match="hybrid stack.*linear_attention.*recurrent state"):
        apply_framefusion(model)


def test_aliases_name_the_published_checkpoints():
    expected = {
        "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
        "llava-next-video-7b": "llava-hf/LLaVA-NeXT-Video-7B-hf",
        "internvl3-8b": "OpenGVLab/InternVL3-8B-hf",
        "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "qwen3.5-2b": "Qwen/Qwen3.5-2B",
        "qwen3.5-0.8b": "Qwen/Qwen3.5-0.8B",
    }
    for alias, hub_id in expected.items():
        assert parse_model_spec(alias).target == hub_id
    for name in FAMILIES:
        assert parse_model_spec(f"random:tiny-{name}").family == name
