"""The vision tower's signals HoliTom and FastVID read, as the official code reads them: the attention of the tower's
last layer (HoliTom; FastVID without a head), SigLIP's attention-pooling head loaded from a checkpoint the user names
(FastVID on LLaVA-OneVision), each equal to an independent computation on a real (tiny, random) tower, and carried
through the command line, its report and the feature cache."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import tiny_models
from cli_checks import error_line, printed_json, run_cli
from framefusion import FastVID, HoliTom, apply_framefusion, remove_framefusion
from framefusion.methods import fastvid, holitom
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.before_llm import frame_query_attention
from framefusion.runtime.tower_signals import load_pooling_head

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
FRAMES, PER_FRAME = 8, 16


def _model_and_video():
    model = tiny_models.llava_onevision(attn="eager")
    model.config.vision_config._attn_implementation = "eager"
    return model, tiny_models.llava_video_inputs(FRAMES)


def _save_siglip_head(folder: Path, width: int = 32, heads: int = 2, use_head: bool = True, seed: int = 1) -> Path:
    """A tiny SigLIP vision model with its attention-pooling head, saved as a user would have it."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
                                image_size=112, patch_size=14, vision_use_head=use_head)
    SiglipVisionModel(config).save_pretrained(folder)
    return folder


def _video_features_and_last_layer(model, inputs):
    """The video's features [T, P, C] as the LLM receives them, and the tower's last layer output [T, N, D] and its
    attention [T, heads, N, N], from the published model."""
    pixels = inputs["pixel_values_videos"][0]
    with torch.no_grad():
        features = model.model.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full").pooler_output
        tower = model.model.vision_tower(pixels, output_attentions=True, output_hidden_states=True)
    video = features[0, :FRAMES * PER_FRAME].reshape(FRAMES, PER_FRAME, -1)
    return video, tower.hidden_states[-1], tower.attentions[-1]


def _pooled(model, scores):
    """Per-patch scores [T, N] pooled to the tokens [T, P] as the family pools its features."""
    multimodal = model.model
    return multimodal.apply_pooling(scores[..., None])[..., 0].float()


def _run_before_llm(model, inputs, method, seed=0):
    """The tokens entering layer 0's attention (normalised input) and the handle, after one forward under `method`."""
    seen = {}

    def keep_input(module, args, kwargs):
        seen.setdefault("hidden_states", kwargs["hidden_states"])

    layer = model.model.language_model.layers[0]
    hook = layer.self_attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    handle = apply_framefusion(model, merge=False, prune=False, before_llm=method)
    torch.manual_seed(seed)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return seen["hidden_states"][0], handle


def _expected_rows(model, inputs, video, kept, tokens):
    """The LLM's input rows after a stage that kept `kept` (flat t * P + p) of the video, writing `tokens` there."""
    start = len(tiny_models.TEXT_BEFORE)
    embeddings = model.model.get_input_embeddings()(inputs["input_ids"])[0]
    with torch.no_grad():
        features = model.model.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full").pooler_output[0]
    rows = torch.cat([embeddings[:start], tokens.to(video.dtype), features[FRAMES * PER_FRAME:],
                      embeddings[start + FRAMES * PER_FRAME + 1:]])
    positions = [start + index for index in kept.tolist()]
    length = inputs["input_ids"].shape[1]
    return rows, list(range(start)) + positions + list(range(start + FRAMES * PER_FRAME, length))


def test_holitom_reads_the_attention_of_the_towers_last_layer():
    model, inputs = _model_and_video()
    video, _, attention = _video_features_and_last_layer(model, inputs)
    received = _pooled(model, attention.mean(dim=(1, 2)))  # mean over heads and queries, pooled like the tokens
    settings = HoliTom(retain_ratio=0.2, tau=0.5)
    torch.manual_seed(0)
    tokens, kept = holitom.reduce_in_place(video.float(), received, retain_ratio=0.2, tau=0.5)
    hidden, handle = _run_before_llm(model, inputs, settings)
    rows, positions = _expected_rows(model, inputs, video, kept, tokens)
    assert handle.stats.kept_positions == positions
    layer = model.model.language_model.layers[0]
    assert torch.allclose(hidden, layer.input_layernorm(rows), atol=1e-5)
    # Not what the substitute would give: the signal really changed the choice.
    torch.manual_seed(0)
    _, substitute_kept = holitom.reduce_in_place(video.float(), frame_query_attention(video), retain_ratio=0.2,
                                                 tau=0.5)
    assert substitute_kept.tolist() != kept.tolist()
    remove_framefusion(model)


def test_the_pooling_head_gives_the_probes_attention_and_siglips_pooled_vector(tmp_path):
    folder = _save_siglip_head(tmp_path / "siglip")
    head = load_pooling_head(str(folder), torch.float32, "cpu")
    hidden = torch.randn(3, 64, 32)
    attention, pooled = head(hidden)
    normed = head.post_layernorm(hidden)
    with torch.no_grad():
        assert torch.allclose(pooled, head.head(normed), atol=1e-6)  # transformers' own forward
    # The probe's attention over the patches, per head by hand from the attention's packed projections, then averaged.
    mha = head.head.attention
    width, heads = 32, mha.num_heads
    query = head.head.probe[0] @ mha.in_proj_weight[:width].T + mha.in_proj_bias[:width]  # [1, D]
    keys = normed @ mha.in_proj_weight[width:2 * width].T + mha.in_proj_bias[width:2 * width]  # [T, N, D]
    per_head = width // heads
    logits = torch.einsum("qhd,tnhd->thn", query.view(1, heads, per_head), keys.view(3, 64, heads, per_head))
    expected = torch.softmax(logits / math.sqrt(per_head), dim=-1).mean(dim=1)
    assert torch.allclose(attention, expected, atol=1e-6)


def test_fastvid_with_a_pooling_head_equals_the_official_inputs(tmp_path):
    folder = _save_siglip_head(tmp_path / "siglip")
    model, inputs = _model_and_video()
    video, last_layer_output, _ = _video_features_and_last_layer(model, inputs)
    head = load_pooling_head(str(folder), torch.float32, "cpu")
    with torch.no_grad():
        attention, pooled = head(last_layer_output)  # the original SigLIP's layernorm and head on the OV tower output
    settings = FastVID(retain_ratio=0.3, variant="parallel", pooling_head=str(folder))
    tokens, kept = fastvid.reduce(video.float(), _pooled(model, attention), pooled, retain_ratio=0.3)
    hidden, handle = _run_before_llm(model, inputs, settings)
    rows, positions = _expected_rows(model, inputs, video, kept, tokens)
    assert handle.stats.kept_positions == positions
    assert torch.allclose(hidden, model.model.language_model.layers[0].input_layernorm(rows), atol=1e-5)
    substitute_tokens, _ = fastvid.reduce(video.float(), frame_query_attention(video), video.float().mean(dim=1),
                                          retain_ratio=0.3)
    assert not torch.allclose(substitute_tokens, tokens, atol=1e-3)  # the head's signals changed the tokens
    remove_framefusion(model)


@pytest.mark.parametrize("use_head, width, message", [
    (False, 32, "has no attention-pooling head"),
    (True, 48, "is 48 wide, this model's vision tower 32"),
])
def test_a_head_that_cannot_serve_is_refused_when_applied(tmp_path, use_head, width, message):
    folder = _save_siglip_head(tmp_path / "siglip", width=width, use_head=use_head)
    model, _ = _model_and_video()
    with pytest.raises(ValueError, match=message):
        apply_framefusion(model, before_llm=FastVID(pooling_head=str(folder)))
    assert getattr(model.model.vision_tower.encoder.layers[-1], "__dict__").get("forward") is None  # nothing left


def test_a_head_whose_weights_are_missing_is_refused(tmp_path):
    folder = _save_siglip_head(tmp_path / "siglip", use_head=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_use_head": True}))
    with pytest.raises(ValueError, match="its weights lack"):
        compat.load_siglip_pooling_head(str(folder))


def test_a_pooling_head_is_refused_on_a_tower_that_is_not_siglip():
    class Qwen:
        name, fastvid_variant, siglip_tower = "qwen2-vl", "segmentwise", False

    with pytest.raises(ValueError, match="pooling_head is read on a SigLIP vision tower"):
        FastVID(pooling_head="google/siglip-so400m-patch14-384").resolved(Qwen())
    with pytest.raises(ValueError, match="pooling_head must name a SigLIP checkpoint"):
        FastVID(pooling_head=" ")


def _profiles_file(tmp_path: Path, fastvid_stage: dict) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"fastvid-head": {"description": "FastVID with SigLIP's head",
                                                                  "stages": [fastvid_stage]}}}))
    return path


def _ask(video, *extra):
    return run_cli("ask", video, "What happens?", "--model", "random:tiny-llava-onevision", "--frames", "8",
                   "--max-new-tokens", "2", "--json", *extra)


def test_ask_names_the_signals_and_a_cache_hit_carries_them(tmp_path):
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    head = _save_siglip_head(tmp_path / "siglip")
    profiles = _profiles_file(tmp_path, {"kind": "fastvid", "retain_ratio": 0.3, "pooling_head": str(head)})
    first, second = (printed_json(_ask(video, "--profile", "fastvid-head", "--profiles-file", profiles))
                     for _ in range(2))
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    stage = first["settings"]["stages"][0]
    assert stage["pooling_head"] == str(head)
    assert stage["signals"] == f"attention: SigLIP pooling head of {head}; frame vector: SigLIP pooling head of {head}"
    assert first["tokens"]["final"] < first["tokens"]["prompt"]
    assert (second["answer"], second["tokens"], second["settings"]) == (first["answer"], first["tokens"],
                                                                       first["settings"])
    holitom_run = printed_json(_ask(video, "--profile", "holitom"))
    assert holitom_run["cache"] == "miss"  # another stage reads the tower: its own encoding
    assert holitom_run["settings"]["stages"][0]["signals"].startswith("attention: the vision tower's, layer 2 of 2")


@pytest.mark.parametrize("profile, signals", [
    ("fastvid", "attention: the vision tower's last block, each frame's mean query over its merge units; "
                "frame vector: the frame's mean token"),
    ("holitom", "attention: the vision tower's last block, attention received by each merge unit"),
])
def test_on_qwen_each_method_names_the_last_block_signal_it_read(profile, signals):
    payload = printed_json(run_cli("ask", SAMPLE, "What happens?", "--model", "random:tiny-qwen2-vl", "--frames", "8",
                                   "--max-new-tokens", "2", "--json", "--profile", profile))
    assert payload["settings"]["stages"][0]["signals"] == signals


@pytest.mark.parametrize("model, head, words", [
    ("random:tiny-qwen2-vl", "google/siglip-so400m-patch14-384", ["pooling_head is read on a SigLIP vision tower"]),
    ("random:tiny-llava-onevision", "./no-such-siglip", ["pooling_head names no folder"]),
    ("random:tiny-llava-onevision", "google/siglip-so400m-patch14-384",  # the tests run with HF_HUB_OFFLINE=1
     ["pooling_head google/siglip-so400m-patch14-384 is not in the local Hugging Face cache"]),
    ("random:tiny-llava-onevision", "no such/siglip/head", ["pooling_head is neither a folder nor a hub id"]),
])
def test_a_pooling_head_that_cannot_apply_is_refused_before_loading(tmp_path, model, head, words):
    profiles = _profiles_file(tmp_path, {"kind": "fastvid", "pooling_head": head})
    result = run_cli("ask", SAMPLE, "What happens?", "--model", model, "--frames", "8", "--profile", "fastvid-head",
                     "--profiles-file", profiles)
    error_line(result, 2, *words, before_loading=True)


def test_with_frame_dedup_each_frame_takes_the_signals_of_the_frame_it_reuses():
    from framefusion.model_zoo import load_model
    from framefusion.pipeline.video_qa import VideoQA
    from framefusion.profiles.catalog import get_profile, parse_profiles_text
    from framefusion.video import VideoClip
    from videos import moving_square_frames

    stages = {"reads": [{"kind": "holitom"}], "dedup-reads": [{"kind": "frame-dedup"}, {"kind": "holitom"}]}
    document = {"profiles": {name: {"description": name, "stages": value} for name, value in stages.items()}}
    profiles = parse_profiles_text(yaml.safe_dump(document), "test")
    loaded = load_model("random:tiny-llava-onevision", dtype=torch.float32, device="cpu")
    qa = VideoQA(loaded.model, loaded.processor, model_name="tiny", profile=get_profile("baseline"))
    clip = VideoClip.from_frames(moving_square_frames(8, 112, still_frames=4), fps=4.0)
    every = qa.prepare_video(clip, profile=profiles["reads"])
    deduplicated = qa.prepare_video(clip, profile=profiles["dedup-reads"])
    assert (every.frames_encoded, deduplicated.frames_encoded) == (8, 5)
    assert deduplicated.vision_plan.attention.shape == every.vision_plan.attention.shape == (8, 16)
    assert torch.equal(deduplicated.vision_plan.attention, every.vision_plan.attention)


def _qwen25_with_windows():
    """Tiny Qwen2.5-VL whose 8x8-patch frames make 4x4 merge units in four 2x2-unit windows: the blocks see the units
    in window order, the LLM in raster order."""
    return tiny_models.qwen2_vl(num_layers=2, version="2.5"), tiny_models.qwen_video_inputs([(2, 8, 8)])


@pytest.mark.parametrize("received", [False, True], ids=["fastvid-mean-query", "holitom-received"])
def test_qwen_signals_come_from_the_last_block_in_token_order(received):
    """FastVID's: each frame's mean query over its merge units' mean keys; HoliTom's: the attention each unit receives
    (mean over heads, queries and its 4 patches). Both in the merged tokens' raster order, not the blocks' windows."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    from framefusion.runtime.tower_signals import PackedTowerSignalCapture

    model, inputs = _qwen25_with_windows()
    visual = model.model.visual
    seen = {}
    hooks = [visual.blocks[-1].attn.register_forward_pre_hook(
                 lambda module, args, kwargs: seen.update(hidden=args[0], rotary=kwargs["position_embeddings"]),
                 with_kwargs=True),
             visual.merger.register_forward_hook(lambda module, args, output: seen.update(merged=output))]
    with torch.no_grad(), PackedTowerSignalCapture(visual, received=received) as capture:
        output = visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    for hook in hooks:
        hook.remove()
    attention, heads = visual.blocks[-1].attn, visual.blocks[-1].attn.num_heads
    with torch.no_grad():
        queries, keys, _ = attention.qkv(seen["hidden"]).view(128, 3, heads, -1).unbind(1)
        queries, keys = apply_rotary_pos_emb_vision(queries, keys, *seen["rotary"])
    by_frame = []
    scale = 1 / math.sqrt(queries.shape[-1])
    for frame in range(2):  # 64 patches a temporal frame, 16 units of 4
        frame_queries, frame_keys = queries[frame * 64:(frame + 1) * 64], keys[frame * 64:(frame + 1) * 64]
        if received:
            weights = torch.softmax(torch.einsum("qhd,khd->hqk", frame_queries, frame_keys) * scale, dim=-1)
            by_frame.append(weights.mean(dim=(0, 1)).view(16, 4).mean(dim=1))
        else:
            unit_keys = frame_keys.view(16, 4, heads, -1).mean(dim=1)
            logits = torch.einsum("hd,uhd->hu", frame_queries.mean(dim=0), unit_keys) * scale
            by_frame.append(torch.softmax(logits, dim=-1).mean(dim=0))
    in_block_order = torch.cat(by_frame)
    # The merged tokens' order, read off the tower's own output: its rows are the merger's, permuted back from windows.
    raster = torch.cdist(output.pooler_output, seen["merged"]).argmin(dim=1)
    assert raster.tolist() != list(range(32)) and sorted(raster.tolist()) == list(range(32))
    assert torch.allclose(capture.plan.attention, in_block_order[raster].view(2, 16), atol=1e-6)
    assert capture.plan.frame_vectors is None  # FastVID's Qwen vector is the frame's mean token


def test_fastvid_on_qwen_reduces_with_the_towers_signal():
    from framefusion.runtime.tower_signals import PackedTowerSignalCapture

    model, inputs = _qwen25_with_windows()
    with torch.no_grad(), PackedTowerSignalCapture(model.model.visual) as capture:
        features = model.model.get_video_features(inputs["pixel_values_videos"],
                                                  inputs["video_grid_thw"]).pooler_output
    video = torch.cat(features).float().view(2, 16, -1)
    settings = FastVID(retain_ratio=0.3)
    tokens, kept = fastvid.reduce_segmentwise(video, capture.plan.attention, video.mean(dim=1), retain_ratio=0.3)
    handle = apply_framefusion(model, merge=False, prune=False, before_llm=settings)
    with torch.no_grad():
        model(**inputs)
    start = len(tiny_models.TEXT_BEFORE) + 1  # after vision_start
    kept_video = [position - start for position in handle.stats.kept_positions if start <= position < start + 32]
    assert kept_video == kept.tolist()
    remove_framefusion(model)
