"""The published methods' profiles (VidCom2, FastVID, HoliTom, their compositions with FrameFusion) through
`framefusion ask` on tiny models of the families they were measured on: each stage is a row of the token report, the
LLM gets fewer tokens than the prompt, and what cannot run is refused before loading."""

import json
from pathlib import Path

import pytest
from cli_checks import error_line, printed_json, read_jsonl, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"

# (model, profile, the stages' kinds in the report); the rest of each family's profiles run in the slow suite.
EVERYDAY = [
    ("random:tiny-llava-onevision", "holitom", ["holitom", "inner-merge"]),
    ("random:tiny-qwen2-vl", "holitom-framefusion", ["holitom", "merge", "prune"]),
    ("random:tiny-qwen2.5-vl", "fastvid", ["fastvid"]),
    ("random:tiny-qwen3-vl", "vidcom2", ["vidcom2"]),
]
SLOW = [
    ("random:tiny-llava-onevision", "holitom-outer", ["holitom"]),
    ("random:tiny-llava-onevision", "holitom-framefusion", ["holitom", "merge", "prune"]),
    ("random:tiny-llava-onevision", "vidcom2", ["vidcom2"]),
    ("random:tiny-llava-onevision", "fastvid", ["fastvid"]),
    ("random:tiny-llava-onevision", "vidcom2-framefusion", ["vidcom2", "merge", "prune"]),
    ("random:tiny-llava-onevision", "fastvid-framefusion", ["fastvid", "merge", "prune"]),
    ("random:tiny-qwen2-vl", "holitom", ["holitom", "inner-merge"]),
    ("random:tiny-qwen2-vl", "holitom-outer", ["holitom"]),
    ("random:tiny-qwen2.5-vl", "vidcom2", ["vidcom2"]),
    ("random:tiny-qwen2.5-vl", "vidcom2-framefusion", ["vidcom2", "merge", "prune"]),
    ("random:tiny-qwen2.5-vl", "fastvid-framefusion", ["fastvid", "merge", "prune"]),
    ("random:tiny-qwen3-vl", "fastvid", ["fastvid"]),
    ("random:tiny-qwen3-vl", "vidcom2-framefusion", ["vidcom2", "merge", "prune"]),
    ("random:tiny-qwen3-vl", "fastvid-framefusion", ["fastvid", "merge", "prune"]),
]


@pytest.mark.parametrize("model, profile, kinds", EVERYDAY + [pytest.param(*case, marks=pytest.mark.slow)
                                                              for case in SLOW])
def test_each_stage_is_reported_and_the_llm_gets_fewer_tokens(model, profile, kinds):
    result = run_cli("ask", SAMPLE, "What happens?", "--model", model, "--frames", "8", "--profile", profile,
                     "--json", "--max-new-tokens", "2")
    payload = printed_json(result)
    tokens, stages = payload["tokens"], payload["tokens"]["stages"]
    # The settings as they ran: nothing left to the family unresolved, and where the signals came from named.
    for stage in payload["settings"]["stages"]:
        assert None not in stage.values(), stage
        assert ("signals" in stage) == (stage["kind"] in ("fastvid", "holitom")), stage
    # FrameFusion after a reduction before the LLM merges, and prunes when merging left the budget unmet.
    later_kinds = {stage["kind"] for stage in stages[1:]}
    assert later_kinds <= set(kinds[1:]) and bool(later_kinds) == (len(kinds) > 1)
    first = stages[0]
    assert (first["kind"], first["where"], first["before"]) == (kinds[0], "before_llm", tokens["prompt"])
    assert first["after"] < first["before"]
    assert tokens["final"] < first["after"] if len(kinds) > 1 else tokens["final"] == first["after"]
    assert all(later["before"] == earlier["after"] for earlier, later in zip(stages, stages[1:]))


def test_fastvid_is_refused_before_loading_where_it_was_not_measured():
    result = run_cli("ask", SAMPLE, "What happens?", "--model", "random:tiny-smolvlm", "--profile", "fastvid")
    line = error_line(result, 2, before_loading=True)
    assert line.startswith("error: --profile fastvid: FastVID was measured on the LLaVA and Qwen-VL families, not on "
                           "smol") and line.endswith("use vidcom2 or holitom there, or name a variant")


def _caption(folder: Path, output: Path, profile: str, *extra: str):
    return run_cli("caption", folder, "--output", output, "--model", "random:tiny-llava-onevision", "--frames", "8",
                   "--max-new-tokens", "2", "--profile", profile, *extra)


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_caption_records_the_stages_of_the_published_methods(tmp_path, engine):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(SAMPLE.read_bytes())
    extra = ["--engine", "ray", "--workers", "1"] if engine == "ray" else []
    for profile, kinds in (("holitom", ["holitom", "inner-merge"]), ("earlytom", ["earlytom", "inner-merge"])):
        output = tmp_path / f"{profile}.jsonl"
        result = _caption(folder, output, profile, *extra)
        assert result.exit_code == 0, result.output
        records = read_jsonl(output)
        assert sorted(record["video"] for record in records) == ["a.mp4", "b.mp4"]
        for record in records:
            tokens = record["tokens"]
            assert [stage["kind"] for stage in tokens["stages"]] == kinds and tokens["final"] < tokens["prompt"]


@pytest.mark.slow
def test_bench_sets_the_published_methods_side_by_side_with_their_own_vision_encoding():
    result = run_cli("bench", "--model", "random:tiny-llava-onevision", "--frames", "8", "--repeat", "1", "--warmup",
                     "0", "--max-new-tokens", "2", "--profiles", "baseline,framefusion,vidcom2,fastvid,holitom,earlytom",
                     "--json")
    runs = {run["profile"]: run for run in printed_json(result)["results"]}
    baseline = runs.pop("baseline")["tokens"]
    for name, run in runs.items():
        tokens = run["tokens"]
        assert tokens["prompt"] == baseline["prompt"] and tokens["final"] < baseline["final"], name
        assert run["timings"]["vision"] > 0, name
    assert runs["earlytom"]["tokens"]["frames_merged"] < 8
    assert all(run["tokens"]["frames_merged"] is None for name, run in runs.items() if name != "earlytom")
    # The vision encoder ran for EarlyTom on its own (merging frames), and once for the profiles that encode alike.
    assert "vision encoder (earlytom" in result.stderr


def test_chat_follows_up_from_the_cache_a_published_method_left():
    result = run_cli("chat", SAMPLE, "--model", "random:tiny-llava-onevision", "--frames", "8", "--max-new-tokens",
                     "3", "--json", "--profile", "earlytom", input="What happens?\nAnd then?\n/exit\n")
    assert result.exit_code == 0, result.output
    first, second = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    report = first["tokens"]["report"]
    assert [stage["kind"] for stage in report["stages"]] == ["earlytom", "inner-merge"]
    # The first layer's cache holds what EarlyTom kept (plus the answer so far); the follow-up adds only its own.
    kept = report["stages"][0]["after"]
    assert first["tokens"]["cached_first_layer"] == kept + first["new_tokens"] - 1
    assert second["tokens"]["prefill"] < 40 and second["tokens"]["cached_first_layer"] == (
        first["tokens"]["cached_first_layer"] + second["tokens"]["prefill"] + second["new_tokens"] - 1)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["random:tiny-qwen2.5-vl", "random:tiny-qwen3-vl", "random:tiny-llava-next-video",
                                   "random:tiny-internvl", "random:tiny-smolvlm", "random:tiny-qwen3.5"])
def test_holitom_runs_on_every_family(model):
    from framefusion.families import family_by_name

    if model.endswith("qwen3.5") and family_by_name("qwen3.5").refuses:
        pytest.skip("Qwen3.5 needs a newer transformers")
    result = run_cli("ask", SAMPLE, "What happens?", "--model", model, "--frames", "8", "--profile", "holitom",
                     "--json", "--max-new-tokens", "2")
    tokens = printed_json(result)["tokens"]
    assert [stage["kind"] for stage in tokens["stages"]] == ["holitom", "inner-merge"]
    assert tokens["final"] < tokens["stages"][0]["after"] < tokens["prompt"]
