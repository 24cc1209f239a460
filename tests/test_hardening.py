"""Whatever a user or a folder throws at the tool, it answers or says in one line what is wrong.

Hostile inputs made here (tests/videos.py) go through `framefusion ask` (typer's CliRunner, tiny random Qwen2-VL);
the memory estimate, out-of-memory reporting, Ctrl-C and --debug are checked on the real commands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import framefusion.model_zoo.memory as memory
import framefusion.pipeline.video_qa as pipeline
import framefusion.video.pyav_reader as video_module
import videos
from cli_checks import error_line, run_cli
from framefusion.apps.caption.local import find_videos
from framefusion.errors import FrameFusionError, InputError, VideoError
from framefusion.model_zoo.checkpoint_numbers import count_parameters_from_index, model_numbers_for_spec, model_numbers_from_folder
from framefusion.model_zoo.checkpoint_numbers import count_parameters_from_config, model_numbers_from_config
from framefusion.model_zoo.memory import estimate_memory
from framefusion.model_zoo import ensure_tiny_checkpoint, list_shapes, load_shape, parse_model_spec
from framefusion.profiles.catalog import get_profile
from framefusion.video import VideoClip, enlarge_small_frames, read_video

REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE = REPOSITORY / "examples" / "sample.mp4"
TINY = "random:tiny-qwen2-vl"

# What each hostile input must give: "answer" (exit 0) or the words its one-line error (exit 2) contains.
HOSTILE_OUTCOMES = {
    "single_frame": "answer",
    "tiny_1x1": "answer",
    "three_pixels_tall": "answer",
    "below_28_px": "answer",
    "ten_bit": "answer",
    "long_2h_16px": "answer",
    "vfr": "answer",
    "rotated_90": "answer",
    "rotated_270": "answer",
    "spaces_and_non_ascii_name": "answer",
    "protocol_like_name": "answer",
    "leading_dash_name": "answer",
    "symlink_to_video": "answer",
    "fifo": ("not a regular file",),
    "dev_zero": ("not a regular file",),
    "dev_null": ("not a regular file",),
    "symlink_to_dev_zero": ("not a regular file",),
    "symlink_loop": ("loop of symbolic links",),
    "dangling_symlink": ("no such file",),
    "too_wide_600x2": ("aspect ratio",),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return {**videos.hostile_videos(folder), **videos.unusable_inputs(folder)}


def ask(*args: str):
    return run_cli("ask", *args)


def tiny_ask(path: Path, *extra: str):
    return ask(str(path), "What happens?", "--model", TINY, "--frames", "2", "--max-new-tokens", "2", "--json",
               *extra)


def assert_one_line_error(result, exit_code: int, *words: str) -> str:
    # Progress notes ("loading ...") may come before; the error is one line, last. Words in any case.
    line = error_line(result, exit_code)
    for word in words:
        assert word.lower() in line.lower(), line
    return line


@pytest.fixture
def captured_clips(monkeypatch) -> list[VideoClip]:
    """The clips the model's processor receives, recorded (after the pipeline's own adjustments)."""
    clips: list[VideoClip] = []
    real_prepare_video = pipeline.VideoQA.prepare_video

    def recording(qa, clip, *args, **kwargs):
        prepared = real_prepare_video(qa, clip, *args, **kwargs)
        clips.append(prepared.clip)
        return prepared

    monkeypatch.setattr(pipeline.VideoQA, "prepare_video", recording)
    return clips


# --------------------------------------------------------------------------------------------- hostile corpus


def test_the_corpus_covers_every_outcome(corpus):
    assert set(corpus) == set(HOSTILE_OUTCOMES)


@pytest.mark.parametrize("name", sorted(HOSTILE_OUTCOMES))
def test_ask_answers_or_gives_one_line_error(corpus, name):
    result = tiny_ask(corpus[name])
    expected = HOSTILE_OUTCOMES[name]
    if expected == "answer":
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["tokens"]["frames"] == 2 and payload["tokens"]["visual"] > 0
        assert payload["video"] == str(corpus[name])
    else:
        assert_one_line_error(result, 2, *expected)


def test_unusable_paths_are_refused_before_the_model_loads(corpus):
    for name in ("fifo", "dev_zero", "symlink_loop", "too_wide_600x2"):
        result = tiny_ask(corpus[name])
        assert "loading" not in result.stderr, name


def test_tiny_frames_are_enlarged_for_the_processor(corpus, captured_clips):
    for name, size in [("tiny_1x1", (28, 28)), ("three_pixels_tall", (30, 640)), ("below_28_px", (28, 40))]:
        assert tiny_ask(corpus[name]).exit_code == 0
        assert captured_clips[-1].frames.shape[1:3] == size, name
    # Enlarging repeats pixels: the 1x1 video's colour fills the whole frame.
    frame = captured_clips[0].frames[0]
    assert (frame == frame[0, 0]).all()


def test_enlarge_small_frames_keeps_large_clips_and_timing():
    large = VideoClip.from_frames(np.zeros((2, 28, 64, 3), np.uint8), fps=4)
    assert enlarge_small_frames(large) is large
    small = VideoClip.from_frames(np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3), fps=4)
    enlarged = enlarge_small_frames(small)
    assert enlarged.frames.shape == (2, 28, 42, 3)
    assert enlarged.timestamps == small.timestamps and enlarged.sampled_fps == small.sampled_fps
    assert (enlarged.frames[:, ::14, ::14] == small.frames).all()
    with pytest.raises(VideoError, match="aspect ratio"):
        enlarge_small_frames(VideoClip.from_frames(np.zeros((1, 2, 402, 3), np.uint8), fps=1))


@pytest.mark.parametrize("name, turns", [("rotated_90", 1), ("rotated_270", -1)])
def test_rotated_files_reach_the_model_upright(corpus, captured_clips, name, turns):
    result = ask(str(corpus[name]), "What?", "--model", TINY, "--frames", "4", "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    frames = captured_clips[-1].frames
    assert frames.shape[1:3] == (64, 48)  # stored 64 wide and 48 tall, shown turned a quarter
    stored = videos.indexed_frames(8)
    for frame, index in zip(frames, [1, 3, 5, 7]):
        assert np.abs(frame.astype(int) - np.rot90(stored[index], k=turns)).mean() < 4


def test_ten_bit_video_keeps_its_colours(corpus):
    clip = read_video(corpus["ten_bit"], num_frames=4)
    assert [videos.read_frame_index(frame) for frame in clip.frames] == [1, 3, 5, 7]


def test_two_hour_video_is_sampled_in_seconds_without_decoding_it_all(corpus, monkeypatch):
    decoded = []
    real_next_frame = video_module._ForwardDecoder._next_frame

    def counting(self, target):
        frame = real_next_frame(self, target)
        decoded.append(frame)
        return frame

    monkeypatch.setattr(video_module._ForwardDecoder, "_next_frame", counting)
    clip = read_video(corpus["long_2h_16px"], num_frames=8, backend="pyav")
    assert clip.duration == pytest.approx(7200, abs=1)
    # Slice centres 450 s, 1350 s, ...: frame i shows grey level i % 256.
    expected = [(450 + 900 * k) % 256 for k in range(8)]
    assert np.abs(clip.frames[:, 8, 8, 0].astype(int) - expected).max() <= 3
    assert len(decoded) < 8 * 61  # at most one keyframe interval (60 frames) per pick, of 7200
    assert read_video(corpus["long_2h_16px"], num_frames=8).num_frames == 8  # default backend, with its fallback


def test_symlink_loop_in_a_folder_terminates(corpus, tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    videos.write_indexed_video(folder, "real.mp4", seconds=0.5)
    videos.make_symlink_loop(folder / "loop")
    listing = find_videos(folder, recursive=True)
    assert "real.mp4" in listing.videos
    assert not any("again/again" in name for name in listing.videos + listing.others)


def test_symlink_loop_and_fifo_in_a_folder_are_reported(tmp_path):
    videos.make_symlink_loop(tmp_path)
    videos.make_fifo(tmp_path, "pipe.mp4")
    listing = find_videos(tmp_path)
    assert {"a.mp4", "b.mp4", "pipe.mp4"} <= set(listing.videos)


# --------------------------------------------------------------------------------------------------- models


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    result = ask(str(SAMPLE), "What?", "--model", str(tmp_path))
    assert_one_line_error(result, 2, "not a model directory")
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    result = ask(str(SAMPLE), "What?", "--model", str(broken), "--frames", "2")
    # The folder is a model's (it has a config.json) that fails to load: processing failed, exit 1.
    assert_one_line_error(result, 1, "could not load", "not a valid JSON file")


# --------------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("name", list_shapes())
def test_parameter_count_from_config_matches_the_published_model(name):
    shape = load_shape(name)
    assert count_parameters_from_config(shape.config) == pytest.approx(shape.parameter_count, rel=1e-3)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-onevision"])
def test_tiny_checkpoint_is_counted_exactly_from_its_safetensors(family):
    from safetensors import safe_open

    folder = Path(ensure_tiny_checkpoint(family))
    with safe_open(folder / "model.safetensors", "pt") as tensors:
        exact = sum(int(np.prod(tensors.get_slice(key).get_shape())) for key in tensors.keys())
    numbers = model_numbers_from_folder(folder)
    assert numbers.parameter_source == "safetensors" and numbers.parameter_count == exact
    config = json.loads((folder / "config.json").read_text())
    assert count_parameters_from_config(config) == pytest.approx(exact, rel=0.01)


def test_safetensors_index_size_gives_the_parameter_count(tmp_path):
    config = dict(load_shape("qwen2-vl-7b").config, dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 16_582_751_232}}))
    numbers = model_numbers_from_folder(tmp_path)
    assert numbers.parameter_source == "safetensors index" and numbers.parameter_count == 8_291_375_616
    assert count_parameters_from_index({"metadata": {"total_size": "huge"}}, config) is None


def test_kv_cache_is_tokens_times_layers_times_two_times_kv_heads_times_head_dim_times_bytes():
    shape = load_shape("qwen2-vl-7b")  # 28 layers, 4 KV heads of 128; 384 tokens a frame at 602112 px
    numbers = model_numbers_from_config(shape.config, processor=shape.processor["video_processor"],
                                        parameter_count=shape.parameter_count)
    estimate = estimate_memory(numbers, frames=32, dtype_bytes=2, dtype_name="bfloat16")
    tokens = 32 * 384 + memory.TEXT_TOKENS
    assert estimate.tokens == tokens
    assert estimate.kv_cache == 28 * 2 * 4 * 128 * tokens * 2
    assert estimate.weights == shape.parameter_count * 2
    assert estimate.total == estimate.weights + estimate.kv_cache + estimate.activations + estimate.overhead
    # A small video makes fewer tokens a frame (Qwen resizes to 28-px blocks, pairs of frames share them).
    small = model_numbers_from_config(shape.config, processor=shape.processor["video_processor"],
                                      frame_size=(448, 448), parameter_count=1)
    assert small.tokens_per_frame == 448 * 448 // (28 * 28) // 2


@pytest.mark.parametrize("config_text", ["{not json", "[1, 2]", '{"text_config": {"hidden_size": -4}}',
                                         '{"hidden_size": true, "num_attention_heads": 2}', "{}"])
def test_a_hostile_config_gives_no_estimate_rather_than_a_crash(tmp_path, config_text):
    (tmp_path / "config.json").write_text(config_text)
    (tmp_path / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    spec = parse_model_spec(str(tmp_path))
    assert model_numbers_for_spec(spec) is None


def test_open_video_qa_refuses_a_model_that_cannot_fit_with_the_estimate_and_hints(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 20 * 10**9)

    def never_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded although it cannot fit")

    monkeypatch.setattr("framefusion.model_zoo.load_model", never_loaded)
    with pytest.raises(InputError) as raised:
        pipeline.open_video_qa("random:qwen2-vl-7b", get_profile("framefusion"), device="cpu", dtype="float32",
                               frames=32)
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(r"random:qwen2-vl-7b needs about 3\d\.\d GB in float32 \(weights 33\.2 GB", message)
    assert "but cpu has 20.0 GB free" in message
    assert "KV cache" in message and "32 frames" in message
    assert ("dtype", "bfloat16") in [(way.setting, way.value) for way in raised.value.suggestions]
    assert "--" not in message  # the library names settings, the CLI names flags


def test_hint_names_a_frame_count_that_fits(monkeypatch):
    shape = load_shape("qwen2-vl-2b")
    numbers = model_numbers_from_config(shape.config, processor=shape.processor["video_processor"],
                                        parameter_count=shape.parameter_count)
    needed_for_64 = estimate_memory(numbers, frames=64, dtype_bytes=2, dtype_name="bfloat16").total
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: needed_for_64)
    with pytest.raises(InputError) as raised:
        memory.check_memory_fits(parse_model_spec("random:qwen2-vl-2b"), dtype=torch.bfloat16,
                                 device=torch.device("cpu"), frames=512)
    suggested = next(way.value for way in raised.value.suggestions if way.setting == "frames")
    assert 64 <= suggested < 512 and suggested % 2 == 0
    assert estimate_memory(numbers, frames=suggested, dtype_bytes=2, dtype_name="").total <= needed_for_64


def test_ask_refuses_before_loading_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 1 << 20)
    result = tiny_ask(SAMPLE)
    assert_one_line_error(result, 2, "needs about", "free", "frames")


def test_gpu_out_of_memory_during_generation_is_one_line_with_the_hint(monkeypatch):
    from transformers import Qwen2VLForConditionalGeneration

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "generate", out_of_memory)
    result = tiny_ask(SAMPLE)
    line = assert_one_line_error(result, 1, "out of memory", "--frames", "tried to allocate 2.00 gib")
    assert "--debug" not in line


def test_out_of_memory_in_the_library_is_a_framefusion_error(monkeypatch):
    from transformers import Qwen2VLForConditionalGeneration

    qa = pipeline.open_video_qa(TINY, get_profile("framefusion"), device="cpu", frames=2)
    prepared = qa.prepare_video(read_video(SAMPLE, num_frames=2))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "generate", out_of_memory)
    with pytest.raises(FrameFusionError, match="out of memory on cpu .*fewer frames than 2") as raised:
        qa.answer(prepared, "What?", max_new_tokens=2)
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)


# ------------------------------------------------------------------------------------------------ interrupts


def test_ctrl_c_during_ask_exits_130_without_traceback(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "ask_video", interrupted)
    result = tiny_ask(SAMPLE)
    assert result.exit_code == 130
    assert "Traceback" not in result.output and "interrupted" in result.stderr


@pytest.mark.slow
def test_sigint_to_a_running_ask_exits_130_without_traceback():
    # The real signal, in a real process: the pipeline is made to wait so the signal lands mid-command.
    script = textwrap.dedent(f"""
        import sys, time
        import framefusion.pipeline.video_qa as pipeline
        def waiting(*args, **kwargs):
            print("waiting for the signal", file=sys.stderr, flush=True)
            time.sleep(60)
        pipeline.ask_video = waiting
        from framefusion_cli.entry import main
        sys.argv = ["framefusion", "ask", {str(SAMPLE)!r}, "What?", "--model", "{TINY}", "--frames", "2"]
        main()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        seen = []
        deadline = time.monotonic() + 60
        for line in process.stderr:
            seen.append(line)
            if "waiting for the signal" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


# ----------------------------------------------------------------------------------------------------- --debug


def failing_invocations(tmp_path: Path, monkeypatch) -> dict[str, list[str]]:
    """One failing call of every command."""
    bad_profiles = tmp_path / "bad.yaml"
    bad_profiles.write_text("profiles:\n  a:\n    description: x\n  a:\n    description: y\n")

    def broken_listing():
        raise RuntimeError("listing failed")

    import framefusion.model_zoo

    monkeypatch.setattr(framefusion.model_zoo, "list_aliases", broken_listing)
    return {
        "ask": ["ask", str(SAMPLE), "What?", "--profile", "nope"],
        "caption": ["caption", str(tmp_path / "no_such_folder")],
        "bench": ["bench", str(SAMPLE), "--model", TINY, "--profiles", "nope"],
        "profiles": ["profiles", "--profiles-file", str(bad_profiles)],
        "models": ["models"],
    }


@pytest.mark.parametrize("command, exit_code", [("ask", 2), ("caption", 2), ("bench", 2), ("profiles", 2),
                                               ("models", 1)])
def test_debug_shows_the_full_traceback_on_every_command(command, exit_code, tmp_path, monkeypatch):
    arguments = failing_invocations(tmp_path, monkeypatch)[command]
    plain = run_cli(*arguments)
    assert plain.exit_code == exit_code, plain.output  # bad input 2; a failure of ours (the listing) 1
    assert "Traceback" not in plain.output
    assert plain.stderr.strip().splitlines()[-1].startswith("error:")
    debug = run_cli(*arguments, "--debug")
    assert debug.exit_code == plain.exit_code
    assert "Traceback" in debug.stderr


def test_profiles_file_with_a_duplicate_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("profiles:\n  fast:\n    description: x\n    cost: 0.2\n    cost: 0.5\n")
    result = run_cli("profiles", "--profiles-file", str(path))
    assert_one_line_error(result, 2, str(path), "line 5", "duplicate key 'cost'")


def test_hub_model_offline_and_not_cached_gets_no_estimate_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_numbers_for_spec(parse_model_spec("framefusion-tests/not-cached-model")) is None
