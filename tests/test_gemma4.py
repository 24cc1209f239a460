"""Gemma 4 (random:tiny-gemma4): one run of video tokens per frame, on a language model of sliding-window and global
attention layers with per-layer inputs, whose last layers reuse keys and values stored by earlier ones.

The tiny stack (8 layers): global attention at 1, 4 and 7, the rest sliding (window 48); layers 3 and 4 store keys and
values that 5, 6 and 7 reuse. FrameFusion's steps end before layer 3, the prune runs after layer 1 (the only global
layer before), and decoding after a reduced prefill sees each sliding layer's window in the prompt's original positions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_check import assert_cached_equals_recomputed, generate_recording_prune, recompute_without_cache
from cli_checks import printed_json, run_cli
from framefusion import EVS, InnerMerge, apply_framefusion, remove_framefusion
from framefusion.families import family_by_name, family_for
from framefusion.families.base import VideoInputs, video_token_runs
from framefusion.families.gemma4 import memory
from framefusion.families.gemma4.layers import FULL, REUSE, SLIDING, STORE, Gemma4Layers, kv_sharing, text_layout
from framefusion.model_zoo.building import fill_random_weights
from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.transformers_compat import processor_videos
from test_families import loaded, processor_inputs

FAMILY = "gemma4"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
FRAMES, TOKENS_PER_FRAME = 8, 64  # 112x112 frames: 16x16 patches of 7 pixels, pooled 2x2
STEPS_END = 3  # the first layer that stores keys and values for the KV-sharing layers
STRICT_SIMILARITY = 0.99  # merging finds almost nothing at layer 0 and finishes: the prune does the work


def text_config(model):
    return model.config.get_text_config()


def layers_of(model):
    return list(model.model.language_model.layers)


# --- the checkpoint and its layout --------------------------------------------------------------------------------
def test_the_tiny_checkpoint_keeps_the_hybrid_layout():
    model, processor = loaded(FAMILY)
    config = text_config(model)
    kinds, sharing = text_layout(config)
    assert kinds == [SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL]
    assert sharing == [None, None, None, STORE, STORE, REUSE, REUSE, REUSE]
    # The sharing is transformers' own: the storing and reusing attentions say so themselves.
    for layer, mode in zip(layers_of(model), sharing):
        assert layer.self_attn.is_kv_shared_layer == (mode == REUSE)
        assert layer.self_attn.store_full_length_kv == (mode == STORE)
        assert (getattr(layer.self_attn, "k_proj", None) is None) == (mode == REUSE)
        assert layer.hidden_size_per_layer_input > 0 and hasattr(layer, "per_layer_input_gate")
    # Global layers have wider heads, as in the published models; the window is shorter than a prompt with a video.
    assert layers_of(model)[1].self_attn.head_dim > layers_of(model)[0].self_attn.head_dim
    assert config.sliding_window < processor_inputs(processor)["input_ids"].shape[1]
    assert Gemma4Layers(layers_of(model), config).steps_end(layers_of(model)) == STEPS_END


def test_kv_sharing_follows_transformers_rule_for_any_depth():
    """The last `num_kv_shared_layers` reuse; the last earlier layer of each type stores (also without sharing)."""
    kinds = [SLIDING] * 4 + [FULL]
    assert kv_sharing(kinds * 7, 20)[12:16] == [None, STORE, STORE, REUSE]  # E2B: 35 layers, 15 with keys of their own
    assert kv_sharing(kinds, 0) == [None, None, None, STORE, STORE]
    assert kv_sharing(kinds, 5) == [REUSE] * 5


@pytest.mark.parametrize(("shape", "steps_end", "global_layers_before"), [("gemma-4-e2b", 13, [4, 9]),
                                                                         ("gemma-4-e4b", 22, [5, 11, 17])])
def test_the_published_models_end_the_steps_before_their_shared_layers(shape, steps_end, global_layers_before):
    from framefusion.model_zoo.shapes import load_shape

    text = load_shape(shape).config["text_config"]
    modes = kv_sharing(text["layer_types"], text["num_kv_shared_layers"])
    assert next(index for index, mode in enumerate(modes) if mode) == steps_end
    assert [index for index, kind in enumerate(text["layer_types"][:steps_end]) if kind == FULL] == global_layers_before


def test_the_family_is_found_and_every_frame_is_one_run_of_its_tokens():
    model, processor = loaded(FAMILY)
    family = family_for(model)
    assert family is family_by_name(FAMILY)
    inputs = processor_inputs(processor)
    input_ids = inputs["input_ids"][0]
    is_video = input_ids == family.video_token_id(model)
    runs = video_token_runs(is_video)
    assert len(runs) == FRAMES and all(end - start == TOKENS_PER_FRAME for start, end in runs)
    types = family.patch_types(model, input_ids, VideoInputs())
    assert torch.equal(types[is_video], torch.arange(FRAMES * TOKENS_PER_FRAME) % TOKENS_PER_FRAME)
    assert bool((types[~is_video] == -1).all())
    text_only = processor_inputs(processor, content=(), with_video=False)["input_ids"][0]
    assert family.patch_types(model, text_only, VideoInputs()) is None


def test_two_videos_in_one_prompt_get_their_own_patch_types():
    model, _ = loaded(FAMILY)
    family = family_by_name(FAMILY)
    video, text = family.video_token_id(model), 1
    frame = [video] * 4
    label = [text] * 5
    input_ids = torch.tensor([text] + frame + label + frame + [text] * 40 + frame + label + frame + [text])
    types = family.patch_types(model, input_ids, VideoInputs())
    assert types[input_ids == video].tolist() == [0, 1, 2, 3] * 2 + [4, 5, 6, 7] * 2


# --- FrameFusion inside the stack ----------------------------------------------------------------------------------
def test_cost_one_is_bit_identical_and_remove_restores_it():
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    with torch.no_grad():
        baseline = model(**inputs).logits
    handle = apply_framefusion(model, cost=1.0)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, baseline)
    assert handle.stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * len(layers_of(model))
    remove_framefusion(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, baseline)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generation_at_cost_one_equals_the_unpatched_model(attn):
    """Decoding steps run the KV-reusing layers, which keep no cache of their own (transformers 5.25 gives them a
    placeholder without a length): the decode-mask cut must leave them alone."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                    return_dict_in_generate=True)
    baseline = model.generate(**inputs, **settings)
    apply_framefusion(model, cost=1.0)
    patched = model.generate(**inputs, **settings)
    remove_framefusion(model)
    assert torch.equal(patched.sequences, baseline.sequences)
    assert all(torch.equal(a, b) for a, b in zip(patched.logits, baseline.logits))


def test_the_prune_runs_at_the_global_layer_before_the_kv_sharing_layers():
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    with torch.no_grad():
        model(**inputs)
    stats = handle.stats
    assert [(step.kind, step.layer) for step in stats.steps if step.kind == "prune"] == [("prune", 1)]
    assert all(step.layer < STEPS_END for step in stats.steps)
    counts = stats.tokens_per_layer
    assert counts[2] < counts[1] and len(set(counts[2:])) == 1
    assert stats.achieved_cost == pytest.approx(0.3, abs=0.03)
    remove_framefusion(model)


def test_no_step_runs_from_the_first_layer_that_shares_keys_and_values():
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    # Prune-only after 4 dense layers: the first global layer from there is layer 4, which stores shared keys: no prune.
    handle = apply_framefusion(model, cost=0.5, merge=False, dense_layers=4)
    with torch.no_grad():
        model(**inputs)
    assert handle.stats.steps == [] and handle.stats.achieved_cost == 1.0
    # HoliTom's inner merge asked for at layer 6 runs before layer 2 instead, rated by global layer 1.
    handle = apply_framefusion(model, merge=False, prune=False, inner_merge=InnerMerge(layer=6, ratio=0.5))
    with torch.no_grad():
        model(**inputs)
    assert [(step.kind, step.layer) for step in handle.stats.steps] == [("inner-merge", 2)]
    remove_framefusion(model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("similarity", [None, STRICT_SIMILARITY], ids=["merge", "merge-then-prune"])
def test_generation_after_a_reduced_prefill_equals_generation_on_the_reduced_sequence(attn, similarity):
    """Cached greedy decoding after the reduced prefill against one uncached forward over prompt and generated tokens
    with the same reduction (the prune's choice frozen), whose sliding masks are the prefill's, cut to the kept tokens
    in their original positions. Tokens were removed inside the last window, so the window's placement matters."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=similarity)
    with torch.no_grad():
        cache = compat.output_cache(model(**inputs, use_cache=True))
    stats = handle.stats
    window = text_config(model).sliding_window
    assert stats.reduced and set(range(stats.prompt_tokens - window, stats.prompt_tokens)) - set(stats.kept_positions)
    if similarity is not None:
        assert any(step.kind == "prune" for step in stats.steps)
    # Every layer with keys of its own has seen its tokens; the KV-reusing layers keep none.
    for index, mode in enumerate(text_layout(text_config(model))[1]):
        assert compat.keeps_own_cache(cache, index) == (mode != REUSE)
        if mode != REUSE:
            assert compat.cached_length(cache, index) == stats.tokens_per_layer[index]
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=4, min_new_tokens=4)
    remove_framefusion(model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_follow_up_turn_continues_the_reduced_cache(attn):
    """A second turn (as `framefusion chat` sends it: the new tokens on the first turn's cache) against one uncached
    forward over the whole conversation with the same reduction. Its KV-reusing layers compute only the last token:
    transformers slices their inputs, not their position ids. The logits agree within 1e-4 (the unreduced model's own
    cached and uncached forwards differ by up to ~5e-6 here)."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    first, prune_keep = generate_recording_prune(model, inputs, max_new_tokens=3, min_new_tokens=3)
    turn = processor.tokenizer("<turn|>\n<|turn>user\nAnd then what happens in the video?<turn|>\n<|turn>model\n",
                               add_special_tokens=False, return_tensors="pt").input_ids
    conversation = torch.cat([first.sequences, turn], dim=1)
    prompt_length = inputs["input_ids"].shape[1]
    token_types = torch.cat([inputs["mm_token_type_ids"],
                             torch.zeros(1, conversation.shape[1] - prompt_length, dtype=torch.long)], dim=1)
    uncached = conversation[:, first.sequences.shape[1] - 1:]
    second = model.generate(input_ids=uncached, attention_mask=torch.ones_like(conversation),
                            mm_token_type_ids=token_types, **compat.cache_kwargs(compat.output_cache(first)),
                            max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    answer = second.sequences[0, uncached.shape[1]:].tolist()
    for step in range(len(answer)):
        after_prompt = conversation[0, prompt_length:].tolist() + answer[:step]
        expected = recompute_without_cache(model, inputs, after_prompt, prune_keep)
        assert torch.allclose(second.logits[step][0], expected, atol=1e-4), step
        assert int(expected.argmax()) == answer[step], step
    remove_framefusion(model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_sliding_layer_after_the_prune_sees_its_window_in_original_positions(attn):
    """Layer 2 (sliding) runs on the tokens the prune at layer 1 kept: its mask is the prefill's, cut to those tokens,
    so a token sees the kept tokens at most `sliding_window - 1` original positions behind it, not that many rows."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    seen = {}

    def record(module, args, kwargs):
        seen["mask"], seen["positions"] = kwargs["attention_mask"], handle.runtime.prefill.positions.clone()

    hook = layers_of(model)[2].self_attn.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
        remove_framefusion(model)
    positions, mask = seen["positions"], seen["mask"][0, 0]
    assert positions.numel() == handle.stats.tokens_per_layer[2] < inputs["input_ids"].shape[1]
    visible = mask if mask.dtype == torch.bool else mask == 0
    window = text_config(model).sliding_window
    distance = positions[:, None] - positions[None, :]
    assert torch.equal(visible, (distance >= 0) & (distance < window))
    assert bool(((distance >= window) & (distance < 2 * window)).any())  # rows apart: it is the positions that count


@pytest.fixture
def bidirectional_vision(request):
    """The tiny model as the 26B-A4B and 31B models attend: the tokens of each frame see each other both ways in the
    sliding layers (`use_bidirectional_attention="vision"`)."""
    model, processor = loaded(FAMILY, request.param)
    config = text_config(model)
    config.use_bidirectional_attention = "vision"
    try:
        yield model, processor
    finally:
        config.use_bidirectional_attention = None


@pytest.mark.parametrize("bidirectional_vision", ["sdpa", "eager"], indirect=True)
def test_generation_after_a_reduced_prefill_with_bidirectional_frames(bidirectional_vision):
    model, processor = bidirectional_vision
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=4, min_new_tokens=4)
    assert any(step.kind == "prune" for step in handle.stats.steps)
    remove_framefusion(model)


def tokens_on_the_reduced_sequence(model, inputs: dict, kept: list[int], new_tokens: int, attn: str) -> list[int]:
    """Greedy tokens of the model given only the kept tokens (their embeddings and per-layer inputs, at their original
    positions, masks in those positions), recomputed without cache at every step: the model given the reduced sequence
    directly, built without FrameFusion."""
    captured = {}
    text_model = model.model.language_model
    handle = text_model.register_forward_pre_hook(lambda module, args, kwargs: captured.update(kwargs),
                                                  with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    keep = torch.tensor(kept)
    embeddings, per_layer = captured["inputs_embeds"][:, keep], captured["per_layer_inputs"][:, keep]
    positions = keep.clone()
    window, cap = text_config(model).sliding_window, text_config(model).final_logit_softcapping
    generated: list[int] = []
    for _ in range(new_tokens):
        queries = positions[:, None]
        visible = positions[None, :] <= queries
        masks = {FULL: visible, SLIDING: visible & (positions[None, :] > queries - window)}
        if attn == "eager":
            masks = {kind: torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
                     for kind, mask in masks.items()}
        with torch.no_grad():
            hidden = text_model(inputs_embeds=embeddings, per_layer_inputs=per_layer, position_ids=positions[None],
                                attention_mask={kind: mask[None, None] for kind, mask in masks.items()},
                                use_cache=False).last_hidden_state
            logits = model.lm_head(hidden[0, -1])
        token = int((torch.tanh(logits / cap) * cap).argmax())
        generated.append(token)
        ids = torch.tensor([[token]])
        with torch.no_grad():
            embeddings = torch.cat([embeddings, text_model.embed_tokens(ids)], dim=1)
            per_layer = torch.cat([per_layer, text_model.get_per_layer_inputs(ids, None)], dim=1)
        positions = torch.cat([positions, positions.new_tensor([int(inputs["input_ids"].shape[1]) + len(generated) - 1])])
    return generated


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tokens_removed_before_the_stack_decode_as_the_model_given_the_kept_tokens(attn):
    """EVS drops video tokens before layer 0: generation must equal the model run directly on the kept tokens (their
    per-layer inputs, original positions and sliding windows), built here without any FrameFusion code."""
    model, processor = loaded(FAMILY, attn)
    inputs = processor_inputs(processor)
    handle = apply_framefusion(model, merge=False, prune=False, before_llm=EVS(0.5))
    output = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    kept = handle.stats.kept_positions
    remove_framefusion(model)
    assert len(kept) < inputs["input_ids"].shape[1]
    expected = tokens_on_the_reduced_sequence(model, inputs, kept, 6, attn)
    assert output[0, inputs["input_ids"].shape[1]:].tolist() == expected


# --- the layer anatomy ----------------------------------------------------------------------------------------------
def layer_arguments(text_model, **forward_kwargs) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states, keyword arguments) each decoder layer received in one forward of the text model."""
    seen = []

    def record(module, args, kwargs):
        seen.append((args[0], dict(kwargs, per_layer_input=args[1])))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in text_model.layers]
    with torch.no_grad():
        text_model(**forward_kwargs)
    for handle in handles:
        handle.remove()
    return seen


def small_text_model(**overrides):
    from transformers import Gemma4TextConfig, Gemma4TextModel

    settings = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=4,
                    layer_types=[SLIDING, FULL, SLIDING, FULL], hidden_size_per_layer_input=4,
                    vocab_size_per_layer_input=64)
    model = Gemma4TextModel(Gemma4TextConfig(**{**settings, **overrides})).eval()
    fill_random_weights(model, seed=1)
    return model


@pytest.mark.parametrize("variant", ["tiny-gemma4", "moe-and-shared-keys-values", "no-per-layer-inputs"])
def test_the_two_halves_equal_the_layer(variant):
    """attention_half then feed_forward_half (the runtime's split around a step) is the layer's own forward, for the
    tiny checkpoint and for the 26B-A4B/31B kind of layer (MoE block, keys as values, no per-layer inputs)."""
    if variant == "tiny-gemma4":
        text_model = loaded(FAMILY)[0].model.language_model
    elif variant == "moe-and-shared-keys-values":
        text_model = small_text_model(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=8,
                                      attention_k_eq_v=True, num_global_key_value_heads=1,
                                      hidden_size_per_layer_input=0)
    else:
        text_model = small_text_model(hidden_size_per_layer_input=0, num_kv_shared_layers=2)
    layers = list(text_model.layers)
    scalars = [layer.layer_scalar.clone() for layer in layers]
    for index, layer in enumerate(layers):
        layer.layer_scalar.fill_(0.5 + 0.1 * index)  # a real checkpoint's layer scalars are not 1
    try:
        anatomy = Gemma4Layers(layers, text_model.config)
        ids = torch.randint(0, 60, (1, 12))
        for layer, (hidden, arguments) in zip(layers, layer_arguments(text_model, input_ids=ids, use_cache=False)):
            assert anatomy.problem(layer) is None
            with torch.no_grad():
                expected = layer(hidden, **arguments)
                split = anatomy.feed_forward_half(layer, anatomy.attention_half(layer, hidden, arguments), arguments)
            assert torch.equal(split, expected)
    finally:
        for layer, scalar in zip(layers, scalars):
            layer.layer_scalar.copy_(scalar)


def test_per_layer_inputs_follow_the_kept_tokens():
    """After a step, the second half of the layer gets the per-layer input rows of exactly the tokens present (the
    layers without a step are covered by the EVS test above, against the model given the kept tokens)."""
    model, processor = loaded(FAMILY)
    inputs = processor_inputs(processor)
    full = {}

    def keep_full_rows(index):
        def hook(module, args, kwargs):
            full[index] = args[1]  # what the text model passes every layer: one row per prompt token
        return hook

    hooks = [layer.register_forward_pre_hook(keep_full_rows(index), with_kwargs=True)
             for index, layer in enumerate(layers_of(model))]
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=STRICT_SIMILARITY)
    anatomy = handle.runtime.anatomy
    seen = []
    original = anatomy.feed_forward_half

    def recording(layer, hidden_states, arguments):
        seen.append((anatomy.index(layer), handle.runtime.prefill.positions.clone(), arguments["per_layer_input"]))
        return original(layer, hidden_states, arguments)

    anatomy.feed_forward_half = recording
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
        remove_framefusion(model)
    assert [index for index, _, _ in seen] == [0, 1]  # a step after layer 0's attention (merge), then layer 1's (prune)
    assert seen[-1][1].numel() < inputs["input_ids"].shape[1]
    for index, positions, rows in seen:
        assert torch.equal(rows, full[index][:, positions])


# --- frames, the CLI, memory ----------------------------------------------------------------------------------------
def test_features_of_the_encoded_frames_put_back_equal_encoding_every_frame():
    model, processor = loaded(FAMILY)
    family = family_by_name(FAMILY)
    frames = np.random.default_rng(0).integers(0, 255, (FRAMES, 112, 112, 3), dtype=np.uint8)
    frames[3] = frames[2]
    metadata = {"fps": 4.0, "total_num_frames": FRAMES, "frames_indices": list(range(FRAMES))}
    video_inputs = {key: value for key, value in processor(
        text=["<|video|>"], videos=processor_videos(frames), video_metadata=[metadata], do_sample_frames=False,
        return_tensors="pt").items() if key not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        _, every = family.encode_video(model, video_inputs)
        _, some = family.encode_frames(model, video_inputs, [0, 1, 2, 4, 5, 6, 7], [0, 1, 2, 2, 4, 5, 6, 7])
    assert set(some.keys()) == set(every.keys())
    for name, expected in every.items():
        got = some[name]
        for want, have in zip(expected if isinstance(expected, tuple) else [expected],
                              got if isinstance(got, tuple) else [got]):
            assert torch.equal(want, have), name


def invoke(*arguments: str):
    """The CLI, checking that nothing was warned as deprecated or printed as such on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli(*arguments)
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    assert "FutureWarning" not in result.stderr and "DeprecationWarning" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize("profile", ["baseline", "evs", "framefusion"])
def test_ask_answers_under_every_profile(profile):
    result = invoke("ask", str(SAMPLE), "What happens?", "--model", f"random:tiny-{FAMILY}", "--frames", "8",
                    "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--profile", profile, "--json")
    payload = printed_json(result)
    tokens = payload["tokens"]
    assert payload["profile"] == profile and 1 <= payload["new_tokens"] <= 4 and tokens["visual"] > 0
    where = {stage["where"] for stage in tokens["stages"]}
    if profile == "baseline":
        assert tokens["final"] == tokens["prompt"] and not tokens["stages"]
    elif profile == "evs":
        assert where == {"before_llm"} and tokens["final"] < tokens["prompt"]
    else:
        assert where & {"before_attention", "after_attention"} and tokens["final"] < tokens["prompt"]
        assert all(stage["layer"] < STEPS_END for stage in tokens["stages"] if stage["layer"] is not None)


def test_models_lists_the_family_its_aliases_and_shapes():
    listing = printed_json(invoke("models", "--json"))
    assert FAMILY in {item["family"] for item in listing["families"]}
    assert listing["aliases"]["gemma-4-e2b"] == "google/gemma-4-E2B-it"
    random_models = {item["spec"] for item in listing["random"] if item["family"] == FAMILY}
    assert random_models == {"random:gemma-4-e2b", "random:gemma-4-e4b", f"random:tiny-{FAMILY}"}


@pytest.mark.parametrize("size", [(112, 112), (1280, 720), (720, 1280), (640, 480), (2000, 100)])
def test_tokens_per_frame_from_the_settings_match_the_processor(size):
    from transformers import Gemma4VideoProcessor

    settings = {"patch_size": 16, "pooling_kernel_size": 3, "max_soft_tokens": 70}
    width, height = size
    video = torch.zeros(1, 3, height, width, dtype=torch.uint8)
    processed = Gemma4VideoProcessor(**settings, do_sample_frames=False)(videos=[video], return_tensors="pt")
    assert memory.tokens_per_frame(settings, size) == int(processed["num_soft_tokens_per_video"][0])
    assert memory.tokens_per_frame(settings, None) == 70
