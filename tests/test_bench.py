"""`framefusion bench`: the JSON a script reads, the table a person reads, the plot, and early errors.

The CLI runs once per tiny family (random weights, a generated video, one round) and the tests read that run.
No test asserts on timings: they depend on the machine; only their presence and consistency are checked.
"""

from __future__ import annotations

import json

import pytest

from framefusion.apps.bench import (
    amdahl_limit,
    check_bench_arguments,
    median_timings,
    parse_profile_list,
    rotated,
    token_layer_limit,
)
from framefusion.errors import InputError
from framefusion.pipeline.results import Timings

from cli_checks import run_cli

FAST = ["--frames", "4", "--repeat", "1", "--warmup", "0", "--max-new-tokens", "2", "--device", "cpu",
        "--dtype", "float32"]


@pytest.fixture(scope="module", params=["random:tiny-qwen2-vl", "random:tiny-llava-onevision"])
def bench_run(request, tmp_path_factory):
    """One `bench --json --plot` run: (model, payload, plot path)."""
    plot = tmp_path_factory.mktemp("plot") / "bench.png"
    result = run_cli("bench", "--model", request.param, *FAST, "--json", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    return request.param, json.loads(result.stdout), plot


# --- the JSON --------------------------------------------------------------------------------------------------------
def test_json_has_the_documented_shape(bench_run):
    model, payload, _ = bench_run
    assert {"machine", "model", "results", "speedup"} <= payload.keys()
    assert model.removeprefix("random:") in payload["model"]
    machine = payload["machine"]
    for key in ("device", "cpu", "gpu", "torch", "transformers", "dtype", "threads"):
        assert key in machine
    assert machine["device"] == "cpu" and machine["dtype"] == "float32" and machine["threads"] >= 1
    assert [run["profile"] for run in payload["results"]] == ["baseline", "framefusion"]
    for run in payload["results"]:
        assert {"prompt", "final", "cost", "per_layer", "stages", "frames"} <= run["tokens"].keys()
        assert {"vision", "prefill", "generate", "total"} <= run["timings"].keys()
        assert isinstance(run["peak_memory_bytes"], int) and run["peak_memory_bytes"] >= 0
        assert run["tokens"]["frames"] == 4
        assert len(run["rounds"]) == 1


def test_baseline_is_unreduced_and_framefusion_removes_tokens(bench_run):
    _, payload, _ = bench_run
    baseline, framefusion = payload["results"]
    assert baseline["tokens"]["cost"] == 1.0
    assert baseline["tokens"]["final"] == baseline["tokens"]["prompt"]
    assert baseline["tokens"]["stages"] == [] and baseline["framefusion_seconds"] == 0.0
    # The same input for both profiles: the prompt is identical, the reduced one ends shorter and cheaper.
    assert framefusion["tokens"]["prompt"] == baseline["tokens"]["prompt"]
    assert framefusion["tokens"]["final"] < baseline["tokens"]["final"]
    assert sum(framefusion["tokens"]["per_layer"]) < sum(baseline["tokens"]["per_layer"])
    assert framefusion["tokens"]["cost"] < 1.0
    assert any(stage["before"] > stage["after"] for stage in framefusion["tokens"]["stages"])


def test_speedups_and_their_limits(bench_run):
    _, payload, _ = bench_run
    baseline, framefusion = payload["results"]
    speedup = payload["speedup"]
    assert set(speedup) == {"baseline", "framefusion"}
    for key in ("prefill", "ttft", "total", "prefill_limit", "ttft_limit", "total_limit"):
        assert speedup["framefusion"][key] > 0
        assert speedup["baseline"][key] == pytest.approx(1.0)
    limits = speedup["framefusion"]
    assert limits["prefill_limit"] > 1.0
    assert limits["prefill_limit"] == pytest.approx(
        sum(baseline["tokens"]["per_layer"]) / sum(framefusion["tokens"]["per_layer"]), rel=1e-3)
    # Text tokens are never removed, so the token-layer limit stays below 1 / cost.
    assert limits["prefill_limit"] <= 1 / framefusion["tokens"]["cost"] + 1e-6
    # Amdahl: untouched vision work can only lower the whole-task limits.
    assert 1.0 <= limits["total_limit"] <= limits["prefill_limit"] + 1e-6
    assert 1.0 <= limits["ttft_limit"] <= limits["prefill_limit"] + 1e-6
    assert speedup["framefusion"]["prefill"] == pytest.approx(
        baseline["timings"]["prefill"] / framefusion["timings"]["prefill"], rel=1e-2)


def test_plot_is_a_png(bench_run):
    _, _, plot = bench_run
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 5_000


# --- the table -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_table_names_profiles_tokens_and_speedups():
    result = run_cli("bench", "--model", "random:tiny-qwen2-vl", *FAST, "--profiles", "baseline,framefusion,prune-only")
    assert result.exit_code == 0, result.output
    for text in ("baseline", "framefusion", "prune-only", "prompt", "prefill", "time to first token",
                 "Speedup over baseline", "merge (pre-attn) @0", "prune @"):
        assert text in result.stdout


# --- errors before loading -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, message", [
    (["--profiles", "baseline,no-such-profile"], "unknown profile"),
    (["--profiles", "baseline,baseline"], "listed twice"),
    (["--profiles", " , "], "no profiles"),
    (["--repeat", "0"], "--repeat"),
    (["--warmup", "-1"], "--warmup"),
    (["--plot", "chart.jpg"], ".png"),
    (["--plot", "no/such/folder/chart.png"], "does not exist"),
    (["--model", "random:no-such-shape"], "no-such-shape"),
])
def test_bad_input_exits_2_before_loading(arguments, message, monkeypatch):
    import framefusion.pipeline.video_qa

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(framefusion.pipeline.video_qa, "open_video_qa", must_not_load)
    result = run_cli("bench", "--model", "random:tiny-qwen2-vl", *arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_video_is_reported(tmp_path):
    result = run_cli("bench", str(tmp_path / "missing.mp4"), "--model", "random:tiny-qwen2-vl")
    assert result.exit_code == 2
    assert "missing.mp4" in result.output


# --- pure parts ------------------------------------------------------------------------------------------------------
def test_token_layer_limit_is_layers_times_prompt_over_tokens_processed():
    assert token_layer_limit([100] * 4, [100, 40, 30, 30]) == pytest.approx(400 / 200)
    assert token_layer_limit([100] * 4, [100] * 4) == 1.0


def test_amdahl_limit():
    # 2 s untouched + 8 s that may become 4x faster: 10 / (2 + 2).
    assert amdahl_limit(2.0, 8.0, 4.0) == pytest.approx(2.5)
    assert amdahl_limit(0.0, 8.0, 4.0) == pytest.approx(4.0)
    assert amdahl_limit(5.0, 0.0, 4.0) == pytest.approx(1.0)


def test_rounds_rotate_the_profile_order():
    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_median_timings_take_each_field_separately():
    rounds = [Timings(prefill=3.0, total=9.0), Timings(prefill=1.0, total=7.0), Timings(prefill=2.0, total=1.0)]
    median = median_timings(rounds)
    assert (median.prefill, median.total) == (2.0, 7.0)


def test_profile_list_parsing_and_checks():
    assert parse_profile_list(" baseline, framefusion ,") == ["baseline", "framefusion"]
    with pytest.raises(InputError) as raised:
        check_bench_arguments(["baseline"], repeat=1, warmup=0, max_new_tokens=0)
    assert (raised.value.setting, raised.value.value) == ("max_new_tokens", 0)
    assert "--" not in str(raised.value)  # a Python caller has no flags


def test_cpu_peak_memory_counts_what_a_run_allocates_even_after_earlier_runs_freed_theirs():
    import torch

    from framefusion.runtime.peak_memory import MemoryMeter

    # An earlier run's 80 MB in small blocks, freed: the allocator keeps them resident for reuse, so a run that
    # allocates the same again would not raise the resident memory unless the meter hands them back to the OS first.
    earlier = [torch.ones(16_000) for _ in range(1_250)]
    del earlier
    with MemoryMeter(torch.device("cpu")) as meter:
        run = [torch.ones(16_000) for _ in range(625)]  # 40 MB in the same small blocks
    del run
    assert meter.peak_bytes >= 30 * 2**20


@pytest.fixture
def resident_memory_readings(monkeypatch):
    """Counts each reading of this process's resident memory (psutil), so a test can wait for the meter's sampler
    instead of sleeping. Returns a function that waits until the sampler has read the memory as it is now."""
    import threading

    import psutil

    read = threading.Condition()
    readings = [0]

    class CountedProcess(psutil.Process):
        def memory_info(self):
            info = super().memory_info()
            with read:
                readings[0] += 1
                read.notify_all()
            return info

    def wait_for_a_reading_of_now() -> None:
        with read:  # the second reading from here on began after this point
            target = readings[0] + 2
            assert read.wait_for(lambda: readings[0] >= target, timeout=60), "the sampler stopped reading"

    monkeypatch.setattr(psutil, "Process", CountedProcess)
    return wait_for_a_reading_of_now


def test_cpu_peak_memory_counts_what_a_run_frees_again_before_it_ends(resident_memory_readings):
    import mmap

    import psutil
    import torch

    from framefusion.runtime.peak_memory import MemoryMeter

    with MemoryMeter(torch.device("cpu")) as meter:
        # 40 MB held for a while, like a layer's activations. Mapped and unmapped by hand: blocks freed through the
        # allocator may stay resident, an unmapped region surely does not.
        activations = mmap.mmap(-1, 40 * 2**20)
        for offset in range(0, len(activations), mmap.PAGESIZE):
            activations[offset] = 1  # every page resident
        held = psutil.Process().memory_info().rss
        resident_memory_readings()
        activations.close()
        freed = psutil.Process().memory_info().rss
    assert held - freed >= 30 * 2**20  # gone before the block ends: only a reading during the run can count it
    assert meter.peak_bytes >= 30 * 2**20
