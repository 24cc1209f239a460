"""Our FrameFusion on transformers 5.x against the official implementation, on recorded inputs and outputs.

tests/data/official/ holds what the official FrameFusion (github.com/thu-nics/FrameFusion, run on transformers
4.51.3, the version it pins for Qwen2-VL) did with a tiny random Qwen2-VL of 28 decoder layers (the depth the
official code assumes, so its budget and ours agree):
- tiny-qwen2-vl-28/: the checkpoint, saved by transformers 4.51.3 (float32, sdpa).
- official_inputs_and_logits.pt: per case the uint8 video frames, input_ids, video_grid_thw; the official prefill
  logits at every position that survived ("<case>.s<S_th>.logits" [kept, vocab]); the unpatched 4.51.3 logits
  ("<case>.unpatched_logits" [L, vocab]).
- official_results.json: per case and S_th the surviving positions, the tokens each layer's attention saw, the
  steps taken, 8 greedy tokens from generate(), and how far each decision was from flipping (similarity margin to
  S_th, gap at the pruning cut, gap between the two best logits) so that a mismatch here means a real difference.

Cases: "long" is 16 frames of 112x112 (grid 8x8x8: more temporal groups than rows of merged patches, where
transformers 5.x's own rotary positions depart from Qwen's), "short" is 8 frames (grid 4x8x8). Both have a static
background, a moving block and noisy cells; between them and the two thresholds they cover merging at layer 0
before and after attention and at later layers, pruning at layers 1 and 2, and the budget met by merging alone.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from framefusion import apply_framefusion, remove_framefusion
from framefusion.families.qwen_vl.positions import remove_reference_positions, restore_reference_positions

DATA = Path(__file__).parent / "data" / "official"
CHECKPOINT = DATA / "tiny-qwen2-vl-28"
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
VIDEO_TOKEN_TYPE = 2
# Logits of the same computation on two transformers versions differ by ~2e-6 here (lm_head weights were scaled by 10
# at recording time to widen the greedy margins); 1e-4 still catches any token kept or dropped differently.
FRAMEFUSION_LOGITS_TOLERANCE = 1e-4
UNPATCHED_LOGITS_TOLERANCE = 1e-5

RECORD = json.loads((DATA / "official_results.json").read_text())
CASES = [(case, threshold) for case in RECORD["cases"] for threshold in RECORD["cases"][case]["framefusion"]]


@lru_cache(maxsize=1)
def recorded_tensors() -> dict[str, torch.Tensor]:
    return torch.load(DATA / "official_inputs_and_logits.pt", weights_only=True)


@lru_cache(maxsize=1)
def load_model() -> Qwen2VLForConditionalGeneration:
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        CHECKPOINT, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


@pytest.fixture
def model():
    """The recorded checkpoint, loaded once; every test leaves it as it found it."""
    model = load_model()
    yield model
    remove_framefusion(model)
    remove_reference_positions(model)


def patchify(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames [T, C, H, W] -> (pixel_values_videos [t*h*w, C*2*14*14], video_grid_thw [1, 3]).

    Qwen2-VL's layout: temporal pairs of frames, patches grouped by 2x2 merge windows in row-major order.
    Pixels are mapped to [-1, 1] by x / 127.5 - 1, exact in float32, as at recording time.
    """
    pixels = frames.to(torch.float32) / 127.5 - 1.0
    num_frames, channels, height, width = pixels.shape
    grid_t, grid_h, grid_w = num_frames // TEMPORAL_PATCH_SIZE, height // PATCH_SIZE, width // PATCH_SIZE
    patches = pixels.reshape(
        grid_t, TEMPORAL_PATCH_SIZE, channels,
        grid_h // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
        grid_w // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
    ).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2).contiguous()
    return flat, torch.tensor([[grid_t, grid_h, grid_w]])


def case_inputs(case: str) -> dict[str, torch.Tensor]:
    """The model inputs of a recorded case, rebuilt bit for bit (checked against the recorded pixel hash)."""
    tensors = recorded_tensors()
    input_ids = tensors[f"{case}.input_ids"]
    pixel_values_videos, video_grid_thw = patchify(tensors[f"{case}.frames"])
    digest = hashlib.sha256(pixel_values_videos.numpy().tobytes()).hexdigest()
    assert digest == RECORD["cases"][case]["pixel_values_videos_sha256"], "video pixels differ from the recording"
    assert torch.equal(video_grid_thw, tensors[f"{case}.video_grid_thw"])
    is_video = input_ids == load_model().config.video_token_id
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixel_values_videos,
        "video_grid_thw": video_grid_thw,
        # transformers 5.x places video positions by token type (0 text, 2 video); 4.51.3 used the token ids.
        "mm_token_type_ids": is_video.long() * VIDEO_TOKEN_TYPE,
    }


def apply_official_settings(model, threshold: str):
    return apply_framefusion(
        model,
        cost=RECORD["cost"],
        similarity_lower_bound=float(threshold),
        ratio_lower_bound=RECORD["ratio_lower_bound"],
    )


def step_summary(steps) -> list[tuple]:
    """(layer, kind, where, tokens before, tokens after) of each step, from our stats or the recorded dicts."""
    fields = ("layer", "kind", "where", "tokens_before", "tokens_after")
    return [tuple(step[f] if isinstance(step, dict) else getattr(step, f) for f in fields) for step in steps]


def test_recording_covers_the_paths_that_matter():
    """The recorded cases exercise every branch of the algorithm, with decisions far from flipping."""
    steps = [
        (step, case) for case, threshold in CASES for step in RECORD["cases"][case]["framefusion"][threshold]["steps"]
    ]
    assert any(s["kind"] == "merge" and s["layer"] > 0 and s["tokens_after"] < s["tokens_before"] for s, _ in steps)
    assert {s["layer"] for s, _ in steps if s["kind"] == "prune"} == {1, 2}
    # the top-k branch: merging alone meets the budget, so no prune step follows
    assert any(s["kind"] == "merge" and s["finish_pruning"] for s, _ in steps)
    grids = {case: RECORD["cases"][case]["video_grid_thw"] for case in RECORD["cases"]}
    assert any(t > h // MERGE_SIZE for t, h, _ in grids.values()), "no video longer in time than tall"
    for case, threshold in CASES:
        recorded = RECORD["cases"][case]["framefusion"][threshold]
        assert min(m["threshold_margin"] for m in recorded["merge_margins"]) > 1e-3
        assert all(m["relative_gap"] > 1e-4 for m in recorded["prune_margins"])
        assert min(recorded["greedy_top2_gaps"]) > 1e-3


@pytest.mark.parametrize("case", sorted(RECORD["cases"]))
def test_unpatched_model_with_reference_positions_matches_transformers_4(model, case):
    inputs = case_inputs(case)
    restore_reference_positions(model)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        generated = model.generate(**inputs, max_new_tokens=RECORD["max_new_tokens"], do_sample=False)
    expected = recorded_tensors()[f"{case}.unpatched_logits"]
    torch.testing.assert_close(logits, expected, rtol=0, atol=UNPATCHED_LOGITS_TOLERANCE)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens == RECORD["cases"][case]["unpatched_greedy_tokens"]


@pytest.mark.parametrize("case,threshold", CASES)
def test_prefill_matches_official(model, case, threshold):
    inputs = case_inputs(case)
    recorded = RECORD["cases"][case]["framefusion"][threshold]
    handle = apply_official_settings(model, threshold)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    stats = handle.stats

    assert step_summary(stats.steps) == step_summary(recorded["steps"])
    assert stats.tokens_per_layer == recorded["tokens_per_layer"]
    assert stats.kept_positions == recorded["kept_positions"]
    # every token that left was a video token, so the video counts follow from the totals
    text_tokens = RECORD["cases"][case]["prompt_tokens"] - stats.video_tokens
    assert stats.video_tokens_per_layer == [count - text_tokens for count in recorded["tokens_per_layer"]]
    expected_cost = sum(stats.video_tokens_per_layer) / (handle.num_layers * stats.video_tokens)
    # (it may exceed the requested cost by a little: the prune step rounds the tokens it keeps to the nearest one)
    assert stats.achieved_cost == pytest.approx(expected_cost)
    # the official model returns logits for the surviving positions only, as ours does
    expected = recorded_tensors()[f"{case}.s{threshold}.logits"]
    torch.testing.assert_close(logits, expected, rtol=0, atol=FRAMEFUSION_LOGITS_TOLERANCE)


@pytest.mark.parametrize("case,threshold", CASES)
def test_greedy_generation_matches_official(model, case, threshold):
    inputs = case_inputs(case)
    recorded = RECORD["cases"][case]["framefusion"][threshold]
    handle = apply_official_settings(model, threshold)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=RECORD["max_new_tokens"], do_sample=False)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == recorded["greedy_tokens"]
    # the prefill inside generate() reduced exactly as the plain forward did
    assert handle.stats.kept_positions == recorded["kept_positions"]
    assert handle.stats.tokens_per_layer == recorded["tokens_per_layer"]
