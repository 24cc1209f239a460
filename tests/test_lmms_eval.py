"""framefusion as an lmms-eval model: the offline smoke task through the real `lmms-eval` command, once per profile,
and what the model refuses. Needs the `eval` extra (lmms-eval 0.7.x)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from framefusion.errors import InputError
from framefusion.apps.lmms_eval.model import CLASS_PATH, FrameFusionLMM, _cut_at_stop_sequences, _generation_options
from framefusion.apps.lmms_eval.results import accuracy_speed_table, markdown

REPO = Path(__file__).resolve().parent.parent
LMMS_EVAL = Path(sys.executable).parent / "lmms-eval"
SMOKE_TASK = REPO / "examples" / "lmms_eval"
SMOKE_SAMPLES = 8


def run_smoke(profile: str, output: Path, cache: Path) -> Path:
    """The documented smoke command; returns its results JSON."""
    command = [str(LMMS_EVAL), "--model", "framefusion",
               "--model_args", f"pretrained=random:tiny-qwen2-vl,profile={profile},frames=8",
               "--tasks", "framefusion_smoke", "--include_path", "examples/lmms_eval", "--batch_size", "1",
               "--output_path", str(output), "--log_samples"]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(cache), TOKENIZERS_PARALLELISM="false")
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    found = sorted(output.rglob("*_results.json"))
    assert len(found) == 1, (found, finished.stdout[-3000:])
    return found[0]


def logged_samples(results: Path) -> list[dict]:
    """The per-sample log (--log_samples) next to a results JSON, in document order."""
    [samples_file] = results.parent.glob("*_samples_framefusion_smoke.jsonl")
    return sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])


def smoke_task_rule():
    """The smoke task's scoring module (examples/lmms_eval/utils.py), imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("framefusion_smoke_utils", SMOKE_TASK / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_eval")
    return {profile: run_smoke(profile, root / profile, root / "datasets") for profile in ("baseline", "framefusion")}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["baseline", "framefusion"])
def test_smoke_run_writes_scores_next_to_cost_and_prefill_time(runs, profile):
    document = json.loads(runs[profile].read_text())
    scores = document["results"]["framefusion_smoke"]
    # The score is the task's own rule applied to the answers the run logged, one sample at a time, then averaged.
    samples = logged_samples(runs[profile])
    rule = smoke_task_rule()
    rescored = [float(rule.answer_letter(sample["filtered_resps"]) == sample["target"]) for sample in samples]
    assert [sample["accuracy"] for sample in samples] == rescored
    assert scores["accuracy,none"] == pytest.approx(sum(rescored) / SMOKE_SAMPLES, abs=1e-12)
    assert document["n-samples"]["framefusion_smoke"]["effective"] == SMOKE_SAMPLES
    assert f"profile={profile}" in document["config"]["model_args"]
    throughput = document["throughput"]
    assert throughput["avg_prefill_seconds"] > 0
    assert throughput["avg_video_tokens"] > 0
    if profile == "baseline":
        assert throughput["avg_achieved_cost"] == 1.0
        assert throughput["avg_final_tokens"] == throughput["avg_prompt_tokens"]
    else:
        assert throughput["avg_achieved_cost"] < 1.0
        assert throughput["avg_final_tokens"] < throughput["avg_prompt_tokens"]
        assert throughput["avg_requested_cost"] == 0.3


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["baseline", "framefusion"])
def test_the_scored_answers_are_those_framefusion_gives_under_the_profile(runs, profile):
    """What the run scored is the pipeline's answer to each prompt under the run's profile, cut where the task says."""
    from framefusion.apps.lmms_eval.model import _question

    task = json.loads(runs[profile].read_text())["configs"]["framefusion_smoke"]
    options = _generation_options(dict(task["generation_kwargs"]))
    documents = [json.loads(line) for line in (SMOKE_TASK / "data" / "questions.jsonl").read_text().splitlines()]
    lmm = FrameFusionLMM(pretrained="random:tiny-qwen2-vl", profile=profile, frames=8)
    for sample in logged_samples(runs[profile]):
        video = str(SMOKE_TASK / "videos" / documents[sample["doc_id"]]["video"])
        answer = lmm._answer(video, _question(sample["input"]), options["max_new_tokens"], options["temperature"])
        assert sample["filtered_resps"] == _cut_at_stop_sequences(answer.answer, options["until"]), sample["doc_id"]


@pytest.mark.slow
def test_each_sample_carries_its_token_counts(runs):
    samples = logged_samples(runs["framefusion"])
    assert len(samples) == SMOKE_SAMPLES
    for sample in samples:
        counts = sample["token_counts"][0]
        assert counts["input_tokens"] > 0 and counts["output_tokens"] >= 1
    # Every video gets the same two questions (colour, motion) and has the same size: two prompt lengths in all.
    assert len({sample["token_counts"][0]["input_tokens"] for sample in samples}) == 2


@pytest.mark.slow
def test_runs_of_several_profiles_make_one_table(runs):
    table = accuracy_speed_table([runs["framefusion"].parent.parent, runs["baseline"].parent.parent])
    assert [row.profile for row in table] == ["baseline", "framefusion"]
    assert {(row.model, row.frames, row.task, row.metric) for row in table} == {
        ("random:tiny-qwen2-vl", "8", "framefusion_smoke", "accuracy")}
    baseline, reduced = table
    assert baseline.achieved_cost == 1.0 and reduced.achieved_cost < 1.0
    assert baseline.prefill_speedup == 1.0 and reduced.prefill_speedup is not None
    text = markdown(table)
    assert text.count("\n") == 3 and "| framefusion |" in text


def test_lmms_eval_resolves_framefusion_through_its_entry_point():
    from lmms_eval.models import get_model, get_model_manifest

    manifest = get_model_manifest("framefusion")
    assert manifest.simple_class_path == CLASS_PATH and manifest.chat_class_path is None
    assert get_model("framefusion") is FrameFusionLMM
    assert FrameFusionLMM.is_simple is True


@pytest.fixture(scope="module")
def model():
    return FrameFusionLMM(pretrained="random:tiny-qwen2-vl", profile="framefusion", frames=8, device="cpu")


def test_what_it_does_not_support_is_refused_with_the_reason(model):
    with pytest.raises(NotImplementedError, match="no log-likelihoods"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round([])
    with pytest.raises(NotImplementedError, match="one video per sample"):
        model._one_video(["a.mp4", "b.mp4"], "task", 3)
    with pytest.raises(NotImplementedError, match="Single images"):
        model._one_video([Image.new("RGB", (112, 112))], "task", 3)
    with pytest.raises(NotImplementedError, match="beam search"):
        _generation_options({"num_beams": 4})
    assert model._one_video(["clip.mp4"], "task", 0) == "clip.mp4"


def test_frames_given_as_images_are_sampled_like_a_video_file(model):
    images = [Image.new("RGB", (112, 112), (index * 10, 0, 0)) for index in range(20)]
    clip = model._one_video(images, "task", 5)
    assert clip.num_frames == 8 and clip.path == "task/5"
    # The centres of 8 equal slices of 20 frames: 1, 3, 6, 8, 11, 13, 16, 18.
    assert [int(frame[0, 0, 0]) // 10 for frame in clip.frames] == [1, 3, 6, 8, 11, 13, 16, 18]
    result = model._answer(clip, "What colour is it?", max_new_tokens=2, temperature=0.0)
    assert result.tokens.frames == 8 and result.tokens.final < result.tokens.prompt


def test_bad_model_arguments_are_refused_before_loading():
    with pytest.raises(InputError, match="unknown model argument"):
        FrameFusionLMM(pretrained="random:tiny-qwen2-vl", frame=8)
    with pytest.raises(InputError, match="frames=2.5"):
        FrameFusionLMM(pretrained="random:tiny-qwen2-vl", frames=2.5)
    with pytest.raises(InputError, match="takes frames in pairs"):
        FrameFusionLMM(pretrained="random:tiny-qwen2-vl", frames=7)


def test_generation_options_follow_the_task():
    options = _generation_options({"until": "\n\n", "max_new_tokens": 16, "temperature": 0, "do_sample": False,
                                   "top_p": 1.0, "num_beams": 1})
    assert options == {"until": ["\n\n"], "max_new_tokens": 16, "temperature": 0.0}
    assert _cut_at_stop_sequences("B. blue\n\nbecause", options["until"]) == "B. blue"
