"""Several lmms-eval runs (one per profile) in one accuracy-vs-speed table.

    python -m framefusion.apps.lmms_eval.results OUT/            # every *_results.json under OUT, as a markdown table

Each results JSON written by `lmms-eval --model framefusion` holds the scores (`results`), the model arguments
(`config.model_args`: pretrained, profile, frames, ...) and the run's means of the per-sample metrics
(`throughput.avg_achieved_cost`, `throughput.avg_prefill_seconds`). Runs of the same model, frames and task are compared
with the baseline run among them (prefill speedup = baseline prefill time / this run's). Needs no lmms-eval import.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from framefusion.errors import InputError

BASELINE_PROFILE = "baseline"


@dataclass(frozen=True)
class RunScore:
    """One score of one run: the model arguments that matter, the score, and the run's mean cost and prefill time."""

    file: str
    model: str
    profile: str
    frames: str
    task: str
    metric: str
    score: float
    achieved_cost: float | None
    prefill_seconds: float | None
    prefill_speedup: float | None = None


def model_arguments(text: str) -> dict[str, str]:
    """`pretrained=x,profile=y,frames=8` -> {"pretrained": "x", ...} (values kept as text)."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """The results files named, and every `*_results.json` under the folders named (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.rglob("*_results.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder; name lmms-eval results files or their output folder")
    if not files:
        raise InputError("no lmms-eval results files found (they are named *_results.json)")
    return files


def read_run(path: Path) -> list[RunScore]:
    """The scores of one results file."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable lmms-eval results JSON ({error})") from None
    arguments = model_arguments(str(document.get("config", {}).get("model_args") or ""))
    throughput = document.get("throughput") or {}
    scores = []
    for task, metrics in (document.get("results") or {}).items():
        for key, value in metrics.items():
            name = key.split(",")[0]
            if name == "alias" or "_stderr" in name or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            scores.append(RunScore(
                file=str(path), model=arguments.get("pretrained", "?"), profile=arguments.get("profile", "framefusion"),
                frames=arguments.get("frames", arguments.get("fps", "")), task=task, metric=name, score=float(value),
                achieved_cost=throughput.get("avg_achieved_cost"),
                prefill_seconds=throughput.get("avg_prefill_seconds"),
            ))
    return scores


def with_speedups(scores: Sequence[RunScore]) -> list[RunScore]:
    """Each score with its prefill speedup over the baseline run of the same model, frames, task and metric."""
    baseline = {(s.model, s.frames, s.task, s.metric): s.prefill_seconds for s in scores
                if s.profile == BASELINE_PROFILE and s.prefill_seconds}
    result = []
    for score in scores:
        reference = baseline.get((score.model, score.frames, score.task, score.metric))
        speedup = reference / score.prefill_seconds if reference and score.prefill_seconds else None
        result.append(RunScore(**{**score.__dict__, "prefill_speedup": speedup}))
    return result


def accuracy_speed_table(paths: Iterable[str | Path]) -> list[RunScore]:
    """Every score of every results file under `paths`, baseline first within each model, frames and task."""
    scores = with_speedups([score for path in results_files(paths) for score in read_run(path)])
    return sorted(scores, key=lambda s: (s.model, s.frames, s.task, s.metric, s.profile != BASELINE_PROFILE, s.profile))


def markdown(scores: Sequence[RunScore]) -> str:
    def number(value: float | None, digits: int, suffix: str = "") -> str:
        return "" if value is None else f"{value:.{digits}f}{suffix}"

    lines = ["| model | frames | task | metric | profile | score | achieved cost | prefill (s) | prefill speedup |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(f"| {s.model} | {s.frames} | {s.task} | {s.metric} | {s.profile} | {s.score:.4g} | "
                     f"{number(s.achieved_cost, 3)} | {number(s.prefill_seconds, 4)} | "
                     f"{number(s.prefill_speedup, 2, 'x')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        print(markdown(accuracy_speed_table(arguments)))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
