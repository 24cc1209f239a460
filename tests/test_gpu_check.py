"""scripts/gpu_check.py, the checks a lent GPU machine runs, rehearsed on the CPU (--dry-run, a tiny model) as the GPU
machine would run it: without PyAV or decord, its frames made in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framefusion.profiles.catalog import builtin_profiles

ROOT = Path(__file__).resolve().parent.parent

# The GPU machine has neither package; the check must not need them.
WITHOUT_PYAV = """
import runpy, sys
sys.modules["av"] = None
sys.modules["decord"] = None
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def run_check(*arguments: str) -> subprocess.CompletedProcess:
    code = WITHOUT_PYAV.format(script=str(ROOT / "scripts" / "gpu_check.py"))
    # No GPU for the check even where the tests run on a machine that has one: never the real (minutes-long) run.
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, timeout=600,
                          cwd=ROOT / "scripts", env=environment)


@pytest.mark.slow
def test_the_dry_run_measures_every_builtin_profile_and_passes_its_checks_without_pyav(tmp_path):
    done = run_check("--dry-run", "--frames", "4", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["passed"] and report["dry_run"] and report["frames"] == [4]
    bench, = report["bench"]
    runs = {run["profile"]: run for run in bench["results"]}
    assert list(runs) == list(builtin_profiles())
    # The still first half is encoded once (3 of 4 frames) by every profile that deduplicates frames.
    for name, profile in builtin_profiles().items():
        assert runs[name]["tokens"]["frames_encoded"] == (3 if profile.max_difference is not None else 4), name
    assert runs["dedup"]["answer"] == runs["baseline"]["answer"]
    checks = report["checks"]
    for name in ("dedup answers as baseline at 4 frames", "bfloat16 matches float32 (baseline)",
                 "bfloat16 matches float32 (framefusion)"):
        assert checks[name]["passed"], name
    assert checks["bfloat16 matches float32 (framefusion)"]["kept_overlap"] >= 0.95
    assert "all checks passed" in done.stdout


@pytest.mark.slow
def test_without_a_gpu_and_without_the_dry_run_it_says_so_and_exits_2(tmp_path):
    done = run_check("--out", str(tmp_path))
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
