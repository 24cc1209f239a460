"""Reference rotary positions for Qwen2-VL / Qwen2.5-VL (framefusion.families.qwen_vl.positions), on tiny random
models.

The expected positions come from `expected_positions` below: Qwen's reference rule written as a plain loop
over tokens, independent of the module under test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

import tiny_models
from framefusion.errors import InputError
from framefusion.runtime.transformers_compat import cache_kwargs, output_cache
from framefusion.families.qwen_vl.positions import remove_reference_positions, restore_reference_positions

PAD_ID, IMAGE_PAD_ID, VIDEO_PAD_ID = tiny_models.TEXT["pad_token_id"], tiny_models.IMAGE_TOKEN, tiny_models.VIDEO_TOKEN
PATCH, MERGE, TEMPORAL_PATCH, TOKENS_PER_SECOND = 14, 2, 2, 2
PATCH_VALUES = 3 * TEMPORAL_PATCH * PATCH * PATCH  # one row of pixel_values: a flattened 3 x 2 x 14 x 14 patch


def tiny_qwen(version: str) -> torch.nn.Module:
    model = tiny_models.qwen2_vl(num_layers=2, version=version, tokens_per_second=TOKENS_PER_SECOND)
    model.generation_config.eos_token_id = None  # greedy decoding never stops early
    return model


def tiny_qwen2_vl() -> torch.nn.Module:
    return tiny_qwen("2")


def tiny_qwen2_5_vl() -> torch.nn.Module:
    return tiny_qwen("2.5")


BUILDERS = {"qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl}


@pytest.fixture(params=sorted(BUILDERS))
def family_and_model(request):
    return request.param, BUILDERS[request.param]()


# ----------------------------------------------------------------------------------------------------------
# Prompts built by hand: ("text", n), ("image", (t, h, w)), ("video", (t, h, w), seconds_per_temporal_group)


@dataclass
class Prompt:
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq], left padding
    mm_token_type_ids: torch.Tensor  # [batch, seq], 0 text, 1 image, 2 video
    image_grids: list = field(default_factory=list)
    video_grids: list = field(default_factory=list)
    video_seconds: list = field(default_factory=list)

    def grid_kwargs(self) -> dict:
        return dict(
            image_grid_thw=torch.tensor(self.image_grids) if self.image_grids else None,
            video_grid_thw=torch.tensor(self.video_grids) if self.video_grids else None,
        )

    def model_inputs(self, family: str) -> dict:
        """Everything the model's forward / generate take, as a processor would return it."""
        inputs = dict(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            mm_token_type_ids=self.mm_token_type_ids,
            **self.grid_kwargs(),
        )
        generator = torch.Generator().manual_seed(1)
        if self.image_grids:
            rows = sum(t * h * w for t, h, w in self.image_grids)
            inputs["pixel_values"] = torch.randn(rows, PATCH_VALUES, generator=generator)
        if self.video_grids:
            rows = sum(t * h * w for t, h, w in self.video_grids)
            inputs["pixel_values_videos"] = torch.randn(rows, PATCH_VALUES, generator=generator)
            if family == "qwen2_5_vl":
                inputs["second_per_grid_ts"] = torch.tensor(self.video_seconds)
        return inputs


def chunk_tokens(grid) -> int:
    t, h, w = grid
    return t * (h // MERGE) * (w // MERGE)


def build_prompt(*samples: list[tuple]) -> Prompt:
    """One sample per argument, left-padded to the longest."""
    generator = torch.Generator().manual_seed(0)
    rows, types, prompt = [], [], Prompt(torch.empty(0), torch.empty(0), torch.empty(0))
    for segments in samples:
        ids, kinds = [], []
        for segment in segments:
            if segment[0] == "text":
                ids += torch.randint(3, 100, (segment[1],), generator=generator).tolist()
                kinds += [0] * segment[1]
            elif segment[0] == "image":
                ids += [IMAGE_PAD_ID] * chunk_tokens(segment[1])
                kinds += [1] * chunk_tokens(segment[1])
                prompt.image_grids.append(list(segment[1]))
            else:
                ids += [VIDEO_PAD_ID] * chunk_tokens(segment[1])
                kinds += [2] * chunk_tokens(segment[1])
                prompt.video_grids.append(list(segment[1]))
                prompt.video_seconds.append(segment[2])
        rows.append(ids)
        types.append(kinds)
    length = max(len(row) for row in rows)
    prompt.input_ids = torch.tensor([[PAD_ID] * (length - len(row)) + row for row in rows])
    prompt.mm_token_type_ids = torch.tensor([[0] * (length - len(kind)) + kind for kind in types])
    prompt.attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return prompt


def expected_positions(prompt: Prompt, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen's reference rule, token by token. Returns positions [3, batch, seq] (padding 0) and deltas [batch, 1].

    Text: one position more than the previous token. A chunk starts at the current position; token
    (ti, hi, wi) of it sits at (start + int(ti * step), start + hi, start + wi); text resumes at the
    chunk's largest id + 1. step: 1 for Qwen2-VL; Qwen2.5-VL: tokens_per_second * seconds for videos, 0
    for images.
    """
    images = iter(prompt.image_grids)
    videos = iter(zip(prompt.video_grids, prompt.video_seconds))
    batch, length = prompt.input_ids.shape
    positions = [[[0] * length for _ in range(batch)] for _ in range(3)]
    deltas = []
    for b in range(batch):
        slots = [j for j in range(length) if prompt.attention_mask[b, j] == 1]
        kinds = [int(prompt.mm_token_type_ids[b, j]) for j in slots]
        current, highest, k = 0, -1, 0
        while k < len(slots):
            if kinds[k] == 0:
                for axis in range(3):
                    positions[axis][b][slots[k]] = current
                highest, current, k = current, current + 1, k + 1
                continue
            if kinds[k] == 1:
                (t, h, w), step = next(images), (1 if family == "qwen2_vl" else 0)
            else:
                (t, h, w), seconds = next(videos)
                step = 1 if family == "qwen2_vl" else TOKENS_PER_SECOND * seconds
            start = current
            for ti in range(t):
                for hi in range(h // MERGE):
                    for wi in range(w // MERGE):
                        triple = (start + int(ti * step), start + hi, start + wi)
                        for axis in range(3):
                            positions[axis][b][slots[k]] = triple[axis]
                        highest = max(highest, *triple)
                        k += 1
            current = highest + 1
        deltas.append([highest + 1 - len(slots)])
    return torch.tensor(positions), torch.tensor(deltas)


def rope_index(model, prompt: Prompt, family: str):
    """Call get_rope_index the way transformers' forward does (by keyword)."""
    kwargs = prompt.grid_kwargs()
    if family == "qwen2_5_vl" and prompt.video_seconds:
        kwargs["second_per_grid_ts"] = torch.tensor(prompt.video_seconds)
    return model.model.get_rope_index(
        prompt.input_ids, mm_token_type_ids=prompt.mm_token_type_ids, attention_mask=prompt.attention_mask, **kwargs
    )


CASES = {
    "text only": [[("text", 9)]],
    "image then text": [[("text", 4), ("image", (1, 4, 6)), ("text", 5)]],
    "video shorter than wide": [[("text", 3), ("video", (2, 8, 8), 1.0), ("text", 4)]],
    "video longer than wide": [[("text", 3), ("video", (8, 4, 4), 1.0), ("text", 4)]],
    "two videos": [[("text", 2), ("video", (6, 4, 4), 1.0), ("text", 3), ("video", (4, 4, 6), 0.5), ("text", 2)]],
    "two videos back to back": [[("text", 2), ("video", (4, 4, 4), 1.0), ("video", (2, 4, 4), 2.0), ("text", 2)]],
    "image and video": [[("text", 2), ("image", (1, 4, 4)), ("text", 1), ("video", (6, 4, 4), 0.5), ("text", 2)]],
    "left padding": [
        [("text", 3), ("video", (8, 4, 4), 1.0), ("text", 4)],
        [("text", 1), ("video", (4, 4, 4), 0.5), ("text", 2)],
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_positions_and_deltas_follow_the_reference_rule(family_and_model, case):
    family, model = family_and_model
    prompt = build_prompt(*CASES[case])
    assert restore_reference_positions(model) is True

    positions, deltas = rope_index(model, prompt, family)

    want_positions, want_deltas = expected_positions(prompt, family)
    assert torch.equal(positions, want_positions)
    assert torch.equal(deltas, want_deltas)


def test_report_case_text_after_16_frames_of_112px_starts_at_21_not_17():
    # 16 frames of 112x112 -> grid (8, 8, 8) -> 8 x 4 x 4 merged tokens starting at position 13.
    model = tiny_qwen2_vl()
    prompt = build_prompt([("text", 13), ("video", (8, 8, 8), 1.0), ("text", 3)])
    first_text_after_video = 13 + 128

    own_positions, _ = rope_index(model, prompt, "qwen2_vl")
    restore_reference_positions(model)
    reference_positions, _ = rope_index(model, prompt, "qwen2_vl")

    assert own_positions[:, 0, first_text_after_video].tolist() == [17, 17, 17]
    assert reference_positions[:, 0, first_text_after_video].tolist() == [21, 21, 21]
    # The video itself is placed the same way by both: only the text after it moves.
    assert torch.equal(own_positions[:, 0, :first_text_after_video], reference_positions[:, 0, :first_text_after_video])


def test_qwen2_5_video_ids_use_transformers_own_temporal_scale():
    # 2 frames per group at 3 fps: 2/3 s per group, 4/3 temporal ids per group, truncated. The video's ids
    # must equal transformers' own (same arithmetic); only the text after the video moves.
    model = tiny_qwen2_5_vl()
    prompt = build_prompt([("text", 3), ("video", (8, 4, 4), 2 / 3), ("text", 4)])
    video_end = 3 + chunk_tokens((8, 4, 4))

    own_positions, _ = rope_index(model, prompt, "qwen2_5_vl")
    restore_reference_positions(model)
    reference_positions, _ = rope_index(model, prompt, "qwen2_5_vl")

    assert torch.equal(reference_positions[:, :, :video_end], own_positions[:, :, :video_end])
    assert reference_positions[0, 0, video_end - 1] == 3 + 9  # int(7 * 4 / 3) = 9
    assert reference_positions[0, 0, video_end] == 3 + 9 + 1


def test_remove_restores_transformers_behaviour_bit_exactly(family_and_model):
    family, model = family_and_model
    prompt = build_prompt([("text", 3), ("video", (8, 4, 4), 1.0), ("text", 4)])
    inputs = prompt.model_inputs(family)
    with torch.no_grad():
        own_positions, own_deltas = rope_index(model, prompt, family)
        own_logits = model(**inputs).logits

        restore_reference_positions(model)
        patched_positions, _ = rope_index(model, prompt, family)
        patched_logits = model(**inputs).logits
        assert remove_reference_positions(model) is True
        after_positions, after_deltas = rope_index(model, prompt, family)
        after_logits = model(**inputs).logits

    assert not torch.equal(patched_positions, own_positions)
    assert not torch.allclose(patched_logits, own_logits)
    assert "get_rope_index" not in vars(model.model)
    assert model.model.get_rope_index.__func__ is type(model.model).get_rope_index
    assert torch.equal(after_positions, own_positions) and torch.equal(after_deltas, own_deltas)
    assert torch.equal(after_logits, own_logits)


def test_restore_is_idempotent_and_remove_puts_back_an_earlier_instance_override():
    model = tiny_qwen2_vl()
    prompt = build_prompt([("text", 3), ("video", (8, 4, 4), 1.0), ("text", 4)])
    want_positions, _ = expected_positions(prompt, "qwen2_vl")

    earlier_override = model.model.get_rope_index  # e.g. someone else's patch, stored on the instance
    model.model.get_rope_index = earlier_override
    # Outer model, inner model, again: all the same single patch.
    assert restore_reference_positions(model) and restore_reference_positions(model.model)
    assert restore_reference_positions(model)
    assert torch.equal(rope_index(model, prompt, "qwen2_vl")[0], want_positions)

    remove_reference_positions(model)
    assert vars(model.model)["get_rope_index"] is earlier_override
    assert remove_reference_positions(model) is True  # removing again changes nothing
    assert vars(model.model)["get_rope_index"] is earlier_override


def test_a_deep_copy_of_a_patched_model_computes_with_its_own_config():
    model = tiny_qwen2_vl()
    restore_reference_positions(model)
    copied = copy.deepcopy(model)
    assert copied.model.get_rope_index.__self__ is copied.model


def test_other_models_are_left_alone():
    qwen3_config = Qwen3VLConfig(
        text_config=dict(tiny_models.TEXT, num_hidden_layers=2, head_dim=16,
                         rope_parameters=copy.deepcopy(tiny_models.QWEN_ROPE)),
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2,
            deepstack_visual_indexes=[0], num_position_embeddings=16,
        ),
    )
    qwen3 = Qwen3VLForConditionalGeneration(qwen3_config)
    linear = torch.nn.Linear(2, 2)

    assert restore_reference_positions(qwen3) is False
    assert restore_reference_positions(linear) is False
    assert remove_reference_positions(qwen3) is False
    assert "get_rope_index" not in vars(qwen3.model)
    assert "get_rope_index" not in vars(linear)


def test_more_vision_tokens_than_grids_is_an_input_error():
    model = tiny_qwen2_vl()
    restore_reference_positions(model)
    prompt = build_prompt([("text", 2), ("video", (2, 4, 4), 1.0), ("text", 2)])
    with pytest.raises(InputError, match="video_grid_thw"):
        model.model.get_rope_index(prompt.input_ids, mm_token_type_ids=prompt.mm_token_type_ids, video_grid_thw=None)


# ----------------------------------------------------------------------------------------------------------
# Decoding: cached steps must land where a full recomputation with reference positions puts them.


def recompute_last_logits(model, prompt: Prompt, family: str, generated: torch.Tensor) -> torch.Tensor:
    """Logits [batch, vocab] of the last token of prompt + generated, no cache, explicit reference positions."""
    batch = prompt.input_ids.shape[0]
    extended = Prompt(
        input_ids=torch.cat([prompt.input_ids, generated], dim=1),
        attention_mask=torch.cat([prompt.attention_mask, torch.ones_like(generated)], dim=1),
        mm_token_type_ids=torch.cat([prompt.mm_token_type_ids, torch.zeros_like(generated)], dim=1),
        image_grids=prompt.image_grids,
        video_grids=prompt.video_grids,
        video_seconds=prompt.video_seconds,
    )
    positions, _ = expected_positions(extended, family)
    inputs = extended.model_inputs(family)
    with torch.no_grad():
        logits = model(**inputs, position_ids=positions, use_cache=False).logits
    assert logits.shape[0] == batch
    return logits[:, -1]


def test_greedy_generate_with_cache_matches_recomputation_with_reference_positions(family_and_model):
    family, model = family_and_model
    restore_reference_positions(model)
    prompt = build_prompt(
        [("text", 5), ("video", (8, 4, 4), 1.0), ("text", 3)],
        [("text", 2), ("video", (6, 4, 6), 0.5), ("text", 4)],
    )
    steps = 4
    with torch.no_grad():
        out = model.generate(
            **prompt.model_inputs(family),
            max_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    generated = out.sequences[:, prompt.input_ids.shape[1]:]
    assert generated.shape[1] == steps

    for step in range(steps):
        recomputed = recompute_last_logits(model, prompt, family, generated[:, :step])
        torch.testing.assert_close(out.logits[step], recomputed, atol=1e-5, rtol=0)
        assert torch.equal(recomputed.argmax(-1), generated[:, step])


def test_forward_decode_through_rope_deltas_matches_recomputation(family_and_model):
    # The forward path without position_ids: prefill caches rope_deltas, a cached step decodes with them.
    family, model = family_and_model
    restore_reference_positions(model)
    prompt = build_prompt([("text", 4), ("video", (8, 4, 4), 1.0), ("text", 3)])
    inputs = prompt.model_inputs(family)
    _, want_deltas = expected_positions(prompt, family)
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        assert torch.equal(model.model.rope_deltas, want_deltas)
        next_token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        step = model(input_ids=next_token, **cache_kwargs(output_cache(prefill)), use_cache=True)

    recomputed = recompute_last_logits(model, prompt, family, next_token)
    torch.testing.assert_close(step.logits[:, -1], recomputed, atol=1e-5, rtol=0)
