"""`framefusion caption FOLDER`: records, exit status, resume, broken files, timeouts and interruptions.

A real tiny random model (random:tiny-qwen2-vl, 4 frames, 4 new tokens) captions videos written by the tests. The
CLI runs in-process with the model loaded once for the module, except the interruption tests, which start the
real command as a subprocess and kill it mid-batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from framefusion.apps.caption.local import (
    CSV_COLUMNS,
    CaptionFile,
    CaptionRun,
    CaptionSettings,
    DecodeWorker,
    decode_video,
    find_videos,
    settings_key,
)
from framefusion.profiles.catalog import get_profile
from cli_checks import framefusion_command, read_jsonl, run_cli
from processes import describe, descendants, still_running_after, wait_for_records
from videos import copied_videos, write_indexed_video, write_truncated_video

MODEL = "random:tiny-qwen2-vl"
FAST = ["--model", MODEL, "--frames", "4", "--max-new-tokens", "4", "--device", "cpu", "--backend", "pyav"]
GOOD = ("short.mp4", "long.MP4", "wide.mkv", "odd.webm", "sub/nested.mov")
BROKEN = ("empty.mp4", "truncated.mp4", "notes.mp4")


@pytest.fixture(scope="module")
def qa():
    from framefusion.pipeline.video_qa import open_video_qa

    return open_video_qa(MODEL, get_profile("framefusion"), device="cpu", dtype="float32")


@pytest.fixture
def cli(qa, monkeypatch):
    """Invoke `caption` in-process; the model is loaded once for the module instead of once per run."""
    import framefusion.pipeline.video_qa as pipeline

    loads = []

    def reuse_model(model_spec, profile, **kwargs):
        loads.append(model_spec)
        assert model_spec == MODEL
        qa.use_profile(profile)
        return qa

    monkeypatch.setattr(pipeline, "open_video_qa", reuse_model)

    def invoke(*args: object):
        return run_cli("caption", *args)

    invoke.loads = loads
    return invoke


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Good videos of several sizes, lengths and containers, broken files, a non-video and a subfolder."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "sub").mkdir()
    write_indexed_video(folder, "short.mp4", seconds=0.5, fps=8)
    write_indexed_video(folder, "long.MP4", seconds=6.0, fps=10, width=96, height=64)
    write_indexed_video(folder, "wide.mkv", seconds=2.0, fps=12, width=160, height=90)
    write_indexed_video(folder, "odd.webm", seconds=1.0, fps=8, width=34, height=22, codec="libvpx-vp9")
    write_indexed_video(folder / "sub", "nested.mov", seconds=1.0, fps=8)
    (folder / "empty.mp4").write_bytes(b"")
    write_truncated_video(folder)
    (folder / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    (folder / "readme.txt").write_text("not a video either")
    return folder


def captions_by_video(records: list[dict]) -> Counter:
    return Counter(record["video"] for record in records if "caption" in record)


# --------------------------------------------------------------------------------------------------------
# Without a model
# --------------------------------------------------------------------------------------------------------


def test_videos_are_found_by_extension_any_case_and_subfolders_only_when_recursive(video_folder):
    flat = find_videos(video_folder)
    assert set(flat.videos) == set(GOOD[:-1]) | set(BROKEN)
    assert flat.others == ("readme.txt",)
    deep = find_videos(video_folder, recursive=True)
    assert set(deep.videos) == set(GOOD) | set(BROKEN)


@pytest.mark.parametrize("problem", ["missing folder", "folder is a file", "output in missing folder",
                                     "output is a folder", "empty prompt", "bad format"])
def test_usage_errors_exit_2_before_the_model_is_loaded(problem, video_folder, tmp_path, cli):
    folder, output, extra = video_folder, tmp_path / "out.jsonl", []
    if problem == "missing folder":
        folder = tmp_path / "nowhere"
    elif problem == "folder is a file":
        folder = video_folder / "short.mp4"
    elif problem == "output in missing folder":
        output = tmp_path / "missing" / "out.jsonl"
    elif problem == "output is a folder":
        output = tmp_path
    elif problem == "empty prompt":
        extra = ["--prompt", "  "]
    else:
        extra = ["--format", "xml"]
    result = cli(folder, "--output", output, *FAST, *extra)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert cli.loads == []
    assert not (tmp_path / "out.jsonl").exists()


def test_a_record_torn_by_a_kill_is_cut_off_and_the_file_stays_appendable(tmp_path):
    path = tmp_path / "captions.jsonl"
    whole = {"video": "a.mp4", "caption": "a cat", "model": "m", "profile": "p", "prompt": "q", "frames": 4}
    path.write_text(json.dumps(whole) + "\n" + '{"video": "b.mp4", "capt')
    opened = CaptionFile(path)
    assert opened.records == [whole] and opened.repaired_bytes > 0
    opened.append(dict(whole, video="b.mp4"))
    assert [record["video"] for record in read_jsonl(path)] == ["a.mp4", "b.mp4"]


def test_csv_torn_inside_a_quoted_multiline_caption_is_cut_off(tmp_path):
    path = tmp_path / "captions.csv"
    settings = CaptionSettings(model="m", profile="p", prompt='say "what"', frames=4)
    record = {"video": "a.mp4", "caption": 'line one\nline "two"', "model": "m", "profile": "p",
              "prompt": 'say "what"', "frames": 4, "fps": None, "max_frames": None}
    first = CaptionFile(path, "csv")
    first.append(record)
    whole = path.read_bytes()
    # A second record cut right after the newline inside its quoted caption looks like a complete line.
    path.write_bytes(whole + whole.split(b"\n", 1)[1][: whole.split(b"\n", 1)[1].index(b"\n") + 1])
    reopened = CaptionFile(path, "csv")
    assert path.read_bytes() == whole and reopened.repaired_bytes > 0
    assert [row["caption"] for row in reopened.records] == [record["caption"]]
    assert reopened.caption_keys() == {("a.mp4", settings.key())}


def test_a_csv_file_from_before_the_worker_column_is_resumed_in_its_own_columns(tmp_path):
    path = tmp_path / "captions.csv"
    old_columns = [column for column in CSV_COLUMNS if column not in ("worker", "unreadable")]
    old_row = {**dict.fromkeys(old_columns, ""), "video": "a.mp4", "caption": "a cat", "model": "m", "profile": "p",
               "prompt": "q", "frames": "4"}
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=old_columns, lineterminator="\n")
        writer.writeheader()
        writer.writerow(old_row)
    opened = CaptionFile(path, "csv")
    assert opened.caption_keys() == {("a.mp4", CaptionSettings(model="m", profile="p", prompt="q", frames=4).key())}
    opened.append({"video": "b.mp4", "caption": "a dog", "model": "m", "profile": "p", "prompt": "q", "frames": 4,
                   "worker": "local"})
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == old_columns and [row["video"] for row in rows] == ["a.mp4", "b.mp4"]


def test_settings_key_is_the_same_read_back_from_csv_and_jsonl():
    settings = CaptionSettings(model="m", profile="p", prompt="q", frames=None, fps=2.0, max_frames=16)
    as_json = json.loads(json.dumps({"model": "m", "profile": "p", "prompt": "q", **settings.sampling()}))
    as_csv = {"model": "m", "profile": "p", "prompt": "q", "frames": "7", "fps": "2.0", "max_frames": "16"}
    assert settings_key(as_json) == settings_key(as_csv) == settings.key()
    assert CaptionSettings(model="m", profile="p", prompt="q", frames=4).key() != settings.key()


# --------------------------------------------------------------------------------------------------------
# With the tiny model
# --------------------------------------------------------------------------------------------------------


def test_folder_records_exit_status_resume_and_changed_settings(video_folder, tmp_path, cli):
    output = tmp_path / "captions.jsonl"
    first = cli(video_folder, "--output", output, "--recursive", *FAST)
    assert first.exit_code == 1, first.output  # some files are broken
    records = read_jsonl(output)
    assert len(records) == len(GOOD) + len(BROKEN)  # one per video, none for readme.txt
    by_video = {record["video"]: record for record in records}
    for name in GOOD:
        record = by_video[name]
        assert isinstance(record["caption"], str) and "error" not in record
        assert record["model"] == MODEL and record["profile"] == "framefusion" and record["frames"] == 4
        assert record["tokens"]["frames"] == 4 and record["tokens"]["final"] <= record["tokens"]["prompt"]
        assert record["timings"]["total"] > 0 and set(record["versions"]) == {"framefusion", "transformers", "torch"}
        assert record["worker"] == "local"
    for name in BROKEN:
        error = by_video[name]["error"]
        assert "caption" not in by_video[name] and "\n" not in error and error
    assert "empty" in by_video["empty.mp4"]["error"] and "not a readable video" in by_video["notes.mp4"]["error"]
    summary = first.output
    assert "captioned 5, failed 3" in summary and "1 not videos" in summary
    for name in BROKEN:
        assert name in summary

    # The same command again: nothing is captioned twice, the failed ones are not tried again (exit 1 still: the
    # batch is not complete), unless asked.
    again = cli(video_folder, "--output", output, "--recursive", *FAST)
    assert again.exit_code == 1 and "captioned 0, failed 0, skipped 5 already captioned" in again.output
    assert "3 failed in an earlier run" in again.output and "--retry-failed" in again.output
    records = read_jsonl(output)
    assert max(captions_by_video(records).values()) == 1
    assert Counter(record["video"] for record in records if "error" in record) == {name: 1 for name in BROKEN}
    retried = cli(video_folder, "--output", output, "--recursive", *FAST, "--retry-failed")
    assert retried.exit_code == 1 and "captioned 0, failed 3, skipped 5 already captioned" in retried.output
    records = read_jsonl(output)
    assert Counter(record["video"] for record in records if "error" in record) == {name: 2 for name in BROKEN}

    # A changed setting captions every video again, once.
    changed = cli(video_folder, "--output", output, "--recursive", *FAST, "--prompt", "What moves?")
    assert changed.exit_code == 1 and "captioned 5" in changed.output
    assert captions_by_video(read_jsonl(output)) == {name: 2 for name in GOOD}


def test_exit_0_when_every_video_is_captioned_and_no_model_when_nothing_is_left(video_folder, tmp_path, cli):
    good_only = copied_videos(tmp_path / "good", {name: video_folder / name for name in ("short.mp4", "wide.mkv")})
    output = tmp_path / "captions.jsonl"
    assert cli(good_only, "--output", output, *FAST).exit_code == 0
    assert cli.loads == [MODEL]
    rerun = cli(good_only, "--output", output, *FAST, "--json")
    assert rerun.exit_code == 0 and cli.loads == [MODEL]  # everything was done: no model loaded
    summary = json.loads(rerun.stdout)
    assert summary["captioned"] == [] and sorted(summary["skipped_already_captioned"]) == ["short.mp4", "wide.mkv"]


def test_csv_output_flattens_records_and_resumes_by_the_same_rule(video_folder, tmp_path, cli):
    output = tmp_path / "captions.csv"
    assert cli(video_folder, "--output", output, *FAST).exit_code == 1
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert len(rows) == len(GOOD) - 1 + len(BROKEN)  # not recursive: sub/nested.mov left out
    captioned = [row for row in rows if not row["error"]]
    assert {row["video"] for row in captioned} == set(GOOD[:-1])
    assert all(int(row["tokens_final"]) <= int(row["tokens_prompt"]) and float(row["timings_total"]) > 0
               for row in captioned)
    assert "tokens_per_layer" not in rows[0]
    again = cli(video_folder, "--output", output, *FAST)
    assert again.exit_code == 1 and "captioned 0" in again.output
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert max(Counter(row["video"] for row in rows if not row["error"]).values()) == 1


def _abort_on_crash_files(path: str, settings: CaptionSettings):
    """A decoder that dies like decord does on some corrupt files: the whole process aborts."""
    if "crash" in Path(path).name:
        os.abort()
    return decode_video(path, settings)


def test_a_decoder_crash_on_one_file_does_not_stop_the_batch(video_folder, tmp_path, qa):
    short = video_folder / "short.mp4"
    folder = copied_videos(tmp_path / "videos", {"a.mp4": short, "crash.mp4": short, "z.mp4": short})
    settings = CaptionSettings(model=MODEL, profile="framefusion", prompt="Describe.", frames=4, max_new_tokens=4)
    run = CaptionRun(folder, settings, tmp_path / "captions.jsonl")
    summary = run.run(qa, worker=DecodeWorker(_abort_on_crash_files))
    assert summary.captioned == ["a.mp4", "z.mp4"]
    assert [video for video, _ in summary.failed] == ["crash.mp4"]
    assert "decoder crashed" in summary.failed[0][1] and "SIGABRT" in summary.failed[0][1]
    assert len(read_jsonl(tmp_path / "captions.jsonl")) == 3


def test_the_decoder_child_ends_at_once_on_sigterm_even_when_started_while_a_record_was_written():
    from framefusion.apps.caption.records import _signals_held

    worker = DecodeWorker()
    with _signals_held():  # SIGTERM blocked here, as during a record's write: fork would hand that to the child
        worker.start()
    child = psutil.Process(worker.pid)
    child.terminate()
    try:
        assert not still_running_after([child], seconds=5)
    finally:
        worker.stop()


def _slow_decoder(path: str, settings: CaptionSettings):
    """A decoder that hangs on slow*.mp4: it notes its process id beside the video, and that it finished, if ever."""
    video = Path(path)
    if "slow" in video.name:
        video.with_suffix(".pid").write_text(str(os.getpid()))
        time.sleep(60)
        video.with_suffix(".finished").write_text("the timeout did not stop me")
    return decode_video(path, settings)


@pytest.mark.slow
def test_timeout_bounds_decoding_and_the_model_and_the_next_video_still_works(video_folder, tmp_path, qa):
    short = video_folder / "short.mp4"
    folder = copied_videos(tmp_path / "videos", {"a.mp4": short, "slow.mp4": short, "z.mp4": short})
    settings = CaptionSettings(model=MODEL, profile="framefusion", prompt="Describe.", frames=4, max_new_tokens=4,
                               timeout=5.0)
    summary = CaptionRun(folder, settings, tmp_path / "decode.jsonl").run(qa, worker=DecodeWorker(_slow_decoder))
    # The hung decoder was ended, not waited for: its process is gone and it never got to finish.
    try:
        hung = [psutil.Process(int((folder / "slow.pid").read_text()))]
    except psutil.NoSuchProcess:
        hung = []
    assert not still_running_after(hung, seconds=5)
    assert not (folder / "slow.finished").exists()
    assert summary.captioned == ["a.mp4", "z.mp4"] and summary.failed[0][0] == "slow.mp4"
    assert summary.failed[0][1].startswith("timeout=5")

    # A model too slow for the limit: every video fails with a timeout, and the model still works afterwards.
    hurried = CaptionSettings(**{**settings.__dict__, "timeout": 1e-4})
    summary = CaptionRun(folder, hurried, tmp_path / "model.jsonl").run(qa)
    assert len(summary.failed) == 3 and all(error.startswith("timeout=0.0001") for _, error in summary.failed)
    relaxed = CaptionSettings(**{**settings.__dict__, "timeout": None})
    assert len(CaptionRun(folder, relaxed, tmp_path / "model.jsonl").run(qa).captioned) == 3


# --------------------------------------------------------------------------------------------------------
# Interruptions: the real command in a subprocess
# --------------------------------------------------------------------------------------------------------

def _start_cli(folder: Path, output: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return subprocess.Popen(framefusion_command("caption", folder, "--output", output, *FAST),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def many_videos(video_folder, tmp_path) -> Path:
    return copied_videos(tmp_path / "many", {f"clip_{index:02d}.mp4": video_folder / "short.mp4" for index in range(8)})


@pytest.mark.slow
def test_kill_9_mid_batch_leaves_a_valid_file_that_the_next_run_completes(many_videos, tmp_path, cli):
    output = tmp_path / "captions.jsonl"
    process = _start_cli(many_videos, output)
    wait_for_records(process, output, 2, limit=90)
    children = descendants(process.pid)
    assert children, "the decoder child should be running mid-batch"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # Nothing the killed command started lives on (its decoder ends by itself once its parent is gone).
    orphans = still_running_after(children, seconds=5)
    assert not orphans, describe(orphans)
    done = read_jsonl(output)  # every line parses
    assert 2 <= len(done) < 8
    # What a kill in the middle of a write would leave behind.
    with open(output, "a") as file:
        file.write('{"video": "clip_11.mp4", "capt')

    rerun = cli(many_videos, "--output", output, *FAST)
    assert rerun.exit_code == 0, rerun.output
    records = read_jsonl(output)
    assert captions_by_video(records) == {f"clip_{index:02d}.mp4": 1 for index in range(8)}
    assert records[: len(done)] == done


@pytest.mark.slow
def test_ctrl_c_drops_the_current_video_and_exits_130(many_videos, tmp_path):
    output = tmp_path / "captions.jsonl"
    process = _start_cli(many_videos, output)
    wait_for_records(process, output, 1, limit=90)
    process.send_signal(signal.SIGINT)
    text = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, text
    assert "interrupted" in text
    records = read_jsonl(output)
    assert 1 <= len(records) < 8 and all("caption" in record for record in records)
