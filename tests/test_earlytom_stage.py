"""EarlyTom as a stage: its frame merging inside a real (tiny, random) SigLIP tower equals the pure Stage I function on
that tower's own layer outputs and attention, its token selection before the LLM equals the pure Stage II function,
and `ask`, the feature cache and the refusals work for a user."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tiny_models
from cli_checks import error_line, printed_json, run_cli
from framefusion import EarlyTom, apply_framefusion, remove_framefusion
from framefusion.families import family_for
from framefusion.methods import earlytom
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.vision_merge import attention_received, encoding_with

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
SETTINGS = EarlyTom(retain_ratio=0.3, tau=0.3, max_window=6)


def _model_and_video(frames: int = 8):
    model = tiny_models.llava_onevision(attn="eager")
    model.config.vision_config._attn_implementation = "eager"
    return model, tiny_models.llava_video_inputs(frames)


def test_the_attention_received_is_the_towers_own_attention():
    model, inputs = _model_and_video()
    tower = model.model.vision_tower
    pixels = inputs["pixel_values_videos"][0]
    with torch.no_grad():
        output = tower(pixels, output_attentions=True, output_hidden_states=True)
        received = attention_received(tower.encoder.layers[0], output.hidden_states[0])
    assert torch.allclose(received, output.attentions[0].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(received.sum(dim=1), torch.ones(len(pixels)), atol=1e-5)


def test_the_towers_frames_merge_as_the_pure_function_and_come_back_padded():
    model, inputs = _model_and_video()
    tower = model.model.vision_tower
    pixels = inputs["pixel_values_videos"][0]
    with torch.no_grad():
        published = tower(pixels, output_hidden_states=True)
        layer = tower.encoder.layers[0]  # the tiny tower's only layer: the prune layer, and the last
        scores = attention_received(layer, published.hidden_states[0])
        merged, merged_scores, groups = earlytom.merge_frames(published.hidden_states[1], scores, tau=SETTINGS.tau,
                                                              max_window=SETTINGS.max_window, ema=SETTINGS.ema,
                                                              regroup=True)
        parts = family_for(model).batch_tower(model)
        with encoding_with(parts, SETTINGS, None) as merging:
            output = tower(pixels, output_hidden_states=True)
    plan = merging.plan
    count = len(merged)
    assert count < len(pixels) and (plan.frames_in, plan.frames, plan.groups) == (len(pixels), count, groups)
    assert plan.layer_frames == (len(pixels),)  # the one layer ran on every frame; the merge follows it
    assert torch.allclose(output.hidden_states[1][:count], merged, atol=1e-6)
    assert torch.equal(output.hidden_states[1][count:], merged[-1:].expand(len(pixels) - count, -1, -1))
    assert torch.allclose(output.last_hidden_state[:count], tower.post_layernorm(merged), atol=1e-5)
    assert torch.allclose(plan.scores, parts.pool_scores(merged_scores), atol=1e-6)
    with torch.no_grad():  # outside the block the tower is the published one again
        assert torch.equal(tower(pixels).last_hidden_state, published.last_hidden_state)


def test_the_selection_before_the_llm_is_stage_two_at_the_videos_first_positions():
    model, inputs = _model_and_video()
    with torch.no_grad(), encoding_with(family_for(model).batch_tower(model), SETTINGS, None) as merging:
        features = model.model.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full").pooler_output
    plan = merging.plan
    frames, per_frame = 8, 16
    video = features[0, :frames * per_frame].reshape(frames, per_frame, -1)
    expected = earlytom.select_tokens(video[:plan.frames], plan.scores, plan.groups,
                                      retain_ratio=SETTINGS.retain_ratio, frames_in=frames)
    start = len(tiny_models.TEXT_BEFORE)
    seen = {}

    def keep_input(module, args, kwargs):
        seen.setdefault("hidden_states", kwargs["hidden_states"])

    first_attention = model.model.language_model.layers[0].self_attn
    hook = first_attention.register_forward_pre_hook(keep_input, with_kwargs=True)
    handle = apply_framefusion(model, merge=False, prune=False, before_llm=SETTINGS)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    length = inputs["input_ids"].shape[1]
    kept = list(range(start + len(expected))) + list(range(start + frames * per_frame, length))
    assert handle.stats.kept_positions == kept  # the selection, then the newline and the text after the video
    layer = model.model.language_model.layers[0]
    embeddings = model.model.get_input_embeddings()(inputs["input_ids"])[0]
    rows = torch.cat([embeddings[:start], expected, features[0, frames * per_frame:], embeddings[start + 1 +
                                                                                                  frames * per_frame:]])
    assert torch.allclose(seen["hidden_states"][0], layer.input_layernorm(rows), atol=1e-5)
    assert [step.kind for step in handle.stats.steps] == ["earlytom"]
    remove_framefusion(model)
    assert model.model.vision_tower.forward.__self__ is model.model.vision_tower  # the tower's own forward again


def test_prune_layers_scale_with_the_towers_depth():
    assert EarlyTom().prune_layers(26) == (8, 21, 23) and EarlyTom().prune_layers(27) == (8, 22, 24)
    assert EarlyTom().prune_layers(1) == (0,) and EarlyTom(layers=(3, 1)).prune_layers(4) == (1, 3)
    with pytest.raises(ValueError, match="layer 4 is past the vision tower's last"):
        EarlyTom(layers=(4,)).prune_layers(4)


def _ask(video, *extra: str, model: str = "random:tiny-llava-onevision"):
    return run_cli("ask", video, "What happens?", "--model", model, "--frames", "8", "--max-new-tokens", "3", "--json",
                   *extra)


def test_ask_reports_the_merged_frames_and_a_cache_hit_answers_the_same(tmp_path):
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    first, second = (_ask(video, "--profile", "earlytom") for _ in range(2))
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    first, second = json.loads(first.stdout), json.loads(second.stdout)
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    tokens = first["tokens"]
    assert tokens["frames_merged"] < tokens["frames"] and tokens["final"] < tokens["prompt"]
    assert tokens["frames_per_tower_layer"] == tokens["frames"]  # the tiny tower's one layer ran on every frame
    assert [stage["kind"] for stage in tokens["stages"]] == ["earlytom", "inner-merge"]
    assert (second["answer"], second["tokens"]) == (first["answer"], first["tokens"])
    baseline = json.loads(_ask(video, "--profile", "baseline").stdout)
    assert baseline["cache"] == "miss"  # the earlytom entry holds merged frames: never the baseline's features
    assert baseline["tokens"]["frames_merged"] is None


def test_on_llava_next_video_the_class_token_and_the_unused_last_layer_stay_out():
    """CLIP's features are the second-to-last layer's output without the class token: frames merge only in the layers
    before, and the scores lose the class token as the features do."""
    from framefusion.model_zoo.loading import load_model

    loaded = load_model("random:tiny-llava-next-video", device="cpu", dtype=torch.float32)
    model = loaded.model
    parts = family_for(model).batch_tower(model)
    layers = compat.vision_encoder_layers(model.model.vision_tower)
    assert list(parts.layers) == layers[:-1]
    pixels = torch.rand(6, 3, 112, 112)
    with torch.no_grad(), encoding_with(parts, EarlyTom(tau=-1.0, max_window=6), None) as merging:
        output = model.model.vision_tower(pixels, output_hidden_states=True)
    plan = merging.plan
    assert plan.layer_frames == (6,) and plan.frames < 6 and plan.scores.shape == (plan.frames, (112 // 14 // model.config.spatial_pool_stride) ** 2)
    selected = output.hidden_states[model.config.vision_feature_layer]
    assert torch.equal(selected[plan.frames:], selected[plan.frames - 1:plan.frames].expand(6 - plan.frames, -1, -1))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_on_smolvlm_later_layers_get_the_masks_of_the_frames_left_and_scores_pool_like_the_connector(attn):
    """SmolVLM's tower passes every layer a per-frame attention mask where frames are padded: after a merge it is cut
    to the frames left. Its connector's pixel shuffle gathers each token's 2x2 patches: the scores are their mean."""
    from framefusion.model_zoo.loading import load_model

    model = load_model("random:tiny-smolvlm", device="cpu", dtype=torch.float32, attn_implementation=attn).model
    tower = model.model.vision_model
    first, second = compat.vision_encoder_layers(tower)
    seen = {}

    def keep(name):
        def hook(module, args, kwargs, output):
            seen[name] = (args, kwargs, output)
        return hook

    hooks = [layer.register_forward_hook(keep(name), with_kwargs=True) for name, layer in [("first", first),
                                                                                           ("second", second)]]
    pixels = torch.rand(6, 3, 112, 112)
    padded = torch.ones(6, 8, 8, dtype=torch.bool)
    padded[:, -1] = False  # the last row of patches is padding, in every frame
    with torch.no_grad():
        published = tower(pixels, patch_attention_mask=padded)
        (hidden_in, mask, *_), _, hidden_out = seen["first"]
        scores = attention_received(first, hidden_in)
        merged, merged_scores, groups = earlytom.merge_frames(hidden_out, scores, tau=-1.0, max_window=6, ema=0.9,
                                                              regroup=True)
        expected = tower.post_layernorm(second(merged, mask[:len(merged)] if mask is not None else None))
        parts = family_for(model).batch_tower(model)
        with encoding_with(parts, EarlyTom(tau=-1.0, max_window=6, layers=(0,)), None) as merging:
            output = tower(pixels, patch_attention_mask=padded)
    for hook in hooks:
        hook.remove()
    plan = merging.plan
    count = len(merged)
    assert count < 6 and (plan.frames, plan.groups, plan.layer_frames) == (count, groups, (6, count))
    assert torch.allclose(output.last_hidden_state[:count], expected, atol=1e-5)
    assert mask is not None and mask.shape[0] == 6  # a per-frame mask really reached the layers
    side = 112 // 14
    by_hand = torch.nn.functional.avg_pool2d(merged_scores.view(count, 1, side, side), 2).flatten(1)
    assert torch.allclose(plan.scores, by_hand, atol=1e-7)
    assert torch.equal(tower(pixels, patch_attention_mask=padded).last_hidden_state, published.last_hidden_state)


def test_internvls_attention_received_is_its_towers_own_with_query_and_key_norms():
    from transformers import InternVLVisionConfig, InternVLVisionModel

    config = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[112, 112], patch_size=[14, 14], use_qk_norm=True)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    tower = InternVLVisionModel(config).eval()
    layers = compat.vision_encoder_layers(tower)
    assert len(layers) == 2 and not isinstance(layers[1].attention.q_norm, torch.nn.Identity)
    with torch.no_grad():
        output = tower(torch.rand(5, 3, 112, 112), output_attentions=True, output_hidden_states=True)
        received = attention_received(layers[1], output.hidden_states[1])
    assert torch.allclose(received, output.attentions[1].mean(dim=(1, 2)), atol=1e-6)


@pytest.mark.parametrize("family", ["smolvlm", "internvl"])
def test_ask_with_earlytom_on_frames_as_images_families_merges_frames_and_selects_before_the_llm(family):
    tokens = printed_json(_ask(SAMPLE, "--profile", "earlytom", model=f"random:tiny-{family}"))["tokens"]
    assert tokens["frames_merged"] < tokens["frames"] and tokens["final"] < tokens["prompt"]
    assert [stage["kind"] for stage in tokens["stages"]] == ["earlytom", "inner-merge"]


def test_internvls_scores_drop_the_class_token_and_pool_like_its_pixel_shuffle():
    from framefusion.model_zoo.loading import load_model

    model = load_model("random:tiny-internvl", device="cpu", dtype=torch.float32).model
    parts = family_for(model).batch_tower(model)
    patches = (112 // 14) ** 2
    scores = torch.rand(3, 1 + patches)  # the class token first, as the tower's tokens
    pooled = parts.pool_scores(scores)
    # The features' own path: drop the class token, pixel shuffle, then a linear map; a mean is one.
    grid = scores[:, 1:].reshape(3, 8, 8, 1)
    shuffled = model.model.pixel_shuffle(grid, scale_factor=model.config.downsample_ratio)
    assert pooled.shape == (3, patches // 4)
    assert torch.allclose(pooled, shuffled.reshape(3, patches // 4, 4).mean(dim=-1))
    assert torch.allclose(pooled.sum(dim=1) * 4, scores[:, 1:].sum(dim=1))  # every patch counted once


def test_earlytom_is_refused_before_loading_on_a_packed_tower():
    result = _ask(SAMPLE, "--profile", "earlytom", model="random:tiny-qwen2-vl")
    line = error_line(result, 2, before_loading=True)
    assert "EarlyTom merges frames inside a vision tower that encodes them as a batch of images" in line
    assert line.endswith("use holitom, fastvid or vidcom2")


def test_the_layers_after_a_merge_are_counted_on_the_merged_frames_and_bound_the_vision_speedup():
    from framefusion.apps.bench import frame_limit
    from framefusion.model_zoo.loading import load_model
    from framefusion.pipeline.results import TokenReport
    from framefusion.runtime.vision_merge import TowerParts

    tower = load_model("random:tiny-llava-next-video", device="cpu", dtype=torch.float32).model.model.vision_tower
    parts = TowerParts(tower, compat.vision_encoder_layers(tower), lambda scores: scores)
    with torch.no_grad(), encoding_with(parts, EarlyTom(tau=-1.0, max_window=6, layers=(0,)), None) as merging:
        tower(torch.rand(6, 3, 112, 112))
    plan = merging.plan
    assert plan.frames < 6 and plan.layer_frames == (6, plan.frames)
    baseline = TokenReport(frames=6, visual=0, prompt=0, final=0, cost=1.0, requested_cost=1.0, per_layer=[],
                           stages=[])
    merged = TokenReport(frames=6, visual=0, prompt=0, final=0, cost=1.0, requested_cost=1.0, per_layer=[], stages=[],
                         frames_per_tower_layer=plan.mean_layer_frames)
    assert frame_limit(baseline, merged) == pytest.approx(12 / (6 + plan.frames))


def _tiny_onevision_prompt(processor, *, image=None, video=None):
    content = ([{"type": "image"}] if image is not None else []) + ([{"type": "video"}] if video is not None else [])
    messages = [{"role": "user", "content": content + [{"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    media = {"images": [image]} if image is not None else {}
    if video is not None:
        media["videos"] = [video]
    return processor(text=[prompt], **media, return_tensors="pt")


def test_images_are_encoded_as_published_and_a_prompt_with_both_is_refused():
    """EarlyTom merges whatever batch the tower encodes: an image's tiles must not be merged as frames."""
    import numpy as np

    from framefusion.model_zoo.loading import load_model

    loaded = load_model("random:tiny-llava-onevision", device="cpu", dtype=torch.float32)
    model, processor = loaded.model, loaded.processor
    generator = np.random.default_rng(0)
    image = (generator.random((448, 448, 3)) * 255).astype(np.uint8)
    video = (generator.random((4, 112, 112, 3)) * 255).astype(np.uint8)
    inputs = _tiny_onevision_prompt(processor, image=image)
    assert inputs["pixel_values"].shape[1] > 2  # tiles enough to be merged as frames
    with torch.no_grad():
        published = model(**inputs).logits
        apply_framefusion(model, merge=False, prune=False, before_llm=EarlyTom(tau=-1.0, max_window=6))
        assert torch.equal(model(**inputs).logits, published)
        with pytest.raises(ValueError, match="EarlyTom would merge the prompt's images as video frames"):
            model(**_tiny_onevision_prompt(processor, image=image, video=video))
    remove_framefusion(model)
