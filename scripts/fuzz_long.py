"""The long fuzz run: the properties of tests/test_fuzz.py with many more examples and a random or given seed.

    python scripts/fuzz_long.py                      # 5000 examples a property, a fresh random seed
    python scripts/fuzz_long.py --examples 20000 --seed 7

Prints the seed (to repeat a run), pytest's verdict, and a table of outcomes (inputs tried, handled) for
docs/reliability.md. Exit status: pytest's (0 when every input was handled).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
HANDLED = {"clip", "profiles", "our error"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="Examples per fuzz property (default 5000).")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: a random one, printed).")
    return parser.parse_args(argv)


def outcome_table(rows: list[dict]) -> str:
    """Markdown table: path, inputs tried, handled (a result or our own one-line error), and each outcome."""
    lines = ["| path | inputs | handled | outcomes |", "|---|---|---|---|"]
    for path in sorted({row["path"] for row in rows}):
        mine = [row for row in rows if row["path"] == path]
        total = sum(row["count"] for row in mine)
        handled = sum(row["count"] for row in mine if row["outcome"] in HANDLED)
        outcomes = ", ".join(f"{row['outcome']} {row['count']}" for row in mine)
        lines.append(f"| {path} | {total} | {handled} | {outcomes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    seed = arguments.seed if arguments.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "outcomes.json"
        environment = dict(os.environ, FRAMEFUSION_FUZZ_EXAMPLES=str(arguments.examples),
                           FRAMEFUSION_FUZZ_SEED=str(seed), FRAMEFUSION_FUZZ_REPORT=str(report))
        command = [sys.executable, "-m", "pytest", str(REPOSITORY / "tests" / "test_fuzz.py"), "-q",
                   "-p", "no:cacheprovider", f"--hypothesis-seed={seed}"]
        print(f"fuzzing with {arguments.examples} examples a property, seed {seed}", flush=True)
        started = time.perf_counter()
        verdict = subprocess.run(command, cwd=REPOSITORY, env=environment)
        print(f"\n{time.perf_counter() - started:.0f} s, pytest exit status {verdict.returncode}")
        if report.exists():
            print(outcome_table(json.loads(report.read_text())))
    return verdict.returncode


if __name__ == "__main__":
    sys.exit(main())
