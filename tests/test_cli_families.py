"""Every supported family through the real CLI: `ask --json` for each, `caption` and `bench` for the families whose
processor writes a video's frames as images (their vision features travel to generate() as the "image" modality).

Tiny random models (`random:tiny-<family>`), 4 frames of examples/sample.mp4, 4 new tokens: the answers are gibberish,
but the token counts, stages and exit codes are real.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from framefusion.runtime import transformers_compat as compat
from framefusion.families import registered_families, supported_families
from framefusion.model_zoo import tiny_families

from cli_checks import read_jsonl, run_cli
from videos import copied_videos

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
FAST = ["--frames", "4", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32"]
TINY_FAMILIES = tiny_families()
FRAMES_AS_IMAGES = [family.name for family in registered_families() if family.video_modality == "image"]


def invoke(*arguments: str):
    """Run the CLI; returns the result after checking that no deprecation was warned or printed on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli(*arguments)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert deprecations == []
    assert "FutureWarning" not in result.stderr and "DeprecationWarning" not in result.stderr, result.stderr
    return result


def ask_json(family: str, *extra: str) -> dict:
    result = invoke("ask", str(SAMPLE), "What happens?", "--model", f"random:tiny-{family}", *FAST, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_reduced(tokens: dict) -> None:
    assert tokens["frames"] == 4 and tokens["visual"] > 0
    assert tokens["final"] < tokens["prompt"]
    assert tokens["stages"], "FrameFusion recorded no merge or prune step"
    assert tokens["stages"][0]["before"] == tokens["prompt"] and tokens["stages"][-1]["after"] == tokens["final"]
    assert 0 < tokens["cost"] < 1


def test_every_supported_family_has_a_tiny_model():
    assert set(TINY_FAMILIES) == set(supported_families())
    assert FRAMES_AS_IMAGES, "no family writes frames as images any more: the caption/bench tests below test nothing"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_ask_json_answers_and_reduces_for_every_family(family):
    payload = ask_json(family)
    assert payload["profile"] == "framefusion" and payload["model"] == f"random:tiny-{family}"
    assert 1 <= payload["new_tokens"] <= 4
    assert_reduced(payload["tokens"])
    timings = payload["timings"]
    assert timings["vision"] > 0 and timings["prefill"] > 0
    assert timings["total"] >= timings["vision"] + timings["prefill"]


@pytest.mark.parametrize("family", FRAMES_AS_IMAGES)
def test_without_pre_encoded_features_generate_encodes_and_answers_the_same(family, monkeypatch):
    pre_encoded = ask_json(family)
    # As if the model could not take pre-encoded features: generate() encodes the frames itself, inside the answer.
    monkeypatch.setattr(compat, "vision_encoder", lambda model, modality: None)
    encoded_by_generate = ask_json(family, "--no-cache")  # the first run left its features in the cache
    assert encoded_by_generate["answer"] == pre_encoded["answer"]
    assert encoded_by_generate["tokens"] == pre_encoded["tokens"]
    timings = encoded_by_generate["timings"]
    # The encoder ran inside generate(), before the prefill: it is reported as vision time all the same.
    assert timings["vision"] > 0
    assert timings["total"] >= sum(timings[part] for part in ("decode_video", "preprocess", "vision", "prefill"))


@pytest.mark.parametrize("family", FRAMES_AS_IMAGES)
def test_caption_writes_a_reduced_record(family, tmp_path):
    folder = copied_videos(tmp_path / "videos", {"sample.mp4": SAMPLE})
    output = tmp_path / "captions.jsonl"
    result = invoke("caption", str(folder), "--output", str(output), "--model", f"random:tiny-{family}", *FAST)
    assert result.exit_code == 0, result.output
    [record] = read_jsonl(output)
    assert record["video"] == "sample.mp4" and "error" not in record
    assert record["model"] == f"random:tiny-{family}" and 1 <= record["new_tokens"] <= 4
    assert_reduced(record["tokens"])


@pytest.mark.parametrize("family", FRAMES_AS_IMAGES)
def test_bench_compares_baseline_and_framefusion(family):
    result = invoke("bench", str(SAMPLE), "--model", f"random:tiny-{family}", *FAST, "--repeat", "1", "--warmup",
                    "0", "--json")
    assert result.exit_code == 0, result.output
    runs = {run["profile"]: run for run in json.loads(result.stdout)["results"]}
    assert set(runs) == {"baseline", "framefusion"}
    baseline, reduced = runs["baseline"]["tokens"], runs["framefusion"]["tokens"]
    assert baseline["final"] == baseline["prompt"] and baseline["stages"] == []
    assert reduced["prompt"] == baseline["prompt"]
    assert_reduced(reduced)
    # framefusion dedups frames before the vision encoder: it gets its own encoding and vision time.
    assert runs["baseline"]["timings"]["vision"] > 0 and runs["framefusion"]["timings"]["vision"] > 0
    assert runs["baseline"]["tokens"]["frames_encoded"] == baseline["frames"]
