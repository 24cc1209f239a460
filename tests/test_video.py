"""Reading and sampling video frames: what a caller of read_video / probe_video relies on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framefusion.runtime.transformers_compat import processor_videos
from framefusion.errors import InputError, VideoError
from framefusion.video.synthetic import SKY_FRACTION, render_synthetic_frames, write_synthetic_video
from framefusion.video import pyav_reader, reading
from framefusion.video import (
    VideoClip,
    frames_on_screen,
    probe_video,
    read_video,
    resolve_backend,
    sample_count,
    slice_centres,
)

try:  # the repository root is on sys.path under `python -m pytest`; tests/ itself is under plain `pytest`
    from tests.videos import VFR_TIMESTAMPS, broken_videos, good_videos, indexed_frames, make_fifo, read_frame_index
except ImportError:
    from videos import VFR_TIMESTAMPS, broken_videos, good_videos, indexed_frames, make_fifo, read_frame_index

BACKENDS = ["decord", "pyav"]
SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
# Videos whose frames carry their index and are stored upright.
INDEXED = ["short", "long", "wide", "odd_size", "mkv", "webm_vp9", "mpeg_ts", "mkv_named_mp4"]
# The good videos that decord 0.6 cannot read (or that the reader does not hand it), so PyAV reads them.
DECORD_GIVES_UP = {"mpeg_ts", "rotated_90", "rotated_270", "tiny_2x2"}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    return good_videos(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    return broken_videos(tmp_path_factory.mktemp("broken"))


def picked_indices(clip: VideoClip) -> list[int]:
    return [read_frame_index(frame) for frame in clip.frames]


def expected_indices(frame_times, start: float, end: float, count: int) -> list[int]:
    return frames_on_screen(frame_times, slice_centres(start, end, count)).tolist()


# ---------------------------------------------------------------------------------------------- pure rules


def test_slice_centres_split_the_span_evenly():
    np.testing.assert_allclose(slice_centres(2.0, 6.0, 4), [2.5, 3.5, 4.5, 5.5])
    np.testing.assert_allclose(slice_centres(0.0, 1.0, 1), [0.5])


def test_frames_on_screen_is_the_last_frame_started():
    times = [0.0, 0.5, 1.0, 3.0]
    assert frames_on_screen(times, [0.0, 0.49, 0.5, 2.9, 3.0, 99.0]).tolist() == [0, 0, 1, 2, 3, 3]
    assert frames_on_screen([0.2, 0.4], [0.0]).tolist() == [0]  # before the first frame: the first frame


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.01, 2.0), min_size=1, max_size=40),
    count=st.integers(1, 30),
)
def test_each_pick_is_on_screen_at_its_slice_centre(gaps, count):
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    end = times[-1] + 0.05
    targets = slice_centres(0.0, end, count)
    picks = frames_on_screen(times, targets)
    assert np.all(np.diff(picks) >= 0)
    assert np.all(times[picks] <= targets + 1e-3)
    following = np.minimum(picks + 1, len(times) - 1)
    assert np.all((following == picks) | (times[following] > targets))


def test_sample_count_rules():
    common = dict(max_frames=64, span=20.0, source_fps=10.0)
    assert sample_count(num_frames=7, fps=None, **common) == 7
    assert sample_count(num_frames=500, fps=None, **common) == 500  # asked for explicitly: honoured
    assert sample_count(num_frames=None, fps=1.0, **common) == 20
    assert sample_count(num_frames=None, fps=5.0, **common) == 64  # capped by max_frames
    assert sample_count(num_frames=None, fps=None, **common) == 40  # default 2 fps
    assert sample_count(num_frames=None, fps=30.0, max_frames=500, span=2.0, source_fps=8.0) == 16  # no repeats
    assert sample_count(num_frames=None, fps=0.01, **common) == 1


@pytest.mark.parametrize(
    "arguments, words",
    [
        (dict(num_frames=4, fps=1.0), "not both"),
        (dict(num_frames=0), "num_frames"),
        (dict(num_frames=2.5), "num_frames"),
        (dict(num_frames=True), "num_frames"),
        (dict(fps=0), "fps"),
        (dict(fps=-1.0), "fps"),
        (dict(fps=float("nan")), "fps"),
        (dict(max_frames=0), "max_frames"),
        (dict(start=-1.0), "start"),
        (dict(start=2.0, end=1.0), "end=1.0: must be after the start"),
        (dict(start=1.0, end=1.0), "end=1.0: must be after the start"),
        (dict(backend="opencv"), "backend"),
    ],
)
def test_bad_arguments_are_input_errors_that_name_the_argument(good, arguments, words):
    with pytest.raises(InputError, match=words):
        read_video(good["short"], **arguments)


def test_start_past_the_end_is_a_video_error(good):
    with pytest.raises(VideoError, match="past the end"):
        read_video(good["short"], start=1.0)  # the video is 1.0 s long
    with pytest.raises(VideoError, match="past the end"):
        read_video(good["short"], start=5.0, end=6.0)


def test_backend_choice(monkeypatch):
    assert resolve_backend("pyav") == "pyav"
    assert resolve_backend("auto") == "decord"  # decord is installed here
    monkeypatch.setattr(reading, "decord_available", lambda: False)
    assert resolve_backend("auto") == "pyav"
    with pytest.raises(InputError, match="pip install decord"):
        resolve_backend("decord")


# ------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, fps, seconds", [("short", 8, 1.0), ("long", 10, 20.0), ("wide", 12, 2.0)])
@pytest.mark.parametrize("count", [1, 4, 7])
def test_num_frames_takes_the_frame_at_each_slice_centre(good, backend, name, fps, seconds, count):
    clip = read_video(good[name], num_frames=count, backend=backend)
    frame_times = np.arange(round(seconds * fps)) / fps
    expected = expected_indices(frame_times, 0.0, seconds, count)
    assert clip.frames.shape[0] == count and clip.frames.dtype == np.uint8
    assert picked_indices(clip) == expected
    np.testing.assert_allclose(clip.timestamps, frame_times[expected], atol=1e-3)
    assert clip.sampled_fps == pytest.approx(count / seconds)
    assert clip.source_fps == pytest.approx(fps)
    assert clip.duration == pytest.approx(seconds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_mode_samples_fps_times_duration_capped_by_max_frames(good, backend):
    one_per_second = read_video(good["long"], fps=1.0, backend=backend)
    assert one_per_second.num_frames == 20
    assert picked_indices(one_per_second) == [5 + 10 * second for second in range(20)]
    assert one_per_second.sampled_fps == pytest.approx(1.0)
    assert read_video(good["long"], fps=5.0, backend=backend).num_frames == 64
    assert read_video(good["long"], fps=5.0, max_frames=10, backend=backend).num_frames == 10
    assert read_video(good["long"], backend=backend).num_frames == 40  # default: 2 frames per second
    faster_than_the_file = read_video(good["short"], fps=30.0, backend=backend)
    assert picked_indices(faster_than_the_file) == list(range(8))  # every frame once, none repeated


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_and_end_limit_the_span(good, backend):
    clip = read_video(good["long"], num_frames=5, start=5.0, end=10.0, backend=backend)
    assert picked_indices(clip) == [55, 65, 75, 85, 95]
    np.testing.assert_allclose(clip.timestamps, [5.5, 6.5, 7.5, 8.5, 9.5], atol=1e-3)
    assert (clip.start, clip.end) == (5.0, 10.0)
    assert clip.sampled_fps == pytest.approx(1.0)
    past_the_end = read_video(good["long"], num_frames=2, start=18.0, end=99.0, backend=backend)
    assert past_the_end.end == pytest.approx(20.0)
    assert picked_indices(past_the_end) == [185, 195]


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_is_sampled_by_timestamp(good, backend):
    info = probe_video(good["vfr"])
    clip = read_video(good["vfr"], num_frames=9, backend=backend)
    expected = expected_indices(VFR_TIMESTAMPS, 0.0, info.duration, 9)
    assert picked_indices(clip) == expected
    np.testing.assert_allclose(clip.timestamps, np.array(VFR_TIMESTAMPS)[expected], atol=1e-3)
    # A frame-count sampler would spread picks over frame indices 0..13; in time the late burst gets few.
    assert expected != np.linspace(0, len(VFR_TIMESTAMPS) - 1, 9).round().astype(int).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, turns", [("rotated_90", 1), ("rotated_180", 2), ("rotated_270", -1)])
def test_rotated_videos_come_out_upright(good, backend, name, turns):
    clip = read_video(good[name], num_frames=4, backend=backend)
    stored = indexed_frames(8)
    info = probe_video(good[name])
    assert (info.width, info.height) == ((48, 64) if turns % 2 else (64, 48))
    assert clip.frames.shape[1:] == (info.height, info.width, 3)
    for frame, index in zip(clip.frames, [1, 3, 5, 7]):
        upright = np.rot90(stored[index], k=turns)
        assert np.abs(frame.astype(int) - upright).mean() < 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_frame_and_tiny_videos(good, backend):
    repeated = read_video(good["single_frame"], num_frames=4, backend=backend)
    assert picked_indices(repeated) == [0, 0, 0, 0]
    assert repeated.timestamps == (0.0, 0.0, 0.0, 0.0)
    for name, size in [("tiny_1x1", (1, 1)), ("tiny_2x2", (2, 2))]:
        clip = read_video(good[name], num_frames=2, backend=backend)
        assert clip.frames.shape == (2, *size, 3)


@pytest.mark.parametrize("name", sorted(set(INDEXED) | {"vfr", "rotated_90", "rotated_180", "synthetic", "tiny_2x2"}))
@pytest.mark.parametrize("count", [3, 8])
def test_both_backends_return_the_same_frames(good, name, count):
    from_decord = read_video(good[name], num_frames=count, backend="decord")
    from_pyav = read_video(good[name], num_frames=count, backend="pyav")
    # decord really ran (the comparison is not PyAV with itself), except where it is known to give up and PyAV reads
    # the file instead: an MPEG-TS stream, a rotated display matrix and a 2x2 picture.
    expected = "pyav" if name in DECORD_GIVES_UP else "decord"
    assert (from_decord.backend, from_pyav.backend) == (expected, "pyav")
    np.testing.assert_allclose(from_decord.timestamps, from_pyav.timestamps, atol=1e-3)
    assert from_decord.frames.shape == from_pyav.frames.shape
    assert np.abs(from_decord.frames.astype(int) - from_pyav.frames).max() <= 3


def test_failing_decord_falls_back_to_pyav(good, monkeypatch, caplog):
    import decord

    class BrokenReader:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("simulated decord failure")

    monkeypatch.setattr(decord, "VideoReader", BrokenReader)
    clip = read_video(good["short"], num_frames=4, backend="decord")
    assert clip.backend == "pyav"
    assert picked_indices(clip) == [1, 3, 5, 7]
    assert "simulated decord failure" in caplog.text


def test_decord_that_stops_early_is_not_trusted(good, monkeypatch):
    """decord quietly returns fewer frames on some damaged files; then PyAV reads the file instead."""
    import decord

    real_reader = decord.VideoReader

    class ShortReader:
        def __init__(self, *args, **kwargs):
            self.reader = real_reader(*args, **kwargs)

        def __len__(self):
            return 3

        def get_frame_timestamp(self, indices):
            return self.reader.get_frame_timestamp(indices)

        def get_batch(self, indices):
            return self.reader.get_batch(indices)

    monkeypatch.setattr(decord, "VideoReader", ShortReader)
    clip = read_video(good["short"], num_frames=4, backend="decord")
    assert clip.backend == "pyav" and picked_indices(clip) == [1, 3, 5, 7]


def test_long_video_is_read_by_seeking_not_decoding_everything(good, monkeypatch):
    decoded = []
    original = pyav_reader._ForwardDecoder._next_frame

    def counting(self, target):
        frame = original(self, target)
        decoded.append(frame)
        return frame

    monkeypatch.setattr(pyav_reader._ForwardDecoder, "_next_frame", counting)
    clip = read_video(good["long"], num_frames=4, backend="pyav")  # 200 frames, a keyframe every 10
    assert picked_indices(clip) == [25, 75, 125, 175]
    assert len(decoded) < 60


# ------------------------------------------------------------------------------------ probing, metadata


def test_probe_describes_the_video(good):
    info = probe_video(good["wide"])
    assert (info.width, info.height, info.rotation) == (160, 90, 0)
    assert info.duration == pytest.approx(2.0) and info.fps == pytest.approx(12.0) and info.num_frames == 24
    assert info.codec == "h264"
    assert probe_video(good["mpeg_ts"]).start_time > 0  # MPEG-TS clocks rarely start at zero
    assert probe_video(good["mkv_named_mp4"]).container.startswith("matroska")


def test_video_metadata_describes_the_sampled_frames(good):
    clip = read_video(good["long"], num_frames=6, start=2.0, end=5.0)
    metadata = clip.video_metadata()
    assert metadata.total_num_frames == 6 and metadata.frames_indices == list(range(6))
    assert metadata.fps == pytest.approx(2.0) and metadata.sampled_fps == pytest.approx(2.0)
    assert metadata.duration == pytest.approx(3.0)
    assert (metadata.height, metadata.width) == (64, 96)


def _character_tokenizer():
    """A tokenizer with one token per printable character plus Qwen's vision tokens (no hub needed)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]
    vocabulary = {"<unk>": 0}
    for token in specials + [chr(code) for code in range(32, 127)]:
        vocabulary.setdefault(token, len(vocabulary))
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", additional_special_tokens=specials)


PROMPT = "<|vision_start|><|video_pad|><|vision_end|>What happens?"


def test_qwen2_5_vl_processor_times_the_frames_by_the_sampled_fps(good):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=_character_tokenizer(), video_processor=video_processor
    )
    clip = read_video(good["long"], num_frames=6, start=2.0, end=5.0)  # 2 sampled frames per second
    inputs = processor(
        text=[PROMPT],
        videos=processor_videos(clip.frames),
        video_metadata=[clip.video_metadata()],
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert inputs["video_grid_thw"][0, 0].item() == 6 // video_processor.temporal_patch_size  # not resampled
    seconds_per_patch = video_processor.temporal_patch_size / clip.sampled_fps
    assert inputs["second_per_grid_ts"][0].item() == pytest.approx(seconds_per_patch)


def test_qwen3_vl_processor_stamps_frames_with_the_sampled_fps(good):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = _character_tokenizer()
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor()
    )
    clip = read_video(good["long"], num_frames=4, start=4.0, end=8.0)  # 1 sampled frame per second
    inputs = processor(
        text=[PROMPT],
        videos=processor_videos(clip.frames),
        video_metadata=[clip.video_metadata()],
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert inputs["video_grid_thw"][0, 0].item() == 2  # 4 frames, 2 per temporal patch: none dropped or added
    text = tokenizer.decode(inputs["input_ids"][0]).replace("<|video_pad|>", "")
    # Stamps are idx / fps averaged over each frame pair: with the sampled fps (1.0) that is 0.5 and 2.5 s
    # into the clip; with the file's fps (10) they would read 0.1 and 0.3.
    assert "<0.5 seconds>" in text and "<2.5 seconds>" in text


# ------------------------------------------------------------------------------------------ bad input


BROKEN_NAMES = [
    "zero_bytes",
    "truncated_mp4_10",
    "truncated_mp4_50",
    "truncated_mp4_90",
    "truncated_faststart_10",
    "truncated_faststart_50",
    "truncated_faststart_90",
    "truncated_mkv_10",
    "truncated_mkv_50",
    "truncated_mkv_90",
    "garbage_in_webm",
    "garbage_in_mp4",
    "text_named_mp4",
    "random_bytes_mp4",
    "audio_only_mp4",
    "audio_with_cover_art_mp3",
    "png_named_mp4",
]


def test_broken_video_list_is_complete(broken):
    assert sorted(broken) == sorted(BROKEN_NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_broken_files_give_a_one_line_video_error(broken, name, backend):
    with pytest.raises(VideoError) as raised:
        read_video(broken[name], num_frames=8, backend=backend)
    message = str(raised.value)
    assert "\n" not in message and str(broken[name]) in message
    with pytest.raises(VideoError):
        probe_video(broken[name])


@pytest.mark.parametrize(
    "name, words",
    [
        ("zero_bytes", "empty"),
        ("audio_only_mp4", "no video stream"),
        ("audio_with_cover_art_mp3", "no video stream"),
        ("truncated_mkv_50", "truncated"),
        ("png_named_mp4", "still image"),
    ],
)
def test_broken_file_messages_say_what_is_wrong(broken, name, words):
    with pytest.raises(VideoError, match=words):
        probe_video(broken[name])


def test_paths_that_are_not_video_files(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="directory"):
        read_video(tmp_path)
    with pytest.raises(VideoError, match="not a regular file"):
        probe_video("/dev/null")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = make_fifo(tmp_path)
    outcome: list[BaseException] = []

    def attempt():
        try:
            read_video(fifo, num_frames=2)
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer appearing unblocks the stuck reader
        pytest.fail("reading a FIFO blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], VideoError)
    assert "not a regular file" in str(outcome[0])


# ------------------------------------------------------------------------------------- synthetic video


def test_synthetic_frames_are_deterministic_with_static_moving_and_changing_parts():
    frames = render_synthetic_frames(seconds=2.0, fps=8, width=112, height=112, seed=3)
    assert frames.shape == (16, 112, 112, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, render_synthetic_frames(seconds=2.0, fps=8, width=112, height=112, seed=3))
    assert not np.array_equal(frames, render_synthetic_frames(seconds=2.0, fps=8, width=112, height=112, seed=4))

    changed = np.any(frames[1:] != frames[:-1], axis=-1)  # (T-1, H, W): pixel differs from previous frame
    horizon = round(SKY_FRACTION * 112)
    sky_change = changed[:, :horizon].mean()
    ground_change = changed[:, horizon:].mean()
    assert sky_change > 0.3  # the sky is redrawn every frame
    assert ground_change < 0.1  # most of the ground is the same from frame to frame
    assert changed[:, horizon:].any(axis=0).mean() < 0.5  # and most of it never changes at all

    is_red = (frames[..., 0] > 180) & (frames[..., 1] < 80) & (frames[..., 2] < 80)
    ball_x = [np.nonzero(mask)[1].mean() for mask in is_red]
    assert np.all(np.diff(ball_x) > 0)  # the ball rolls left to right


def test_synthetic_video_round_trips_through_the_reader(tmp_path):
    path = write_synthetic_video(tmp_path / "scene.mp4", seconds=2.0, fps=8, width=96, height=64)
    clip = read_video(path, num_frames=16, backend="pyav")
    source = render_synthetic_frames(seconds=2.0, fps=8, width=96, height=64)
    assert clip.frames.shape == source.shape
    assert np.abs(clip.frames.astype(int) - source).mean() < 6  # lossy coding only


def test_bundled_sample_video_is_small_and_readable():
    info = probe_video(SAMPLE_VIDEO)
    assert 5.0 <= info.duration <= 8.0
    assert (info.width, info.height) == (320, 240)
    assert SAMPLE_VIDEO.stat().st_size < 400_000
    clip = read_video(SAMPLE_VIDEO, num_frames=4)
    assert clip.frames.shape == (4, 240, 320, 3)


def test_clip_from_frames_in_memory():
    frames = render_synthetic_frames(seconds=1.0, fps=8, width=32, height=32)
    clip = VideoClip.from_frames(frames, fps=8)
    assert clip.timestamps[1] == pytest.approx(0.125) and (clip.start, clip.end) == (0.0, 1.0)
    assert clip.video_metadata().duration == pytest.approx(1.0)
    with pytest.raises(ValueError, match="uint8"):
        VideoClip.from_frames(frames[0], fps=8)
