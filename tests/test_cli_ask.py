"""`framefusion ask` through the real CLI (typer's CliRunner) with tiny random models and videos of our own."""

import json
from pathlib import Path

import pytest

from cli_checks import error_line, printed_json, printed_json_lines, run_cli

import videos

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"


def ask(*args: str):
    return run_cli("ask", *args)


def ask_json(*args: str):
    return printed_json(ask(*args, "--json", "--max-new-tokens", "4"))


@pytest.mark.parametrize("model", ["random:tiny-qwen2-vl", "random:tiny-qwen2.5-vl", "random:tiny-llava-onevision"])
def test_json_result_has_the_documented_shape_and_framefusion_reduces(model):
    payload = ask_json(str(SAMPLE), "What happens?", "--model", model, "--frames", "8")
    assert set(payload) >= {"answer", "model", "profile", "video", "tokens", "timings"}
    tokens = payload["tokens"]
    assert set(tokens) >= {"frames", "visual", "prompt", "final", "cost", "per_layer", "stages"}
    assert tokens["frames"] == 8 and tokens["visual"] > 0
    assert tokens["final"] < tokens["prompt"]
    assert tokens["cost"] == pytest.approx(0.3, abs=0.05)
    assert len(tokens["per_layer"]) == 8 and max(tokens["per_layer"]) <= tokens["prompt"]
    assert tokens["stages"][0]["before"] == tokens["prompt"]
    assert tokens["stages"][-1]["after"] == tokens["final"]
    assert set(payload["timings"]) == {"decode_video", "preprocess", "vision", "prefill", "generate", "total", "load"}
    assert all(value >= 0 for value in payload["timings"].values())
    # Loading the model is reported but is not part of the answer's total.
    timings = payload["timings"]
    assert timings["load"] > 0
    parts = ("decode_video", "preprocess", "vision", "prefill", "generate")
    # The total holds every part (and what lies between them), never the load: exact relations, no time limits.
    assert timings["total"] >= sum(timings[part] for part in parts)
    assert all(timings[part] > 0 for part in parts)
    assert payload["profile"] == "framefusion"


def test_baseline_keeps_every_token():
    payload = ask_json(str(SAMPLE), "What happens?", "--model", "random:tiny-qwen2-vl", "--frames", "8",
                       "--profile", "baseline")
    tokens = payload["tokens"]
    assert tokens["final"] == tokens["prompt"] and tokens["cost"] == 1.0 and tokens["stages"] == []
    assert tokens["per_layer"] == [tokens["prompt"]] * 8


def test_several_questions_and_compare_give_one_object_each():
    payload = printed_json_lines(ask(str(SAMPLE), "What happens?", "What colour is the ball?", "--model",
                                     "random:tiny-qwen2-vl", "--frames", "8", "--compare", "baseline", "--json",
                                     "--max-new-tokens", "4"))
    assert [item["profile"] for item in payload] == ["framefusion", "framefusion", "baseline", "baseline"]
    assert [item["question"] for item in payload] == ["What happens?", "What colour is the ball?"] * 2
    # The vision encoder ran once per profile run: later questions reuse its features.
    assert payload[1]["timings"]["vision"] == 0.0
    assert payload[0]["tokens"]["final"] < payload[2]["tokens"]["final"]


def test_human_output_streams_the_answer_then_tables():
    result = ask(str(SAMPLE), "What happens?", "--model", "random:tiny-qwen2-vl", "--frames", "8",
                 "--max-new-tokens", "4", "--backend", "pyav")
    assert result.exit_code == 0, result.output
    for text in ("A:", "frames encoded", "prompt tokens", "merge", "final", "LLM prefill", "tokens per layer"):
        assert text in result.stdout


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return videos.broken_videos(tmp_path_factory.mktemp("broken"))


def expect_usage_error(result, *words):
    line = error_line(result, 2, before_loading=True)
    for word in words:
        assert word.lower() in line.lower(), line


def test_bad_videos_are_refused_before_loading(broken, tmp_path):
    for name, path in broken.items():
        expect_usage_error(ask(str(path), "What?", "--model", "random:tiny-qwen2-vl"))
    expect_usage_error(ask(str(tmp_path / "missing.mp4"), "What?"), "missing.mp4")
    expect_usage_error(ask(str(tmp_path), "What?"))


def test_bad_settings_are_refused_before_loading(tmp_path):
    sample = str(SAMPLE)
    expect_usage_error(ask(sample, "What?", "--profile", "nope"), "nope")
    expect_usage_error(ask(sample, "What?", "--frames", "0"), "frames")
    expect_usage_error(ask(sample, "   "), "empty")
    expect_usage_error(ask(sample, "What?", "--model", "random:tiny-nope"), "random:tiny-nope")
    expect_usage_error(ask(sample, "What?", "--model", "random:tiny-qwen2-vl", "--frames", "7"), "even")
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("profiles:\n  mine: [unclosed\n")
    expect_usage_error(ask(sample, "What?", "--profiles-file", str(malformed)), "bad.yaml")
    out_of_range = tmp_path / "range.yaml"
    out_of_range.write_text("profiles:\n  mine:\n    description: too cheap\n    method: framefusion\n    cost: 1.5\n")
    expect_usage_error(ask(sample, "What?", "--profiles-file", str(out_of_range), "--profile", "mine"), "cost")


def test_debug_shows_the_traceback():
    result = ask(str(SAMPLE), "What?", "--profile", "nope", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_profiles_and_models_list_what_is_available():
    result = run_cli("profiles", "--json")
    assert result.exit_code == 0
    profiles = json.loads(result.stdout)
    assert {"baseline", "framefusion", "merge-only", "prune-only"} <= set(profiles)
    assert profiles["framefusion"]["cost"] == 0.3
    result = run_cli("models", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    families = {item["family"]: item["similarity_lower_bound"] for item in listing["families"]}
    assert families.items() >= {"qwen2-vl": 0.5, "qwen2.5-vl": 0.5, "llava-onevision": 0.6}.items()
    assert "random:tiny-qwen2-vl" in json.dumps(listing["random"])


def test_vision_features_computed_under_another_profile_are_reduced():
    from framefusion.pipeline.video_qa import open_video_qa
    from framefusion.profiles.catalog import get_profile
    from framefusion.video import read_video

    qa = open_video_qa("random:tiny-qwen2-vl", get_profile("baseline"), device="cpu")
    clip = read_video(SAMPLE, num_frames=8)
    prepared = qa.prepare_video(clip)  # vision encoder runs with no FrameFusion applied
    qa.use_profile(get_profile("framefusion"))
    result = qa.answer(prepared, "What happens?", max_new_tokens=2)
    assert result.tokens.final < result.tokens.prompt


def test_a_model_without_adapter_still_runs_under_baseline(monkeypatch):
    from framefusion.pipeline import video_qa as pipeline
    from framefusion.model_zoo import load_model, parse_model_spec
    from framefusion.profiles.catalog import get_profile
    from framefusion.video import read_video

    import torch

    # As if the family were unknown to FrameFusion: the baseline profile needs no adapter.
    monkeypatch.setattr(pipeline, "find_family", lambda model: None)
    loaded = load_model(parse_model_spec("random:tiny-qwen2-vl"), dtype=torch.float32, device="cpu")
    qa = pipeline.VideoQA(loaded.model, loaded.processor, model_name=loaded.name, profile=get_profile("baseline"))
    assert qa.family is None
    result = qa.answer(qa.prepare_video(read_video(SAMPLE, num_frames=4)), "What happens?", max_new_tokens=2)
    assert result.tokens.final == result.tokens.prompt
    assert result.tokens.per_layer == [result.tokens.prompt] * 8
    assert result.timings.prefill > 0
