"""Frame dedup before the vision encoder: which frames are encoded (pure), that every family's features for a subset
put back in place equal those of encoding every frame, and that on a real lossless video it encodes fewer frames and
answers exactly as without it (through the pipeline, the feature cache and the benchmark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framefusion.errors import InputError
from framefusion.pipeline.feature_cache import FeatureCache
from framefusion.methods.frame_dedup import mean_absolute_difference, plan_frame_dedup
from framefusion.model_zoo import load_model
from framefusion.pipeline.video_qa import VideoQA
from framefusion.pipeline.preflight import prepare_video_file, run_settings
from framefusion.profiles.catalog import get_profile
from framefusion.video.synthetic import write_video_frames
from framefusion.families import supported_families
from framefusion.video import VideoClip, read_video

from cli_checks import printed_json, printed_json_lines, run_cli
from videos import moving_square_frames

# Every family the installed transformers runs (Qwen3.5 from 5.25 on).
FAMILIES = [name for name in ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3.5", "llava-onevision", "llava-next-video",
                              "internvl", "smolvlm"] if name in supported_families()]
SIDE = 112


def frames_of(*values: int, side: int = 8) -> np.ndarray:
    """One flat grey frame per value: uint8 (T, side, side, 3)."""
    return np.stack([np.full((side, side, 3), value, dtype=np.uint8) for value in values])


# --- which frames are encoded (pure) ---------------------------------------------------------------------------------
def test_identical_frames_reuse_the_last_encoded_one():
    plan = plan_frame_dedup(frames_of(10, 10, 10, 50, 50, 10), max_difference=0)
    assert plan.sources == (0, 0, 0, 3, 3, 5)
    assert plan.encoded == [0, 3, 5] and plan.frames_encoded == 3 and not plan.encodes_every_unit


def test_frames_are_compared_with_the_last_encoded_frame_not_the_previous_one():
    # Each frame is 1 from the previous one: within 1.5 of it, but the drift reaches 2 from the last encoded frame.
    plan = plan_frame_dedup(frames_of(10, 11, 12, 13, 14), max_difference=1.5)
    assert plan.sources == (0, 0, 2, 2, 4)


def test_max_difference_is_the_mean_absolute_rgb_difference():
    first = frames_of(100)
    second = first.copy()
    second[0, :4] = 108  # half of the values differ by 8: mean 4
    assert mean_absolute_difference(first, second) == pytest.approx(4.0)
    both = np.concatenate([first, second])
    assert plan_frame_dedup(both, max_difference=4.0).sources == (0, 0)
    assert plan_frame_dedup(both, max_difference=3.9).sources == (0, 1)
    assert plan_frame_dedup(both).sources == (0, 1)  # default 0: identical only


def test_groups_are_reused_only_when_all_their_frames_repeat_and_count_in_sampled_frames():
    # Groups of 2 (a Qwen temporal patch): (10, 10) (10, 10) (10, 20) (10, 20) (30, -)
    plan = plan_frame_dedup(frames_of(10, 10, 10, 10, 10, 20, 10, 20, 30), max_difference=0, unit_frames=2)
    assert plan.sources == (0, 0, 2, 2, 4)
    # Encoded: groups 0 and 2 (2 frames each) and the last, which holds one sampled frame.
    assert plan.frames_encoded == 5 and plan.num_frames == 9


def test_every_frame_differs_means_every_frame_is_encoded():
    plan = plan_frame_dedup(frames_of(1, 2, 3, 4), max_difference=0)
    assert plan.encodes_every_unit and plan.frames_encoded == 4


@pytest.mark.parametrize("bad", [-1, 256, float("nan"), "a lot"])
def test_a_bad_max_difference_is_refused_with_the_setting(bad):
    with pytest.raises(InputError) as caught:
        plan_frame_dedup(frames_of(1, 1), max_difference=bad)
    assert caught.value.setting == "max_difference"


# --- every family: a subset encoded and put back equals every frame encoded ----------------------------------------
_LOADED: dict = {}


def video_qa(family: str, profile: str = "baseline") -> VideoQA:
    if family not in _LOADED:
        loaded = load_model(f"random:tiny-{family}", dtype=torch.float32, device="cpu")
        _LOADED[family] = VideoQA(loaded.model, loaded.processor, model_name=family, profile=get_profile(profile))
    qa = _LOADED[family]
    qa.use_profile(get_profile(profile))
    return qa


def tensors(value) -> list[torch.Tensor]:
    """Every tensor of an encoder output field, in order (tuples per video and lists per layer followed down)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in tensors(item)]
    return []


@pytest.mark.parametrize("family", FAMILIES)
def test_features_of_the_encoded_frames_put_back_equal_encoding_every_frame(family):
    qa = video_qa(family)
    clip = VideoClip.from_frames(moving_square_frames(8, SIDE, still_frames=4), fps=4.0)
    every = qa.prepare_video(clip)
    deduplicated = qa.prepare_video(clip, profile=get_profile("dedup"))
    # Per-frame families encode the still frame once, Qwen-VL its still temporal patch of 2 frames once.
    assert (every.frames_encoded, deduplicated.frames_encoded) == (8, 6 if family.startswith("qwen") else 5)
    assert deduplicated.vision_modality == every.vision_modality
    assert type(deduplicated.vision_features) is type(every.vision_features)
    assert set(deduplicated.vision_features.keys()) == set(every.vision_features.keys())
    for name, value in every.vision_features.items():
        expected, got = tensors(value), tensors(deduplicated.vision_features[name])
        assert len(got) == len(expected), name
        for want, have in zip(expected, got):
            # Bit-identical on CPU for every family: each vision tower encodes a frame (or a temporal patch)
            # independently of the others, with the same kernels whatever the number of frames.
            assert torch.equal(want, have), (family, name)


# --- end to end on a lossless video ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lossless_video(tmp_path_factory):
    """16 frames at 8 fps in ffv1/.mkv (decoded bit-identical): 8 of one still picture, then 8 that move."""
    path = tmp_path_factory.mktemp("dedup") / "still-then-moving.mkv"
    return write_video_frames(path, moving_square_frames(16, SIDE, still_frames=8), fps=8, codec="ffv1")


def frames_seen_by_the_vision_tower(qa: VideoQA) -> tuple[list[int], object]:
    """A hook recording how many frames each call of the vision tower receives (LLaVA: pixel batch; Qwen: grid)."""
    seen: list[int] = []
    inner = qa.model.model
    if hasattr(inner, "visual"):
        handle = inner.visual.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(2 * int(kwargs.get("grid_thw", args[1:2] and args[1])[0, 0])),
            with_kwargs=True)
    else:
        handle = inner.vision_tower.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(int((args[0] if args else kwargs["pixel_values"]).shape[0])),
            with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("family, expected_encoded", [("llava-onevision", 5), ("qwen2-vl", 6)])
def test_dedup_encodes_fewer_frames_and_gives_the_baselines_answer_word_for_word(family, expected_encoded,
                                                                                 lossless_video):
    qa = video_qa(family)
    clip = read_video(lossless_video, num_frames=8)
    assert clip.num_frames == 8
    seen, handle = frames_seen_by_the_vision_tower(qa)
    try:
        baseline = qa.answer(qa.prepare_video(clip), "What happens?", max_new_tokens=12)
        deduplicated = qa.answer(qa.prepare_video(clip, profile=get_profile("dedup")), "What happens?", max_new_tokens=12)
    finally:
        handle.remove()
    assert seen == [8, expected_encoded]  # the vision tower really saw fewer frames
    assert deduplicated.answer == baseline.answer and deduplicated.new_tokens == baseline.new_tokens == 12
    assert deduplicated.tokens.visual == baseline.tokens.visual  # the LLM sees every frame's tokens
    assert baseline.to_dict()["tokens"]["frames_encoded"] == 8
    assert deduplicated.to_dict()["tokens"]["frames_encoded"] == expected_encoded
    assert deduplicated.to_dict()["tokens"]["frames"] == 8


def test_the_dedup_profile_keeps_its_own_feature_cache_entry_and_reports_frames_encoded_on_a_hit(lossless_video,
                                                                                                  tmp_path):
    cache = FeatureCache(tmp_path / "features")
    settings = run_settings(model="random:tiny-llava-onevision", frames=8)
    qa = video_qa("llava-onevision", "dedup")
    first = prepare_video_file(qa, settings, lossless_video, cache)
    again = prepare_video_file(qa, settings, lossless_video, cache)
    dedup_answers = [qa.answer(prepared, "What happens?", max_new_tokens=6) for prepared in (first, again)]
    qa = video_qa("llava-onevision", "baseline")
    every = prepare_video_file(qa, settings, lossless_video, cache)
    baseline_answer = qa.answer(every, "What happens?", max_new_tokens=6)
    assert (first.cache, again.cache, every.cache) == ("miss", "hit", "miss")
    assert (first.frames_encoded, again.frames_encoded, every.frames_encoded) == (5, 5, 8)
    assert dedup_answers[0].answer == dedup_answers[1].answer == baseline_answer.answer
    assert [result.to_dict()["tokens"]["frames_encoded"] for result in (*dedup_answers, baseline_answer)] == [5, 5, 8]


def test_ask_video_applies_the_profiles_frame_dedup(lossless_video):
    from framefusion.pipeline.video_qa import ask_video

    clip = read_video(lossless_video, num_frames=8)
    baseline, = ask_video(video_qa("qwen2-vl", "baseline"), clip, ["What happens?"], max_new_tokens=6)
    deduplicated, = ask_video(video_qa("qwen2-vl", "dedup"), clip, ["What happens?"], max_new_tokens=6)
    assert (baseline.tokens.frames_encoded, deduplicated.tokens.frames_encoded) == (8, 6)
    assert deduplicated.answer == baseline.answer


def test_bench_gives_profiles_that_differ_before_the_vision_encoder_their_own_encoding(lossless_video):
    from framefusion.apps.bench import run_bench

    qa = video_qa("llava-onevision")
    clip = read_video(lossless_video, num_frames=8)
    profiles = [get_profile(name) for name in ("baseline", "dedup", "framefusion-fast")]
    assert [profile.max_difference for profile in profiles] == [None, 0, None]
    seen, handle = frames_seen_by_the_vision_tower(qa)
    try:
        result = run_bench(qa, clip, profiles, repeat=2, warmup=1, max_new_tokens=2)
    finally:
        handle.remove()
    # Per round (warm-up included): one encoding of every frame shared by baseline and framefusion-fast, one
    # deduplicated.
    assert sorted(seen) == sorted([8, 5] * 3)
    runs = {run.profile: run for run in result.results}
    assert [runs[name].tokens.frames_encoded for name in ("baseline", "dedup", "framefusion-fast")] == [8, 5, 8]
    # Shared work is charged the same; the deduplicated encoding has its own timings, round by round.
    for baseline_round, shared_round, dedup_round in zip(runs["baseline"].rounds, runs["framefusion-fast"].rounds,
                                                         runs["dedup"].rounds):
        assert baseline_round.vision == shared_round.vision > 0
        assert dedup_round.vision > 0
    payload = result.to_dict()
    speedup = payload["speedup"]["dedup"]
    assert speedup["vision_limit"] == pytest.approx(8 / 5)
    assert speedup["prefill_limit"] == pytest.approx(1.0)  # the same tokens reach the language model
    assert {"vision", "generate", "vision_limit"} <= speedup.keys()
    assert payload["speedup"]["framefusion-fast"]["vision_limit"] == 1.0
    assert [run["tokens"]["frames_encoded"] for run in payload["results"]] == [8, 5, 8]
    assert runs["dedup"].answer == runs["baseline"].answer and runs["dedup"].new_tokens == 2
    assert payload["results"][1]["answer"] == runs["dedup"].answer


@pytest.mark.parametrize("family, expected_encoded", [("llava-onevision", 5), ("qwen2-vl", 6)])
def test_ask_json_with_the_dedup_profile_encodes_fewer_frames_and_answers_as_the_baseline(family, expected_encoded,
                                                                                         lossless_video):
    def ask(profile: str) -> dict:
        return printed_json(run_cli("ask", lossless_video, "What happens?", "--model", f"random:tiny-{family}",
                                    "--frames", "8", "--profile", profile, "--max-new-tokens", "12", "--device", "cpu",
                                    "--dtype", "float32", "--no-cache", "--json"))

    baseline, deduplicated = ask("baseline"), ask("dedup")
    assert (baseline["tokens"]["frames"], deduplicated["tokens"]["frames"]) == (8, 8)
    assert (baseline["tokens"]["frames_encoded"], deduplicated["tokens"]["frames_encoded"]) == (8, expected_encoded)
    assert deduplicated["answer"] == baseline["answer"] and deduplicated["new_tokens"] == baseline["new_tokens"]
    assert deduplicated["tokens"]["prompt"] == baseline["tokens"]["prompt"]


def test_compare_encodes_again_for_a_profile_that_differs_before_the_vision_encoder(lossless_video):
    deduplicated, baseline = printed_json_lines(run_cli(
        "ask", lossless_video, "What happens?", "--model", "random:tiny-qwen2-vl", "--frames", "8", "--profile",
        "dedup", "--compare", "baseline", "--max-new-tokens", "4", "--device", "cpu", "--json"))
    assert (deduplicated["tokens"]["frames_encoded"], baseline["tokens"]["frames_encoded"]) == (6, 8)
    assert deduplicated["answer"] == baseline["answer"]
