"""Each private transformers convention framefusion relies on, checked against the installed release.

When one of these fails after a transformers upgrade, fix framefusion/runtime/transformers_compat.py (and only it).
"""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import transformers
from framefusion.runtime import transformers_compat as compat
import tiny_models

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_release_is_inside_the_declared_and_tested_range():
    declared = next(requirement for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"] if requirement.startswith("transformers"))
    assert SpecifierSet(declared.removeprefix("transformers")) == SpecifierSet(compat.TESTED_TRANSFORMERS)
    assert Version(transformers.__version__) in SpecifierSet(compat.TESTED_TRANSFORMERS)
    assert compat.LOWEST_TRANSFORMERS in (ROOT / "README.md").read_text()


def test_the_cache_keyword_is_what_decoder_layers_and_generate_take():
    from transformers import GenerationMixin
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    keyword = compat.cache_keyword()
    for function in (modeling_qwen2_vl.Qwen2VLDecoderLayer.forward, modeling_qwen2_vl.Qwen2VLTextModel.forward,
                     modeling_qwen2_vl.Qwen2VLForConditionalGeneration.forward):
        assert keyword in inspect.signature(function).parameters, function.__qualname__
    # generate() takes the cache through **kwargs (and forwards it to the model under the same name).
    assert "kwargs" in inspect.signature(GenerationMixin.generate).parameters


def test_the_cache_is_found_under_either_keyword_and_read_back_from_outputs():
    cache = object()
    assert compat.cache_from_kwargs({"cache": cache}) is cache
    assert compat.cache_from_kwargs({"past_key_values": cache, "cache": None}) is cache
    assert compat.cache_from_kwargs({"use_cache": True}) is None
    assert compat.cache_kwargs(cache) == {compat.cache_keyword(): cache}

    model = tiny_models.qwen2_vl()
    inputs = tiny_models.qwen_video_inputs([(2, 4, 4)])
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
    returned = compat.output_cache(output)
    assert returned is not None and compat.cached_length(returned) == inputs["input_ids"].shape[1]
    # A continuation is recognised from the cache itself, whatever the keyword.
    assert compat.is_continuation(compat.cache_kwargs(returned))
    assert not compat.is_continuation({})


def test_generate_passes_a_filled_cache_to_decoding_steps_and_an_empty_one_to_the_prefill():
    # The runtime tells prefill from decoding by the length of the cache it finds in the forward's kwargs.
    model = tiny_models.qwen2_vl()
    inputs = tiny_models.qwen_video_inputs([(2, 4, 4)])
    seen: list[bool] = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(compat.is_continuation(kwargs)), with_kwargs=True)
    try:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    assert seen == [False, True, True]


def test_pre_encoded_vision_features_are_accepted_by_generate():
    from transformers.generation import utils as generation_utils

    assert compat.ENCODER_OUTPUTS_KEYWORD in inspect.getsource(generation_utils)
    model = tiny_models.qwen2_vl()
    inputs = tiny_models.qwen_video_inputs([(2, 4, 4)])
    features = model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                        video_grid_thw=inputs["video_grid_thw"], return_dict=True)
    without_pixels = {key: value for key, value in inputs.items() if key != "pixel_values_videos"}
    with torch.no_grad():
        direct = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        pre_encoded = model.generate(**without_pixels, **compat.encoder_outputs_kwargs("video", features),
                                     max_new_tokens=3, do_sample=False)
    assert torch.equal(direct, pre_encoded)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_attention_backend_is_read_from_the_config(attn):
    assert compat.attention_implementation(tiny_models.qwen2_vl(attn=attn).config) == attn


def test_accelerate_wrappers_are_recognised_by_their_attributes():
    layer = torch.nn.Linear(2, 2)
    assert not compat.keeps_accelerate_wrapper(layer)
    layer._hf_hook = object()
    layer._old_forward = layer.forward
    assert compat.keeps_accelerate_wrapper(layer)


def test_every_family_processor_takes_one_list_of_videos_per_prompt():
    from framefusion.model_zoo import load_model
    from framefusion.families import supported_families

    frames = torch.randint(0, 255, (4, 56, 56, 3), dtype=torch.uint8).numpy()
    metadata = {"fps": 2.0, "total_num_frames": 4, "frames_indices": list(range(4))}
    for family in supported_families():
        processor = load_model(f"random:tiny-{family}", dtype=torch.float32, device="cpu").processor
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], videos=compat.processor_videos(frames), video_metadata=[metadata],
                           do_sample_frames=False, return_tensors="pt")
        assert inputs["input_ids"].shape[0] == 1, family


def test_the_instance_methods_we_replace_exist_where_we_replace_them():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLTextModel

    rope_index = inspect.signature(getattr(Qwen2VLModel, compat.ROPE_INDEX_METHOD)).parameters
    assert {"input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask"} <= set(rope_index)
    model = tiny_models.qwen2_vl()
    inputs = tiny_models.qwen_video_inputs([(2, 4, 4)])
    with torch.no_grad():
        model(**inputs)
    assert getattr(model.model, compat.ROPE_DELTAS_ATTRIBUTE) is not None  # cached by the prefill for decoding
    for model_class in (Qwen2VLModel, Qwen3VLModel):
        assert "video_grid_thw" in inspect.signature(getattr(model_class, compat.VIDEO_FEATURES_METHOD)).parameters
    deepstack = inspect.signature(getattr(Qwen3VLTextModel, compat.DEEPSTACK_METHOD)).parameters
    assert list(deepstack)[1:] == ["hidden_states", "visual_pos_masks", "visual_embeds"]


def test_the_cache_keyword_stays_the_new_name_where_the_old_one_is_also_shown():
    # 5.25 exposes a deprecated keyword in signatures (deprecate_kwarg(expose_in_signature=True)): where both names
    # show, the newer one is the one to pass, or every call is a deprecation.
    from transformers import masking_utils

    parameters = inspect.signature(masking_utils.create_causal_mask).parameters
    shown = [name for name in ("cache", "past_key_values") if name in parameters]
    assert compat.cache_keyword() == shown[0]


def test_a_prefill_with_a_cache_is_never_read_as_packed_sequences():
    # 5.25's masks treat position ids that restart as packed sequences, but only without a cache and a 2-D mask.
    # Our prefills always carry a cache, and Qwen-VL positions of a video do restart per frame.
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask

    model = tiny_models.qwen2_vl(num_layers=1)
    config = model.config.get_text_config()
    config._attn_implementation = "eager"  # a materialised mask to compare
    embeddings = torch.zeros(1, 6, config.hidden_size)
    restarting = torch.tensor([[0, 1, 2, 0, 1, 2]])
    keywords = {"position_ids": restarting} if "position_ids" in compat.accepted_keywords(create_causal_mask) else {}
    mask = create_causal_mask(config=config, inputs_embeds=embeddings, attention_mask=torch.ones(1, 6, dtype=torch.long),
                              **compat.cache_kwargs(DynamicCache(config=config)), **keywords)
    causal = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    assert torch.equal(mask[0, 0] == 0, causal)


@pytest.mark.skipif("qwen3.5" not in __import__("framefusion.families").families.supported_families(),
                    reason="Qwen3.5 runs from transformers 5.25 (tests/test_hybrid_stacks.py checks the refusal before)")
def test_hybrid_layers_name_their_mixers_and_linear_caches_count_the_tokens_they_saw():
    """Qwen3.5's decoder layers hold either softmax attention or a linear-attention mixer under the names the runtime
    looks for; the mixer takes hidden states, the padding mask and the cache by keyword; its cache layer counts the
    tokens it has seen (what is_continuation and the per-layer checks read)."""
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextModel

    config = Qwen3_5TextConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8,
        linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"],
    )
    model = Qwen3_5TextModel(config).eval()
    linear, full = model.layers
    assert hasattr(linear, compat.LINEAR_ATTENTION_MODULE) and not hasattr(linear, compat.ATTENTION_MODULE)
    assert hasattr(full, compat.ATTENTION_MODULE) and not hasattr(full, compat.LINEAR_ATTENTION_MODULE)
    parameters = inspect.signature(getattr(linear, compat.LINEAR_ATTENTION_MODULE).forward).parameters
    assert {"hidden_states", "attention_mask", compat.cache_keyword()} <= set(parameters)
    input_ids = torch.arange(7)[None]
    with torch.no_grad():
        cache = compat.output_cache(model(input_ids=input_ids, use_cache=True))
    assert [compat.cached_length(cache, index) for index in range(2)] == [7, 7]
    assert compat.is_continuation(compat.cache_kwargs(cache))
