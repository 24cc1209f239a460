"""The README's promise: a model repository's own Python code never runs unless --trust-remote-code is given, and
without it the refusal is one line (transformers is never left to ask on stdin)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from framefusion.model_zoo import ensure_tiny_checkpoint

from cli_checks import error_line, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"


@pytest.fixture
def model_with_own_code(tmp_path) -> tuple[Path, Path]:
    """A local model folder whose config names a model type only its own code defines; the code leaves a marker
    file when imported. Returns (folder, marker)."""
    folder = tmp_path / "remote-model"
    shutil.copytree(ensure_tiny_checkpoint("qwen2-vl"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom_video_lm"
    config["auto_map"] = {"AutoConfig": "own_code.OwnConfig", "AutoModelForImageTextToText": "own_code.OwnModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "imported"
    (folder / "own_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2VLConfig as OwnConfig, Qwen2VLForConditionalGeneration as OwnModel\n")
    return folder, marker


def ask(folder: Path, *extra: str):
    return run_cli("ask", str(SAMPLE), "What happens?", "--model", str(folder), "--frames", "4",
                   "--max-new-tokens", "1", "--profile", "baseline", *extra, input="y\n")


def test_a_model_that_needs_its_own_code_is_refused_in_one_line_and_nothing_of_it_runs(model_with_own_code):
    folder, marker = model_with_own_code
    result = ask(folder)  # "y" waits on stdin: nobody may ask for it
    error_line(result, 2, "--trust-remote-code")
    assert "Do you wish to run the custom code" not in result.output
    assert not marker.exists()


def test_the_flag_is_what_lets_the_repositorys_code_run(model_with_own_code):
    folder, marker = model_with_own_code
    ask(folder, "--trust-remote-code")
    assert marker.read_text() == "ran"
