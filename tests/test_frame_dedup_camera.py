"""Noise-aware frame dedup on camera-like footage the tests make themselves (framefusion.methods.frame_dedup).

Lossy H.264 (and HEVC 10-bit) of a fixed camera filming a room with sensor noise: no two decoded frames are identical,
so the exact test encodes every frame, while the noise-aware one skips the still stretches and keeps every frame in
which something moves, however small. Frames are small (160x120, 16 at 4 fps): each video takes milliseconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from framefusion.errors import InputError, ProfileError
from framefusion.methods.frame_dedup import (
    CHANGE_FLOOR,
    NOISE_CEILING,
    colour_cells,
    largest_change,
    plan_frame_dedup,
)
from framefusion.profiles.catalog import builtin_profiles, get_profile
from framefusion.video import read_video
from framefusion.video.synthetic import (
    render_camera_frames,
    render_still_then_moving_frames,
    write_camera_video,
    write_video_frames,
)

FRAMES = 16
STILL_THEN_OBJECT = {}  # the default scene: still for the first half, then a 0.5% object crossing
OBJECT_THROUGHOUT = {"still_fraction": 0.0}


def camera_frames(folder, name: str, **scene) -> np.ndarray:
    """The decoded frames of a camera video (4 s at 4 fps, 160x120, H.264 crf 23, sensor noise sigma 2 unless
    `scene` says otherwise): uint8 (16, H, W, 3)."""
    path = write_camera_video(folder / f"{name}.mp4", seconds=4.0, fps=4, **scene)
    clip = read_video(path, num_frames=FRAMES)
    assert clip.num_frames == FRAMES
    return clip.frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("camera")


def noise_aware(frames: np.ndarray, unit_frames: int = 1, **settings):
    return plan_frame_dedup(frames, unit_frames=unit_frames, mode="noise-aware", **settings)


# --- the two numbers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit_frames, most_encoded", [(1, 9), (2, 10)])
def test_still_half_of_noisy_h264_footage_is_encoded_once(folder, unit_frames, most_encoded):
    frames = camera_frames(folder, "still-then-object")
    assert not any(np.array_equal(frames[0], frame) for frame in frames[1:])  # nothing repeats bit for bit
    assert plan_frame_dedup(frames, unit_frames=unit_frames).encodes_every_unit  # so the exact test never fires
    plan = noise_aware(frames, unit_frames)
    # The still half (8 frames) is one encoded unit; every frame of the moving half is encoded.
    assert plan.frames_encoded == most_encoded <= 10
    still_units = 8 // unit_frames
    assert plan.sources[:still_units] == (0,) * still_units
    assert plan.sources[still_units:] == tuple(range(still_units, len(plan.sources)))


@pytest.mark.parametrize("noise", [2.0, 8.0])
@pytest.mark.parametrize("unit_frames", [1, 2])
def test_a_small_object_moving_throughout_keeps_every_frame(folder, noise, unit_frames):
    frames = camera_frames(folder, f"object-{noise}", noise=noise, **OBJECT_THROUGHOUT)
    side = round((0.005 * 160 * 120) ** 0.5)
    assert side * side / (160 * 120) == pytest.approx(0.005, rel=0.1)  # the object covers ~0.5% of the frame
    plan = noise_aware(frames, unit_frames)
    assert plan.frames_encoded == FRAMES and plan.encodes_every_unit
    # Judged by the most-changed region: the mean over the frame hides the object below the noise.
    mean_changes = [np.abs(frames[index].astype(int) - frames[index - 1]).mean() for index in range(1, FRAMES)]
    assert max(mean_changes) < 3 * CHANGE_FLOOR
    assert min(plan.change_scores[1:]) > 2 * plan.threshold


# --- noise from the video itself -------------------------------------------------------------------------------------
def test_a_grainy_night_clip_learns_its_own_noise_floor_and_still_skips(folder):
    day, night = camera_frames(folder, "day", noise=2.0), camera_frames(folder, "night", noise=8.0)
    quiet, grainy = noise_aware(day), noise_aware(night)
    assert quiet.noise_floor < 0.5 < 1.0 < grainy.noise_floor <= NOISE_CEILING
    assert grainy.threshold > quiet.threshold
    assert grainy.frames_encoded == quiet.frames_encoded == 9
    assert max(quiet.change_scores[1:8]) < min(grainy.change_scores[1:8])
    # At a higher sensitivity the day clip's threshold sits below the night clip's still frames: one fixed threshold
    # for both would encode those; the night clip's own noise floor still skips them.
    sharper_day, sharper_night = noise_aware(day, sensitivity=2.0), noise_aware(night, sensitivity=2.0)
    assert min(grainy.change_scores[1:8]) > sharper_day.threshold
    assert sharper_day.frames_encoded == sharper_night.frames_encoded == 9


def test_a_clean_screen_recording_skips_exactly_what_the_exact_test_skips(folder):
    # Lossless: the synthetic scene held still for half its frames (decoded bit-identical), then moving.
    frames = render_still_then_moving_frames(seconds=4.0, fps=4, width=160, height=120)
    path = write_video_frames(folder / "screen.mkv", frames, fps=4, codec="ffv1")
    decoded = read_video(path, num_frames=FRAMES).frames
    for unit_frames in (1, 2):
        exact, aware = plan_frame_dedup(decoded, unit_frames=unit_frames), noise_aware(decoded, unit_frames)
        assert aware.sources == exact.sources and not exact.encodes_every_unit
        assert aware.noise_floor == 0.0 and aware.threshold == CHANGE_FLOOR


def test_a_screen_recording_that_types_keeps_every_change():
    # A white page on which a dark line of "text" grows by a few characters per frame, then stays: no noise at all.
    frames = np.full((12, 120, 160, 3), 245, dtype=np.uint8)
    for index in range(12):
        frames[index, 20:28, 10 : 10 + 12 * min(index, 6)] = 20
    plan = noise_aware(frames)
    assert plan.sources == (0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6)


# --- motion that must be kept, drift that must add up ----------------------------------------------------------------
def test_a_slow_pan_keeps_every_frame(folder):
    # The view moves 2% of its width per sampled frame, from the first frame to the last: no quiet moment.
    frames = camera_frames(folder, "pan", pan=0.02, object_area=0.0)
    assert noise_aware(frames).encodes_every_unit


def test_a_slow_drift_adds_up_against_the_last_encoded_frame(folder):
    # A shadow darkens a quarter of the room by 1.5 levels per frame: too little between neighbours, yet it adds up.
    frames = render_camera_frames(seconds=4.0, fps=4, object_area=0.0, noise=1.0).astype(int)
    for index in range(FRAMES):
        frames[index, :60, :80] -= round(1.5 * index)
    path = write_video_frames(folder / "drift.mp4", np.clip(frames, 0, 255).astype(np.uint8), fps=4,
                              codec_options={"crf": "23"})
    decoded = read_video(path, num_frames=FRAMES).frames
    plan = noise_aware(decoded)
    assert 2 < len(plan.encoded) < FRAMES / 2
    cells = colour_cells(decoded)
    against_the_neighbour = []
    for unit, source in enumerate(plan.sources[1:], start=1):
        if source != unit:  # reused: within the threshold of the frame it reuses
            assert plan.change_scores[unit] <= plan.threshold
        else:  # encoded: beyond the threshold of the last encoded frame
            assert plan.change_scores[unit] > plan.threshold
            against_the_neighbour.append(largest_change(cells[unit], cells[unit - 1]))
    # Against its (skipped) neighbour some encoded frame would have passed as a repeat: the drift was lost that way.
    assert min(against_the_neighbour) <= plan.threshold


def test_a_cut_is_encoded(folder):
    frames = camera_frames(folder, "cut", object_area=0.0, cut_fraction=0.5)
    plan = noise_aware(frames)
    assert plan.encoded == [0, 8]  # the first frame of each shot; the rest of each shot is still


# --- inputs that must not break it -----------------------------------------------------------------------------------
def test_ten_bit_hevc_is_read_and_its_still_half_skipped(folder):
    path = write_camera_video(folder / "ten-bit.mkv", seconds=4.0, fps=4, codec="libx265", pixel_format="yuv420p10le")
    frames = read_video(path, num_frames=FRAMES).frames
    assert frames.dtype == np.uint8
    assert noise_aware(frames).frames_encoded == 9


@pytest.mark.parametrize("width, height", [(161, 97), (33, 21), (1, 40), (200, 1), (1, 1)])
def test_odd_and_tiny_frame_sizes_do_not_crash(width, height):
    frames = render_camera_frames(seconds=2.0, fps=4, width=width, height=height)
    plan = noise_aware(frames)
    assert len(plan.change_scores) == len(plan.sources) == len(frames)
    assert colour_cells(frames).shape[0] == len(frames)
    noise_aware(frames[:1])  # a single frame: nothing to compare, encoded
    assert noise_aware(frames[:1]).sources == (0,)


def test_odd_sized_h264_footage_skips_its_still_half(folder):
    frames = camera_frames(folder, "odd", width=161, height=97)
    assert noise_aware(frames).frames_encoded == 9


# --- settings, scores and errors -------------------------------------------------------------------------------------
def test_sensitivity_divides_the_threshold_and_scores_are_there_to_tune_it(folder):
    frames = camera_frames(folder, "still-then-object")
    plan = noise_aware(frames)
    assert noise_aware(frames, sensitivity=2.0).threshold == pytest.approx(plan.threshold / 2)
    report = plan.to_dict()
    assert report["mode"] == "noise-aware" and report["frames"] == FRAMES and report["frames_encoded"] == 9
    assert len(report["change_scores"]) == FRAMES and report["change_scores"][0] == 0.0
    assert report["threshold"] == round(plan.threshold, 4) and report["noise_floor"] == round(plan.noise_floor, 4)
    json.dumps(report)
    # A sensitivity below the still frames' change / threshold ratio keeps them all; far above, every frame counts.
    assert noise_aware(frames, sensitivity=10.0).encodes_every_unit


def test_max_difference_adds_to_the_noise_test():
    frames = np.full((3, 64, 64, 3), 100, dtype=np.uint8)
    frames[1, :16, :16] = 140  # a sixteenth of the frame changes by 40: a mean difference of 2.5
    assert noise_aware(frames).sources == (0, 1, 2)  # a region changed far beyond the noise (none)
    assert noise_aware(frames, max_difference=2.5).sources == (0, 0, 0)


@pytest.mark.parametrize("settings, setting", [({"mode": "fuzzy"}, "mode"), ({"mode": "noise-aware", "sensitivity": 0},
                                                                                "sensitivity"),
                                               ({"mode": "noise-aware", "sensitivity": "high"}, "sensitivity")])
def test_bad_settings_are_refused_with_the_setting(settings, setting):
    with pytest.raises(InputError) as caught:
        plan_frame_dedup(np.zeros((2, 8, 8, 3), dtype=np.uint8), **settings)
    assert caught.value.setting == setting


def write_profiles(tmp_path, stage: str):
    path = tmp_path / "profiles.yaml"
    path.write_text(f"profiles:\n  mine:\n    description: d\n    stages:\n      - {stage}\n")
    return path


def test_the_default_profile_is_noise_aware_and_dedup_stays_exact():
    profiles = builtin_profiles()
    assert (profiles["framefusion"].dedup_mode, profiles["framefusion"].dedup_sensitivity) == ("noise-aware", 1.0)
    assert profiles["framefusion"].stages()[0] == {"kind": "frame-dedup", "mode": "noise-aware", "sensitivity": 1.0}
    assert profiles["dedup"].dedup_mode == "exact" and profiles["dedup"].dedup_sensitivity is None
    assert profiles["dedup"].stages()[0] == {"kind": "frame-dedup", "max_difference": 0.0}  # spelt as before
    assert profiles["baseline"].dedup_mode is None


def test_a_stage_without_a_mode_is_exact_as_before(tmp_path):
    profile = get_profile("mine", write_profiles(tmp_path, "{kind: frame-dedup, max_difference: 2}"))
    assert (profile.dedup_mode, profile.max_difference, profile.dedup_sensitivity) == ("exact", 2.0, None)
    assert profile.encoding_stages() == [{"kind": "frame-dedup", "max_difference": 2.0}]


def test_a_noise_aware_stage_loads_and_round_trips(tmp_path):
    path = write_profiles(tmp_path, "{kind: frame-dedup, mode: noise-aware, sensitivity: 1.5, max_difference: 1}")
    profile = get_profile("mine", path)
    assert (profile.dedup_mode, profile.dedup_sensitivity, profile.max_difference) == ("noise-aware", 1.5, 1.0)
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump({"profiles": {"mine": {"description": "d", **profile.file_settings()}}}))
    assert get_profile("mine", again).stages() == profile.stages()
    assert get_profile("mine", write_profiles(tmp_path, "{kind: frame-dedup, mode: noise-aware}")).dedup_sensitivity == 1.0


@pytest.mark.parametrize("stage, expected", [
    ("{kind: frame-dedup, sensitivity: 2}", "applies to mode noise-aware only"),
    ("{kind: frame-dedup, mode: fuzzy}", "must be one of exact, noise-aware"),
    ("{kind: frame-dedup, mode: noise-aware, sensitivity: 20}", "[0.1, 10]"),
    ("{kind: frame-dedup, mode: noise-aware, sensitivity: true}", "must be a number"),
])
def test_bad_noise_aware_stages_are_one_line_errors(tmp_path, stage, expected):
    path = write_profiles(tmp_path, stage)
    with pytest.raises(ProfileError) as raised:
        get_profile("mine", path)
    message = str(raised.value)
    assert expected in message and "\n" not in message and "profile 'mine'" in message


# --- through the pipeline: the default profile, the token report, calibrate ------------------------------------------
@pytest.fixture(scope="module")
def tiny_qa():
    from framefusion.pipeline.video_qa import open_video_qa

    return open_video_qa("random:tiny-llava-onevision", builtin_profiles()["framefusion"], device="cpu",
                         dtype="float32")


@pytest.fixture(scope="module")
def camera_videos(folder):
    return {"still": write_camera_video(folder / "pipeline-still.mp4", seconds=4.0, fps=4),
            "moving": write_camera_video(folder / "pipeline-moving.mp4", seconds=4.0, fps=4, **OBJECT_THROUGHOUT)}


def test_the_default_profile_encodes_the_still_half_once_and_says_why(tiny_qa, camera_videos):
    from rich.console import Console

    from framefusion_cli.render import token_table

    clip = read_video(camera_videos["still"], num_frames=FRAMES)
    result = tiny_qa.answer(tiny_qa.prepare_video(clip), "What happens?", max_new_tokens=2)
    assert (result.tokens.frames, result.tokens.frames_encoded, result.tokens.frame_dedup) == (16, 9, "noise-aware")
    assert result.to_dict()["tokens"]["frame_dedup"] == "noise-aware"
    console = Console(width=200, record=True)
    console.print(token_table(result))
    assert "frames encoded (7 within noise of the last encoded frame)" in console.export_text()


def test_the_answer_path_is_unchanged_on_a_fully_moving_camera_video(tiny_qa, camera_videos):
    clip = read_video(camera_videos["moving"], num_frames=FRAMES)
    exact = get_profile("framefusion")
    exact = type(exact)(**{**exact.__dict__, "dedup_mode": "exact", "dedup_sensitivity": None})
    aware = tiny_qa.answer(tiny_qa.prepare_video(clip), "What happens?", max_new_tokens=6)
    before = tiny_qa.answer(tiny_qa.prepare_video(clip, profile=exact), "What happens?", max_new_tokens=6)
    assert aware.tokens.frames_encoded == before.tokens.frames_encoded == FRAMES
    assert aware.tokens.frame_dedup is None  # nothing skipped, nothing to explain
    assert aware.answer == before.answer and aware.tokens.final == before.tokens.final


def test_calibrate_shows_the_change_score_of_every_frame(camera_videos):
    from framefusion.apps.calibrate import calibrate
    from framefusion.pipeline.video_qa import open_video_qa

    qa = open_video_qa("random:tiny-qwen2-vl", builtin_profiles()["baseline"], device="cpu", dtype="float32")
    result = calibrate(qa, [camera_videos["still"]], frames=FRAMES)
    report = result.to_dict()["videos"][0]["frame_dedup"]
    # Qwen2-VL encodes frames in pairs: 8 units, the still half's 4 encoded once.
    assert report["mode"] == "noise-aware" and report["unit_frames"] == 2 and report["frames_encoded"] == 10
    assert len(report["change_scores"]) == 8 and report["threshold"] >= CHANGE_FLOOR
    assert all(score <= report["threshold"] for score in report["change_scores"][1:4])
    assert all(score > report["threshold"] for score in report["change_scores"][4:])
