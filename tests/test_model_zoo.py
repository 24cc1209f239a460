"""The model zoo: tiny random checkpoints, real-shape random models, model names and loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framefusion.runtime.transformers_compat import processor_videos
from framefusion.errors import InputError, ModelLoadError
from framefusion.model_zoo import (
    SpecKind,
    build_tiny_checkpoint,
    estimate_memory_bytes,
    framefusion_cache_dir,
    list_aliases,
    list_random_models,
    list_shapes,
    load_model,
    load_shape,
    parse_model_spec,
    tiny_families,
)
from framefusion.model_zoo import loading, shapes
from framefusion.model_zoo.building import (
    count_parameters_on_meta,
    instantiate_random_model,
    make_config,
    make_tokenizer,
    tiny_blueprint,
)
from framefusion.model_zoo.kit import family_kit

from videos import moving_square_frames

FRAMES, SIDE = 8, 112
QUESTION = "What is happening in this video?"

# family -> (model class, video tokens for 8 frames of 112x112). Qwen: 2-frame temporal patches give
# 4 groups of 8x8 patches, merged 2x2 into 16 tokens each. LLaVA-OV: 8x8 patches pooled to 4x4 = 16
# tokens per frame, plus one newline token after the video.
EXPECTED = {
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", 4 * 16),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", 4 * 16),
    "llava-onevision": ("LlavaOnevisionForConditionalGeneration", 8 * 16 + 1),
}

# Config fields that must hold the id of a token, per family (ids as the tokenizer assigns them).
TOKEN_FIELDS = {
    "qwen2-vl": {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    },
    "llava-onevision": {"image_token_index": "<image>", "video_token_index": "<video>"},
}
TOKEN_FIELDS["qwen2.5-vl"] = TOKEN_FIELDS["qwen2-vl"]

# Model-card sizes on the hub, in billions of parameters.
PUBLISHED_SIZES = {
    "llava-onevision-qwen2-0.5b": 0.894,
    "llava-video-7b-qwen2": 8.03,
    "qwen2-vl-2b": 2.21,
    "qwen2-vl-7b": 8.29,
    "qwen2.5-vl-3b": 3.75,
    "qwen2.5-vl-7b": 8.29,
    # Named 0.8B; counted as transformers builds it (no multi-token-prediction head, which it does not load).
    "qwen3.5-0.8b": 0.85,
    # Published as 5.1B and 8B with their audio towers, which the shapes leave out (a video prompt never runs them).
    "gemma-4-e2b": 4.80,
    "gemma-4-e4b": 7.63,
}


def video_inputs(processor, frames: np.ndarray, fps: float = 4.0):
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    metadata = {"fps": fps, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}
    return processor(text=[prompt], videos=processor_videos(frames), video_metadata=[metadata], return_tensors="pt")


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family) for family in tiny_families()}


# ---------------------------------------------------------------- tiny checkpoints


def test_tiny_checkpoints_exist_for_the_families_checked_here():
    # The later families are covered, with their own layouts, by tests/test_families.py.
    assert set(EXPECTED) <= set(tiny_families())


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_tiny_checkpoint_is_in_the_standard_layout(tiny_checkpoints, family):
    files = {path.name for path in tiny_checkpoints[family].iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    } <= files
    size = sum(path.stat().st_size for path in tiny_checkpoints[family].iterdir())
    assert size < 5_000_000, "a tiny checkpoint should stay around a megabyte"


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_tiny_checkpoint_reloads_and_generates_from_video_frames(tiny_checkpoints, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_class, expected_video_tokens = EXPECTED[family]
    processor = AutoProcessor.from_pretrained(tiny_checkpoints[family])
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family], dtype=torch.float32).eval()
    assert type(model).__name__ == model_class
    assert model.config.get_text_config().num_hidden_layers == 8

    inputs = video_inputs(processor, moving_square_frames(FRAMES, SIDE))
    video_token_id = processor.tokenizer.video_token_id
    assert int((inputs["input_ids"] == video_token_id).sum()) == expected_video_tokens
    if "mm_token_type_ids" in inputs:  # Qwen: the processor marks video tokens with type 2
        assert int((inputs["mm_token_type_ids"] == 2).sum()) == expected_video_tokens

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert new_tokens.numel() == 4
    assert int(new_tokens.max()) < model.config.get_text_config().vocab_size
    assert isinstance(processor.decode(new_tokens), str)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_config_token_ids_are_the_tokenizer_ids(tiny_checkpoints, family):
    from transformers import AutoTokenizer

    config = json.loads((tiny_checkpoints[family] / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints[family])
    for field, token in TOKEN_FIELDS[family].items():
        assert config[field] == tokenizer.convert_tokens_to_ids(token), field
    assert config[next(f for f in TOKEN_FIELDS[family] if f.startswith("video"))] == tokenizer.video_token_id
    assert config["text_config"]["eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert config["text_config"]["vocab_size"] == len(tokenizer)


def test_chat_templates_follow_the_family_formats(tiny_checkpoints):
    from transformers import AutoProcessor

    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    qwen = AutoProcessor.from_pretrained(tiny_checkpoints["qwen2-vl"])
    llava = AutoProcessor.from_pretrained(tiny_checkpoints["llava-onevision"])
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert qwen.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == (
        system + "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert llava.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == (
        system + "<|im_start|>user\n<video>\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_same_seed_gives_same_weights_and_layers_follow_the_argument(tmp_path):
    def weights(folder: str, seed: int) -> dict[str, torch.Tensor]:
        directory = build_tiny_checkpoint("qwen2-vl", tmp_path / folder, num_hidden_layers=2, seed=seed)
        return load_file(directory / "model.safetensors")

    first, again, other = weights("a", seed=0), weights("b", seed=0), weights("c", seed=1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 2


def test_unknown_family_or_zero_layers_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="qwen2-vl"):
        build_tiny_checkpoint("gpt-vision", tmp_path)
    with pytest.raises(InputError, match="at least 1"):
        build_tiny_checkpoint("qwen2-vl", tmp_path, num_hidden_layers=0)


def test_random_weights_are_ordinary_scaled_numbers():
    blueprint = tiny_blueprint("llava-onevision", num_hidden_layers=2)
    config = make_config(blueprint, make_tokenizer(family_kit("llava-onevision")))
    model = instantiate_random_model(config, dtype=torch.float32, seed=3)
    for name, parameter in model.named_parameters():
        values = parameter.detach()
        assert torch.isfinite(values).all(), name
        nonzero = values[values != 0].abs()
        assert nonzero.numel() == 0 or nonzero.min() >= torch.finfo(torch.float32).tiny, f"denormal in {name}"
    norm = model.model.language_model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    up = model.model.language_model.layers[1].mlp.up_proj.weight.detach()  # (128, 64): uniform in +-1/sqrt(64)
    assert up.abs().max() <= 64**-0.5
    assert float(up.std()) == pytest.approx((3 * 64) ** -0.5, rel=0.1)
    assert not model.training


# ---------------------------------------------------------------- real shapes


def test_shipped_shapes_cover_the_published_models():
    assert set(list_shapes()) == set(PUBLISHED_SIZES)


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_shape_parameter_count_matches_the_published_size(name):
    shape = load_shape(name)
    config = make_config(shape.blueprint, make_tokenizer(family_kit(shape.family)))
    counted = count_parameters_on_meta(config)
    assert counted == shape.parameter_count
    assert counted / 1e9 == pytest.approx(PUBLISHED_SIZES[name], rel=0.05)


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "llava-video-7b-qwen2"])
def test_shape_config_keeps_its_vocabulary_and_uses_the_generated_token_ids(name):
    shape = load_shape(name)
    tokenizer = make_tokenizer(family_kit(shape.family))
    config = make_config(shape.blueprint, tokenizer)
    assert config.get_text_config().vocab_size == shape.config["text_config"]["vocab_size"] > len(tokenizer)
    for field, token in TOKEN_FIELDS[shape.family].items():
        assert getattr(config, field) == tokenizer.convert_tokens_to_ids(token), field
    assert config.get_text_config().hidden_size == shape.config["text_config"]["hidden_size"]


def test_too_large_shape_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(shapes, "available_memory_bytes", lambda device: 24 * 10**9)

    def never_built(*args, **kwargs):
        raise AssertionError("the model was built although it cannot fit")

    monkeypatch.setattr(shapes, "instantiate_random_model", never_built)
    with pytest.raises(InputError) as refusal:
        load_model("random:qwen2.5-vl-7b", dtype=torch.float32, device="cpu")
    message = str(refusal.value)
    assert "\n" not in message
    assert "GB" in message and "float32" in message
    assert "bfloat16" in message and "random:qwen2.5-vl-3b" in message and "GPU" in message


def test_memory_estimate_counts_weights_in_the_dtype_plus_a_margin():
    two_billion_float32 = estimate_memory_bytes(2 * 10**9, torch.float32)
    assert 8 * 10**9 < two_billion_float32 < 10.5 * 10**9
    assert estimate_memory_bytes(2 * 10**9, torch.bfloat16) < two_billion_float32 / 1.7


@pytest.mark.slow
def test_real_shape_model_builds_fast_and_generates(monkeypatch):
    monkeypatch.setenv("FRAMEFUSION_CACHE", "/nonexistent")  # real shapes never touch the cache
    loaded = load_model("random:llava-onevision-qwen2-0.5b", dtype=torch.float32, device="cpu")
    parameters = sum(p.numel() for p in loaded.model.parameters())
    assert parameters == load_shape("llava-onevision-qwen2-0.5b").parameter_count
    inputs = video_inputs(loaded.processor, moving_square_frames(2, SIDE))
    assert int((inputs["input_ids"] == loaded.processor.tokenizer.video_token_id).sum()) == 2 * 14 * 14 + 1
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 1


# ---------------------------------------------------------------- model names


@pytest.mark.parametrize(
    ("text", "kind", "target", "name"),
    [
        ("random:tiny-qwen2-vl", SpecKind.TINY, "qwen2-vl", "random:tiny-qwen2-vl"),
        (" Random:Tiny-LLaVA-OneVision ", SpecKind.TINY, "llava-onevision", "random:tiny-llava-onevision"),
        ("random:qwen2-vl-2b", SpecKind.SHAPE, "qwen2-vl-2b", "random:qwen2-vl-2b"),
        ("random:llava-onevision-0.5b", SpecKind.SHAPE, "llava-onevision-qwen2-0.5b", None),
        ("qwen2.5-vl-7b", SpecKind.HUB, "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        ("llava-video-7b-qwen2", SpecKind.HUB, "llava-hf/LLaVA-Video-7B-Qwen2-hf", "llava-hf/LLaVA-Video-7B-Qwen2-hf"),
        ("llava-onevision-0.5b", SpecKind.HUB, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", None),
        ("Qwen/Qwen2-VL-7B-Instruct", SpecKind.HUB, "Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        ("someone/my-finetune.v2", SpecKind.HUB, "someone/my-finetune.v2", "someone/my-finetune.v2"),
    ],
)
def test_good_model_names_parse(text, kind, target, name):
    spec = parse_model_spec(text)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.name == (name or (f"random:{target}" if kind is SpecKind.SHAPE else target))
    assert spec.is_random == (kind in (SpecKind.TINY, SpecKind.SHAPE))


def test_local_model_directory_parses_to_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("my-model", "qwen2-vl-2b"):  # a saved folder wins over the alias of the same name
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
        spec = parse_model_spec(folder)
        assert spec.kind is SpecKind.LOCAL
        assert spec.target == spec.name == str((tmp_path / folder).resolve())


@pytest.mark.parametrize(
    ("text", "expected_in_message"),
    [
        ("random:tiny-gpt4", ["random:tiny-qwen2-vl", "random:qwen2-vl-2b"]),
        ("random:llama-70b", ["random:tiny-llava-onevision", "random:qwen2.5-vl-7b"]),
        ("random:", ["random:tiny-qwen2.5-vl"]),
        ("", ["qwen2-vl-2b", "random:tiny-qwen2-vl"]),
        ("qwen", ["alias", "qwen2.5-vl-3b", "hub id"]),
        ("two words/x y", ["unknown model"]),
        ("./no/such/model", ["does not exist"]),
    ],
)
def test_bad_model_names_say_what_is_valid(text, expected_in_message):
    with pytest.raises(InputError) as error:
        parse_model_spec(text)
    message = str(error.value)
    assert "\n" not in message
    for expected in expected_in_message:
        assert expected in message


def test_existing_path_that_is_not_a_model_is_an_input_error(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    for path in (tmp_path, tmp_path / "clip.mp4"):
        with pytest.raises(InputError, match="no config.json"):
            parse_model_spec(str(path))
    with pytest.raises(InputError, match="no config.json"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


def test_listings_for_the_models_command():
    aliases = list_aliases()
    assert aliases["qwen2-vl-2b"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert aliases["llava-video-7b-qwen2"] == "llava-hf/LLaVA-Video-7B-Qwen2-hf"
    randoms = {info.spec: info for info in list_random_models()}
    assert {f"random:tiny-{family}" for family in tiny_families()} | {f"random:{s}" for s in list_shapes()} == set(
        randoms
    )
    assert randoms["random:qwen2-vl-2b"].parameter_count == 2_208_985_600
    assert "Qwen/Qwen2-VL-2B-Instruct" in randoms["random:qwen2-vl-2b"].description
    for spec_text in randoms:
        assert parse_model_spec(spec_text).is_random


# ---------------------------------------------------------------- loading


def test_tiny_model_loads_from_the_cache_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEFUSION_CACHE", str(tmp_path))
    loaded = load_model("random:tiny-qwen2.5-vl", dtype=torch.float32, device="cpu")
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not loaded.model.training
    assert loaded.name == "random:tiny-qwen2.5-vl"
    assert loaded.spec.kind is SpecKind.TINY
    assert loaded.processor.tokenizer.video_token_id == loaded.model.config.video_token_id
    built = list((tmp_path / "random").iterdir())
    assert len(built) == 1 and not built[0].name.startswith("."), "no half-built folder may remain"

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached checkpoint should be reused")

    monkeypatch.setattr(loading, "build_tiny_checkpoint", no_rebuild)
    again = load_model("random:tiny-qwen2.5-vl", dtype=torch.float32, device="cpu")
    assert again.model.config.video_token_id == loaded.model.config.video_token_id


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMEFUSION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert framefusion_cache_dir() == tmp_path / "xdg" / "framefusion"
    monkeypatch.setenv("FRAMEFUSION_CACHE", str(tmp_path / "ff"))
    assert framefusion_cache_dir() == tmp_path / "ff"


def test_unwritable_cache_is_a_load_error_naming_the_setting(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FRAMEFUSION_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ModelLoadError, match="FRAMEFUSION_CACHE"):
        load_model("random:tiny-qwen2-vl", dtype=torch.float32, device="cpu")


def test_revision_is_for_hub_models_only():
    with pytest.raises(InputError, match="hub models only"):
        load_model("random:tiny-qwen2-vl", dtype=torch.float32, device="cpu", revision="main")


def test_uncached_hub_model_while_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_model("framefusion-tests/never-downloaded-model", dtype=torch.float32, device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "framefusion-tests/never-downloaded-model is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message and "local model directory" in message and "random:tiny-" in message


def _hub_error(error_class: type[Exception], message: str) -> Exception:
    """A huggingface_hub HTTP error without an HTTP response, wrapped like transformers wraps it."""
    inner = error_class.__new__(error_class)
    Exception.__init__(inner, message)
    outer = OSError("transformers could not get the files")
    outer.__cause__ = inner
    return outer


def test_hub_failures_become_one_line_advice():
    from huggingface_hub import errors

    spec = parse_model_spec("Qwen/Qwen2-VL-2B-Instruct")
    gated = loading.explain_load_failure(_hub_error(errors.GatedRepoError, "403"), spec, None)
    assert "gated" in gated and "hf auth login" in gated and "licence" in gated
    missing = loading.explain_load_failure(_hub_error(errors.RepositoryNotFoundError, "404"), spec, None)
    assert "not found" in missing and "check the name" in missing
    revision = loading.explain_load_failure(_hub_error(errors.RevisionNotFoundError, "404"), spec, "v9")
    assert "revision 'v9' does not exist" in revision
    other = loading.explain_load_failure(RuntimeError("disk full\nmore detail"), spec, None)
    assert other == "could not load Qwen/Qwen2-VL-2B-Instruct: disk full"
