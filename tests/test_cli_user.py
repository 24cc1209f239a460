"""The command line as a demanding new user meets it: refused before loading, nothing lost on a typo in chat, stderr
kept to our own progress and errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_checks import error_line, printed_json_lines, run_cli
from videos import copied_videos

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
TINY = ["--model", "random:tiny-qwen2-vl", "--frames", "4", "--max-new-tokens", "2", "--no-cache"]


@pytest.mark.parametrize("args, words", [
    (["--start", "100"], ["--start 100.0", "past the end"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens 0", "at least 1"]),
    (["--temperature", "-1"], ["--temperature -1.0"]),
    (["--attn", "flash_attention_2"], ["--attn flash_attention_2", "flash_attn"]),
    (["--device", "tpu"], ["--device tpu", "unknown device"]),
    (["--dtype", "float8"], ["--dtype float8", "unknown dtype"]),
    (["--fps", "2"], ["--fps 2.0", "not both"]),
    (["--start", "2", "--end", "1"], ["--end 1.0", "after the start"]),
])
def test_bad_settings_are_refused_in_one_line_before_the_model_loads(args, words, monkeypatch):
    import framefusion.model_zoo.loading as loading

    def never_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "_from_pretrained", never_loaded)
    result = run_cli("ask", str(SAMPLE), "What happens?", *TINY, *args)
    error_line(result, 2, *words, before_loading=True)


def test_a_mistyped_chat_command_is_a_note_and_the_conversation_goes_on(tmp_path):
    saved = tmp_path / "chat.json"
    lines = ["/tokens", "/save", f"/save {tmp_path / 'missing' / 'chat.json'}", "/bogus", "What happens?",
             f"/save {saved}", "quit", "never asked"]
    result = run_cli("chat", str(SAMPLE), *TINY, "--json", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [turn["question"] for turn in turns] == ["What happens?"]  # "quit" ended it; nothing after was asked
    notes = result.stderr
    assert "no answer yet" in notes and "/save needs a file name" in notes and "unknown command /bogus" in notes
    assert "cannot write the conversation" in notes
    assert [turn["question"] for turn in json.loads(saved.read_text())["turns"]] == ["What happens?"]


@pytest.mark.parametrize("word", ["/exit", "/quit", "exit", "quit", "QUIT"])
def test_every_way_to_leave_chat_ends_it_without_asking_the_model(word):
    result = run_cli("chat", str(SAMPLE), *TINY, "--json", input=f"{word}\nWhat happens?\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""


def test_stderr_holds_only_our_progress_when_it_is_not_a_terminal():
    result = run_cli("ask", str(SAMPLE), "What happens?", *TINY, "--json")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["loading random:tiny-qwen2-vl ..."]


@pytest.mark.parametrize("args, words", [
    ([], ["Missing argument 'video'", "`framefusion ask --help`"]),
    ([str(SAMPLE)], ["Missing argument 'questions'"]),
    ([str(SAMPLE), "hi", "--bogus"], ["No such option: --bogus"]),
    ([str(SAMPLE), "hi", "--frames", "x"], ["Invalid value for '--frames'"]),
])
def test_usage_errors_are_one_line_with_exit_2(args, words):
    result = run_cli("ask", *args)
    error_line(result, 2, *words, before_loading=True)


@pytest.mark.parametrize("model, suggestion", [("qwen2-vl2b", "qwen2-vl-2b"), ("random:tiny-qwen2vl",
                                                                               "random:tiny-qwen2-vl")])
def test_a_mistyped_model_name_gets_a_did_you_mean(model, suggestion):
    result = run_cli("ask", str(SAMPLE), "hi", "--model", model)
    assert result.exit_code == 2 and f"did you mean {suggestion!r}" in result.stderr


def test_help_reads_at_80_columns_and_names_the_extras_and_the_exit_codes():
    top = run_cli("--help", env={"COLUMNS": "80"}).stdout
    assert "Exit status: 0 success, 1 processing failed, 2 bad input or usage, 130" in " ".join(top.split())
    # A docstring's own line breaks are not kept: on a wide terminal calibrate's help is one line.
    wide = run_cli("--help", env={"COLUMNS": "300"}).stdout
    [calibrate] = [line for line in wide.splitlines() if "calibrate " in line]
    assert "layer by layer, and propose FrameFusion's similarity threshold" in calibrate
    caption = run_cli("caption", "--help", env={"COLUMNS": "200"}).stdout
    assert "'framefusion[ray]'" in caption


def _every_command_path(command, path=()):
    yield path
    for name, subcommand in getattr(command, "commands", {}).items():
        yield from _every_command_path(subcommand, (*path, name))


# Typer 0.2x's placeholders from Python types: `--json <bool>` (a flag takes no value), `<list[str]>`, `{video}`.
TYPE_PLACEHOLDERS = re.compile(r"<bool>|<list|\[(?:str|int|float|bool|Path)\]|\{\w+\}")


def test_no_help_shows_a_python_type_as_a_placeholder():
    import typer

    from framefusion_cli.app import app

    paths = list(_every_command_path(typer.main.get_command(app)))
    assert ("ask",) in paths and ("cache", "clear") in paths
    for path in paths:
        result = run_cli(*path, "--help", env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        found = TYPE_PLACEHOLDERS.findall(result.stdout)
        assert not found, f"`framefusion {' '.join(path)} --help` shows {found}:\n{result.stdout}"

    def help_of(*path):
        return run_cli(*path, "--help", env={"COLUMNS": "200"}).stdout

    def row(text, option):
        [line] = [line for line in text.splitlines() if f" {option} " in line]
        return " ".join(line.strip("│ ").split())

    ask = help_of("ask")
    assert "Usage: framefusion ask [OPTIONS] VIDEO QUESTIONS..." in ask
    assert row(ask, "questions...").startswith("* questions... <str> One or more questions")
    assert row(ask, "--json").startswith("--json Print only JSON")
    assert row(ask, "--help").startswith("--help -h Show this message")
    assert "Usage: framefusion calibrate [OPTIONS] [VIDEOS]..." in help_of("calibrate")
    assert row(help_of("bench"), "--profiles").startswith("--profiles PROFILES Comma-separated")
    assert row(help_of(), "--version").startswith("--version Show the version")


def test_version_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom framefusion_cli.app import app\n"
            "result = CliRunner().invoke(app, ['--version'])\n"
            "print(result.stdout.strip(), 'torch' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "framefusion 0.1.0 False"


def test_caption_refuses_a_format_its_output_file_contradicts_and_leaves_the_file_alone(tmp_path):
    folder = copied_videos(tmp_path / "videos", {"clip.mp4": SAMPLE})
    by_extension = run_cli("caption", folder, "-o", tmp_path / "caps.csv", "--format", "jsonl", *TINY)
    assert by_extension.exit_code == 2 and "--format jsonl" in by_extension.stderr
    assert not (tmp_path / "caps.csv").exists()
    csv_file = tmp_path / "caps.txt"
    csv_file.write_text("video,caption\nclip.mp4,hello\n")
    by_content = run_cli("caption", str(folder), "-o", str(csv_file), *TINY)  # .txt: jsonl by default
    assert by_content.exit_code == 2 and "already holds csv records" in by_content.stderr
    assert csv_file.read_text() == "video,caption\nclip.mp4,hello\n"


def test_caption_of_a_folder_without_videos_says_so_and_points_to_subfolders(tmp_path):
    copied_videos(tmp_path / "sub", {"clip.mp4": SAMPLE})
    result = run_cli("caption", str(tmp_path), "-o", str(tmp_path / "caps.jsonl"), *TINY)
    assert result.exit_code == 2 and "holds no videos directly (1 in its subfolders)" in result.stderr
    assert "--recursive" in result.stderr and not (tmp_path / "caps.jsonl").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("caption", str(empty), "-o", str(tmp_path / "caps.jsonl"), *TINY)
    assert result.exit_code == 2 and "holds no videos" in result.stderr and "--recursive" not in result.stderr


def test_listings_read_at_80_columns_with_settings_as_yaml_writes_them():
    profiles = run_cli("profiles", env={"COLUMNS": "80"}).stdout
    assert "…" not in profiles and "{'" not in profiles
    assert "- kind: evs, pruning_rate: 0.75" in profiles
    models = run_cli("models", env={"COLUMNS": "80"}).stdout
    assert '{"spec"' not in models and "Qwen/Qwen2-VL-2B-Instruct" in models
    assert all(len(line) <= 80 for line in profiles.splitlines() + models.splitlines())


def test_bench_and_chat_tables_keep_their_headings_whole_at_80_columns():
    bench = run_cli("bench", "--model", "random:tiny-qwen2-vl", "--frames", "4", "--repeat", "1",
                    "--warmup", "0", "--max-new-tokens", "2", "--profiles", "baseline,framefusion,evs",
                    "--device", "cpu", env={"COLUMNS": "80"})
    assert bench.exit_code == 0, bench.output
    assert "…" not in bench.stdout
    for heading in ("LLM prefill", "time to first token", "peak memory", "framefusion", "evs"):
        assert heading in bench.stdout
    chat = run_cli("chat", SAMPLE, *TINY, "--show-tokens", input="What happens?\n", env={"COLUMNS": "80"})
    assert chat.exit_code == 0, chat.output
    assert "…" not in chat.stdout and "conversation" in chat.stdout and "generation" in chat.stdout


def test_compare_labels_each_question_and_sums_up_each_pair_without_the_feature_cache():
    args = ["ask", str(SAMPLE), "What happens?", "Anything else?", "--model", "random:tiny-qwen2-vl", "--frames", "4",
            "--max-new-tokens", "2", "--compare", "baseline"]
    cached = run_cli(*args[:-2])  # the same video asked once before, without --compare: its features cached
    assert cached.exit_code == 0 and printed_json_lines(run_cli(*args[:-2], "--json"))[0]["cache"] == "hit"
    result = run_cli(*args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Q1: What happens?" in result.stdout and "Q2: Anything else?" in result.stdout
    assert result.stdout.count("framefusion vs baseline: final tokens") == 2
    assert "feature cache" not in result.stdout  # both sides encoded: timed alike


def test_a_feature_cache_hit_is_said_in_the_timing_table():
    args = ["ask", str(SAMPLE), "What happens?", "--model", "random:tiny-qwen2-vl", "--frames", "4",
            "--max-new-tokens", "2"]
    first = run_cli(*args, env={"COLUMNS": "200"})
    again = run_cli(*args, env={"COLUMNS": "200"})
    assert "feature cache" not in first.stdout
    assert "the video's features came from the feature cache" in again.stdout


def test_max_frames_without_fps_warns_that_it_does_nothing():
    result = run_cli("ask", str(SAMPLE), "What happens?", *TINY, "--max-frames", "8", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: --max-frames caps sampling at a rate only" in result.stderr
    quiet = run_cli("ask", str(SAMPLE), "What happens?", *TINY, "--json")
    assert "warning" not in quiet.stderr


def test_bench_samples_like_ask_with_a_rate_and_a_span():
    result = run_cli("bench", str(SAMPLE), "--model", "random:tiny-llava-onevision", "--fps", "1",
                     "--start", "1", "--end", "5", "--repeat", "1", "--warmup", "0", "--max-new-tokens",
                     "1", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert {run["tokens"]["frames"] for run in json.loads(result.stdout)["results"]} == {4}  # 4 s at 1 frame/s
