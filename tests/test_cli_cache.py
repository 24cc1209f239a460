"""The vision-feature cache through `ask`: a second run hits, answers the same, and skips decoding and vision."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_checks import printed_json, read_jsonl, run_cli
from videos import copied_videos

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.mp4"
ASK = ["--frames", "8", "--max-new-tokens", "8", "--device", "cpu", "--json"]


def ask(video, *extra: str, model: str = "random:tiny-qwen2-vl"):
    result = run_cli("ask", video, "What happens?", "--model", model, *ASK, *extra)
    return printed_json(result), result.stderr


def comparable(payload: dict) -> dict:
    return {key: payload[key] for key in ("answer", "tokens", "new_tokens", "settings")}


@pytest.mark.parametrize("model", ["random:tiny-qwen2-vl", "random:tiny-llava-onevision", "random:tiny-smolvlm"])
def test_a_second_ask_hits_and_gives_the_same_answer_and_report_without_decoding_or_vision(tmp_path, model):
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    first, _ = ask(video, model=model)
    second, _ = ask(video, model=model)
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert comparable(second) == comparable(first)
    assert second["timings"]["decode_video"] == 0 and second["timings"]["vision"] == 0
    assert first["timings"]["vision"] > 0


def test_another_file_model_or_sampling_misses_and_no_cache_is_off(tmp_path):
    video = Path(shutil.copy(SAMPLE, tmp_path / "clip.mp4"))
    assert ask(video)[0]["cache"] == "miss"
    assert ask(video, "--no-cache")[0]["cache"] == "off"
    assert ask(video, "--start", "0.5")[0]["cache"] == "miss"
    assert ask(video, model="random:tiny-qwen2.5-vl")[0]["cache"] == "miss"
    os.utime(video, (1_000_000, 1_000_000))  # the same bytes, touched: treated as a changed file
    assert ask(video)[0]["cache"] == "miss"
    assert ask(video)[0]["cache"] == "hit"


def test_a_corrupted_or_unwritable_cache_is_a_miss_with_one_warning(tmp_path):
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    folder = Path(os.environ["FRAMEFUSION_FEATURE_CACHE"])
    first, _ = ask(video)
    for entry in folder.glob("*/*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:100])
    (folder / "garbage.safetensors").write_bytes(b"junk")
    damaged, stderr = ask(video)
    assert damaged["cache"] == "miss" and damaged["answer"] == first["answer"]
    assert stderr.count("warning:") == 1 and "damaged" in stderr and "Traceback" not in stderr
    shutil.rmtree(folder)
    folder.write_text("a file where the feature folder should be")
    unwritable, stderr = ask(video)
    assert unwritable["cache"] == "miss" and unwritable["answer"] == first["answer"]
    assert stderr.count("warning:") == 1 and "cannot write the feature cache" in stderr


def test_cache_info_and_clear(tmp_path):
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    ask(video)
    ask(video, model="random:tiny-llava-onevision")
    info = json.loads(run_cli("cache", "info", "--json").stdout)
    assert info["entries"] == 2 and info["bytes"] > 0 and info["folder"] == os.environ["FRAMEFUSION_FEATURE_CACHE"]
    human = " ".join(run_cli("cache", "info", env={"COLUMNS": "200"}).stdout.split())
    assert human.startswith(f"2 entries, {info['bytes'] / 1e6:.1f} MB of ") and info["folder"] in human
    cleared = run_cli("cache", "clear", "--model", "random:tiny-qwen2-vl")
    assert cleared.exit_code == 0 and "removed 1 entry" in cleared.stdout
    assert run_cli("cache", "clear", "--older-than", "1h").stdout.strip() == "removed 0 entries"
    bad = run_cli("cache", "clear", "--older-than", "soon")
    assert bad.exit_code == 2 and "--older-than soon" in bad.stderr
    unasked = run_cli("cache", "clear")  # stdin is not a terminal: nothing to answer a question with
    assert unasked.exit_code == 2 and "--yes" in unasked.stderr
    nobody = run_cli("cache", "clear", "--model", "nope")
    assert nobody.exit_code == 2 and "--model nope" in nobody.stderr and "random:tiny-llava-onevision" in nobody.stderr
    assert json.loads(run_cli("cache", "info", "--json").stdout)["entries"] == 1  # nothing removed
    assert "removed 1 entry" in run_cli("cache", "clear", "--yes").stdout
    assert json.loads(run_cli("cache", "info", "--json").stdout)["entries"] == 0


def test_caption_uses_the_cache_of_ask_and_gives_the_same_caption(tmp_path):
    folder = copied_videos(tmp_path / "videos", {"clip.mp4": SAMPLE})
    output = tmp_path / "captions.jsonl"
    arguments = ["caption", str(folder), "--model", "random:tiny-qwen2-vl", "--frames", "8", "--max-new-tokens", "8",
                 "--device", "cpu", "--backend", "pyav", "--prompt", "What happens?"]
    first = run_cli(*arguments, "--output", str(output))
    assert first.exit_code == 0, first.output
    [miss] = read_jsonl(output)
    again = tmp_path / "again.jsonl"
    second = run_cli(*arguments, "--output", str(again))
    assert second.exit_code == 0, second.output
    [hit] = read_jsonl(again)
    assert hit["caption"] == miss["caption"] and hit["tokens"] == miss["tokens"]
    assert hit["timings"]["vision"] == 0 and miss["timings"]["vision"] > 0
    # The same video asked about with the same sampling hits the entry caption left.
    payload, _ = ask(folder / "clip.mp4")
    assert payload["cache"] == "hit" and payload["answer"] == miss["caption"]
