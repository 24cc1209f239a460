"""`framefusion caption --engine ray`: a pool of Ray workers gives the local engine's records, survives faults,
and leaves nothing running.

One local Ray instance (2 CPUs) serves the in-process tests of this module: the engine uses the session it finds
open instead of starting its own. The driver tests run the real command in a subprocess, which starts and owns its
own instance, and end it with Ctrl-C or kill -9.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray

from framefusion.apps.caption.local import CaptionRun, CaptionSettings
from framefusion.apps.caption.ray_engine import KILL_WORKER_VARIABLE, RayOptions, check_videos_visible, plan_workers
from framefusion.errors import InputError
from framefusion.profiles.catalog import get_profile
from cli_checks import error_line, framefusion_command, read_jsonl, run_cli
from processes import command_line, describe, descendants, still_running_after, wait_for_records
from videos import copied_videos, write_indexed_video, write_truncated_video

MODEL = "random:tiny-qwen2-vl"
FAST = ["--model", MODEL, "--frames", "4", "--max-new-tokens", "4", "--device", "cpu", "--backend", "pyav"]
RAY = ["--engine", "ray", "--workers", "2"]
GOOD = ("a.mp4", "b.mp4", "c.mkv", "d.mp4")



@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for this module's in-process runs (the engine joins the open session)."""
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "fatal")  # what the command would set, undone after the test

    def invoke(*args: object):
        return run_cli("caption", *args)

    return invoke


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four good videos (different sizes and content), a truncated one and a text file."""
    folder = tmp_path_factory.mktemp("ray-videos")
    write_indexed_video(folder, "a.mp4", seconds=0.5, fps=8)
    write_indexed_video(folder, "b.mp4", seconds=2.0, fps=10, width=96, height=64)
    write_indexed_video(folder, "c.mkv", seconds=1.0, fps=12, width=80, height=48)
    write_indexed_video(folder, "d.mp4", seconds=1.5, fps=8, width=48, height=64)
    write_truncated_video(folder)
    (folder / "notes.txt").write_text("not a video\n")
    return folder


def local_captions(folder: Path, tmp_path: Path) -> dict[str, str]:
    """What the local engine writes for the same folder and settings (greedy, same model)."""
    from framefusion.pipeline.video_qa import open_video_qa

    settings = CaptionSettings(model=MODEL, profile="framefusion", prompt="Describe this video in detail.", frames=4,
                               max_new_tokens=4, backend="pyav")
    qa = open_video_qa(MODEL, get_profile("framefusion"), device="cpu", dtype="float32")
    CaptionRun(folder, settings, tmp_path / "local.jsonl").run(qa)
    return {record["video"]: record["caption"] for record in read_jsonl(tmp_path / "local.jsonl")
            if "caption" in record}


# --------------------------------------------------------------------------------------------------------
# Without Ray running
# --------------------------------------------------------------------------------------------------------


def test_without_ray_installed_the_engine_says_how_to_install_it(folder, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    result = cli(folder, "--output", tmp_path / "out.jsonl", *RAY, *FAST)
    assert result.exit_code == 2
    assert "pip install 'framefusion[ray]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_ray_settings_are_refused_with_the_local_engine(folder, tmp_path, cli):
    result = cli(folder, "--output", tmp_path / "out.jsonl", "--workers", "2", *FAST)
    assert result.exit_code == 2 and "--workers: only with --engine ray" in result.output


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_cluster_address_nothing_answers_at_is_refused_at_once_and_nothing_is_written(folder, tmp_path, cli, scheme):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"{scheme}127.0.0.1:{port}"
    result = cli(folder, "--output", tmp_path / "out.jsonl", "--engine", "ray", "--address", address, *FAST)
    error_line(result, 2, f"--address {address}", "no Ray cluster answers there", "ray start --head",
               before_loading=True)
    assert not (tmp_path / "out.jsonl").exists()


def test_an_address_that_is_not_one_is_refused():
    from framefusion.apps.caption.ray_engine import ray_session

    with pytest.raises(InputError, match="is not a Ray address: use auto, host:port"):
        with ray_session(ray, "my-cluster"):
            pass


def test_a_pool_larger_than_the_machine_is_refused_with_what_fits():
    with pytest.raises(InputError) as refused:
        plan_workers(RayOptions(workers=3, cpus_per_worker=1), "cpu", {"CPU": 2.0}, 1, local=True)
    assert refused.value.setting == "workers" and [s.value for s in refused.value.suggestions] == [2, 1]
    plan = plan_workers(RayOptions(workers=2), "auto", {"CPU": 8.0}, 1, local=True)
    assert (plan.workers, plan.cpus, plan.gpus, plan.device, plan.torch_threads) == (2, 4.0, 0.0, "cpu", 4)
    on_gpus = plan_workers(RayOptions(), "auto", {"CPU": 32.0, "GPU": 4.0}, 1, local=True)
    assert (on_gpus.workers, on_gpus.gpus, on_gpus.device) == (4, 1.0, "auto")


def test_a_model_load_failure_in_a_worker_reaches_the_driver_with_its_setting():
    import base64
    import pickle

    from framefusion.apps.caption.ray_engine import _portable_error
    from framefusion.errors import Suggestion

    failure = InputError("no CUDA GPU is available", setting="device", value="cuda",
                         suggestions=[Suggestion("run on the CPU", setting="device", value="cpu")])
    back = pickle.loads(base64.b64decode(_portable_error(failure)))
    assert type(back) is InputError and (back.setting, back.value, back.suggestions) == ("device", "cuda",
                                                                                         failure.suggestions)

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    assert str(pickle.loads(base64.b64decode(_portable_error(Unpicklable("lost"))))) == "Unpicklable: lost"


def test_rays_log_level_note_is_dropped_from_stderr_and_nothing_else(capfd, monkeypatch):
    from framefusion.apps.caption.ray_stderr import without_ray_log_level_note

    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "fatal")
    note = (b"[2026-12-05 17:14:38,678 I 9877 9877] logging.cc:303: Set ray log level from environment variable "
            b"RAY_BACKEND_LOG_LEVEL to 3\n")
    stderr_before = os.fstat(2)
    with without_ray_log_level_note():  # what Ray's C++ core writes during ray.init, straight to the descriptor
        os.write(2, b"W rpc_client.h:153: Failed to connect to GCS\n")
        os.write(2, note)
        os.write(2, b"E core_worker.cc: a real error\n")
    assert capfd.readouterr().err.splitlines() == ["W rpc_client.h:153: Failed to connect to GCS",
                                                   "E core_worker.cc: a real error"]
    assert os.fstat(2) == stderr_before


# --------------------------------------------------------------------------------------------------------
# On a shared local Ray instance
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_pool_gives_the_local_captions_spread_over_both_workers_and_resumes(ray_instance, folder, tmp_path, cli):
    output = tmp_path / "captions.jsonl"
    first = cli(folder, "--output", output, *RAY, *FAST)
    assert first.exit_code == 1 and output.exists(), first.output  # truncated.mp4 failed
    records = read_jsonl(output)
    captions = {record["video"]: record for record in records if "caption" in record}
    errors = [record for record in records if "error" in record]
    assert sorted(captions) == sorted(GOOD) and [record["video"] for record in errors] == ["truncated.mp4"]
    assert "captioned 4, failed 1" in first.output and "1 not videos" in first.output
    # Same schema as the local engine, with the worker that did the work.
    workers = {record["worker"] for record in captions.values()}
    assert len(workers) == 2 and all(":" in worker and worker != "local" for worker in workers)
    assert all(record["tokens"]["frames"] == 4 and record["timings"]["total"] > 0 for record in captions.values())
    # Greedy captions equal the local engine's, token for token.
    assert {video: record["caption"] for video, record in captions.items()} == local_captions(folder, tmp_path)

    # Run again: nothing captioned twice; the unreadable video is not tried again unless asked (the local engine's
    # resume rule).
    again = cli(folder, "--output", output, *RAY, *FAST)
    assert again.exit_code == 1 and "captioned 0, failed 0, skipped 4 already captioned" in again.output
    assert "1 failed in an earlier run" in again.output
    retried = cli(folder, "--output", output, *RAY, *FAST, "--retry-failed")
    assert retried.exit_code == 1 and "captioned 0, failed 1, skipped 4 already captioned" in retried.output
    records = read_jsonl(output)
    assert Counter(record["video"] for record in records if "caption" in record) == {video: 1 for video in GOOD}
    assert [record["video"] for record in records if "error" in record] == ["truncated.mp4"] * 2


@pytest.mark.slow
def test_a_killed_worker_loses_no_record_and_its_video_is_retried_once(ray_instance, folder, tmp_path, cli,
                                                                         monkeypatch):
    videos = copied_videos(tmp_path / "videos", {name: folder / name for name in GOOD})
    # The worker dies on b.mp4 the first time (the retry captions it) and on d.mp4 both times (an error record).
    monkeypatch.setenv(KILL_WORKER_VARIABLE, "b.mp4=1,d.mp4=2")
    output = tmp_path / "captions.jsonl"
    result = cli(videos, "--output", output, *RAY, *FAST, "--json")
    assert result.exit_code == 1, result.output
    records = read_jsonl(output)
    assert Counter(record["video"] for record in records) == {video: 1 for video in GOOD}
    by_video = {record["video"]: record for record in records}
    assert all("caption" in by_video[video] for video in ("a.mp4", "b.mp4", "c.mkv"))
    assert "died each of the 2 times" in by_video["d.mp4"]["error"]
    summary = json.loads(result.stdout)  # Ray's notes about the dead workers stayed off stdout
    assert summary["failed"][0]["video"] == "d.mp4" and len(summary["captioned"]) == 3


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_keeps_the_records_and_exits_130(ray_instance, folder, tmp_path, cli,
                                                                 monkeypatch):
    from framefusion_cli.caption import ProgressEvents

    pool = []

    def interrupt(self, video, record):
        # The pool's workers (and their decoders) as they run, then Ctrl-C right after the first record is written.
        pool.extend(child for child in descendants(os.getpid()) if "MapWorker" in command_line(child))
        raise KeyboardInterrupt

    monkeypatch.setattr(ProgressEvents, "video_finished", interrupt)
    output = tmp_path / "captions.jsonl"
    result = cli(folder, "--output", output, *RAY, *FAST)
    assert result.exit_code == 130 and "interrupted" in result.output, result.output
    assert len(read_jsonl(output)) == 1
    # The workers end; the Ray instance itself (not started by the command) stays up.
    assert len(pool) >= 2
    leftovers = still_running_after(pool, seconds=10)
    assert not leftovers, describe(leftovers)
    assert ray.is_initialized()


@pytest.mark.slow
def test_a_node_that_cannot_read_a_video_is_named_before_any_model_loads(ray_instance, folder):
    with pytest.raises(InputError) as refused:
        check_videos_visible(ray, folder, ["a.mp4", "only-on-the-driver.mp4"])
    message = str(refused.value)
    assert "1 of 2 videos cannot be read on the Ray node" in message and "only-on-the-driver.mp4" in message


# --------------------------------------------------------------------------------------------------------
# The driver in a subprocess, with its own Ray instance
# --------------------------------------------------------------------------------------------------------

def _start_driver(folder: Path, output: Path) -> subprocess.Popen:
    return subprocess.Popen(
        framefusion_command("caption", folder, "--output", output, "--engine", "ray", "--workers", "1", *FAST),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


@pytest.mark.slow
def test_the_driver_keeps_rays_own_notes_off_stderr(folder, tmp_path):
    videos = copied_videos(tmp_path / "videos", {"a.mp4": folder / "a.mp4"})
    environment = {name: value for name, value in os.environ.items() if name != "RAY_BACKEND_LOG_LEVEL"}
    result = subprocess.run(
        framefusion_command("caption", videos, "--output", tmp_path / "captions.jsonl", "--engine", "ray",
                            "--workers", "1", *FAST),
        capture_output=True, text=True, timeout=300, env=dict(environment, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr
    # Ray's C++ core announces the log level the command sets ("logging.cc: Set ray log level from environment
    # variable RAY_BACKEND_LOG_LEVEL to 3"), and logs routine notes at error level below it: none of them shows.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("1 Ray worker, each"), result.stderr


@pytest.fixture
def many_videos(folder, tmp_path) -> Path:
    return copied_videos(tmp_path / "many", {f"clip_{index:02d}.mp4": folder / "a.mp4" for index in range(12)})


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind(many_videos, tmp_path):
    output = tmp_path / "captions.jsonl"
    process = _start_driver(many_videos, output)
    wait_for_records(process, output, 1, limit=120)
    started = descendants(process.pid)  # Ray's daemons, its workers, their decoders, the reaper
    assert any("raylet" in command_line(child) for child in started), describe(started)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    leftovers = still_running_after(started, seconds=10)
    assert not leftovers, describe(leftovers)
    records = read_jsonl(output)  # every line whole
    assert 1 <= len(records) < 12 and all("caption" in record for record in records)
