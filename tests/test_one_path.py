"""One path from a video to an answer: a stage before the vision encoder, set once in a profile, reaches every
application (ask and bench: tests/test_frame_dedup.py; here caption on both engines and chat).

The video is lossless (ffv1), 8 sampled frames of which the first half repeat one picture: frame dedup encodes fewer
frames than it samples, and the record or report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framefusion.video.synthetic import write_video_frames

from cli_checks import read_jsonl, run_cli
from videos import moving_square_frames

MODEL = ["--model", "random:tiny-llava-onevision", "--frames", "8", "--max-new-tokens", "2", "--device", "cpu",
         "--no-cache"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-path")
    write_video_frames(folder / "still-then-moving.mkv", moving_square_frames(16, still_frames=8), fps=8, codec="ffv1")
    return folder


def caption_records(folder: Path, output: Path, *extra: str) -> list[dict]:
    result = run_cli("caption", folder, "-o", output, "--profile", "dedup", *MODEL, *extra)
    assert result.exit_code == 0, result.output
    return read_jsonl(output)


def test_caption_on_the_local_engine_runs_the_profiles_frame_dedup(folder, tmp_path):
    [record] = caption_records(folder, tmp_path / "local.jsonl")
    assert (record["tokens"]["frames"], record["tokens"]["frames_encoded"]) == (8, 5)


@pytest.mark.slow
def test_caption_on_ray_workers_runs_the_profiles_frame_dedup(folder, tmp_path, monkeypatch):
    import logging

    import ray

    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        [record] = caption_records(folder, tmp_path / "ray.jsonl", "--engine", "ray", "--workers", "1")
    finally:
        ray.shutdown()
    assert (record["tokens"]["frames"], record["tokens"]["frames_encoded"]) == (8, 5)
    assert record["worker"] != "local"


def test_chat_runs_the_profiles_frame_dedup(folder):
    video = folder / "still-then-moving.mkv"
    result = run_cli("chat", video, "--profile", "dedup", "--json", *MODEL, input="What happens?\n")
    assert result.exit_code == 0, result.output
    [turn] = [json.loads(line) for line in result.stdout.splitlines()]
    report = turn["tokens"]["report"]
    assert (report["frames"], report["frames_encoded"]) == (8, 5)
