"""Hub kernels stay off unless asked for (transformers 5.25 turns them on in every from_pretrained).

What is observed is transformers' own call that kernelizes a model (`PreTrainedModel.set_use_kernels(True)`), not a
flag of ours, so a load that forgets to pass `use_kernels=False` fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import transformers
from framefusion.runtime import transformers_compat as compat
from framefusion.model_zoo import ensure_tiny_checkpoint

from cli_checks import error_line, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
TINY = "random:tiny-qwen2-vl"


@pytest.fixture
def kernelize_requests(monkeypatch) -> list[bool]:
    """Every `set_use_kernels` call transformers makes on a model, by its first argument (True: kernelize)."""
    requests: list[bool] = []
    real = transformers.PreTrainedModel.set_use_kernels

    def recording(model, use_kernels, *args, **kwargs):
        requests.append(bool(use_kernels))
        return real(model, use_kernels, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "set_use_kernels", recording)
    monkeypatch.delenv(compat.HUB_KERNELS_ENVIRONMENT, raising=False)
    return requests


def ask(*extra: str):
    return run_cli("ask", str(SAMPLE), "What happens?", "--model", TINY, "--frames", "2",
                   "--max-new-tokens", "1", "--json", *extra)


def test_the_seam_knows_whether_a_plain_load_kernelizes_and_its_options_prevent_it(kernelize_requests):
    from transformers import AutoModelForImageTextToText

    checkpoint = ensure_tiny_checkpoint("qwen2-vl")
    AutoModelForImageTextToText.from_pretrained(checkpoint)  # what a load without our options does
    assert (True in kernelize_requests) == compat.kernelizes_by_default()
    kernelize_requests.clear()
    AutoModelForImageTextToText.from_pretrained(checkpoint, **compat.hub_kernels_load_options())
    assert True not in kernelize_requests
    # Every release in the tested range takes the argument (opt-in before 5.25, opt-out since).
    assert compat.hub_kernels_load_options() == {"use_kernels": False}


def test_the_newest_tested_release_kernelizes_by_default(monkeypatch):
    # The reason this seam exists; on an older release in the range the default is off.
    monkeypatch.delenv(compat.HUB_KERNELS_ENVIRONMENT, raising=False)
    from packaging.version import Version

    newest = Version(transformers.__version__) >= Version(compat.FIRST_KERNELIZING_TRANSFORMERS)
    assert compat.kernelizes_by_default() is newest
    monkeypatch.setenv(compat.HUB_KERNELS_ENVIRONMENT, "0")
    assert compat.kernelizes_by_default() is False


def test_a_default_ask_requests_hub_kernels_zero_times(kernelize_requests):
    result = ask()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"] is not None
    assert kernelize_requests.count(True) == 0


def test_hub_kernels_flag_kernelizes_the_model_or_says_in_one_line_why_not(kernelize_requests):
    reason = compat.hub_kernels_unavailable()
    result = ask("--hub-kernels")
    if reason is None:  # transformers and `kernels` that can kernelize (the newest end of the range)
        assert result.exit_code == 0, result.output
        assert kernelize_requests.count(True) >= 1
    else:  # e.g. the lowest end, where transformers does not install `kernels`
        assert_refused_before_loading(result, kernelize_requests, "--hub-kernels", "kernels")


def test_hub_kernels_switched_off_by_the_environment_are_refused_before_loading(kernelize_requests, monkeypatch):
    monkeypatch.setenv(compat.HUB_KERNELS_ENVIRONMENT, "0")
    result = ask("--hub-kernels")
    assert_refused_before_loading(result, kernelize_requests, "--hub-kernels", "USE_HUB_KERNELS=0")


def test_a_kernels_package_transformers_does_not_accept_is_refused(kernelize_requests, monkeypatch):
    monkeypatch.setattr(compat, "hub_kernels_package", lambda: ("0.1.0", False))
    result = ask("--hub-kernels")
    assert_refused_before_loading(result, kernelize_requests, "has 0.1.0", "pip install")


def test_the_library_refuses_hub_kernels_it_cannot_give_with_the_setting_name(monkeypatch):
    from framefusion.errors import InputError
    from framefusion.model_zoo import load_model

    monkeypatch.setenv(compat.HUB_KERNELS_ENVIRONMENT, "off")
    with pytest.raises(InputError) as caught:
        load_model(TINY, dtype=__import__("torch").float32, device="cpu", hub_kernels=True)
    assert caught.value.setting == "hub_kernels"
    assert "--" not in str(caught.value)  # the library speaks Python


def assert_refused_before_loading(result, kernelize_requests: list[bool], *words: str) -> None:
    error_line(result, 2, *words, before_loading=True)
    assert kernelize_requests == []  # no model was loaded


def test_doctor_reports_what_transformers_and_framefusion_do_with_hub_kernels(monkeypatch):
    monkeypatch.delenv(compat.HUB_KERNELS_ENVIRONMENT, raising=False)
    report = json.loads(run_cli("doctor", "--json").stdout)["hub_kernels"]
    version, usable = compat.hub_kernels_package()
    assert report == {"kernelizes_by_default": compat.kernelizes_by_default(), "environment": None,
                      "kernels": version, "kernels_usable": usable, "used_by_default": False,
                      "unavailable": compat.hub_kernels_unavailable()}

    monkeypatch.setenv(compat.HUB_KERNELS_ENVIRONMENT, "0")
    report = json.loads(run_cli("doctor", "--json").stdout)["hub_kernels"]
    assert report["kernelizes_by_default"] is False and report["environment"] == "0"
    assert "USE_HUB_KERNELS=0" in report["unavailable"]
    table = run_cli("doctor").stdout
    row = next(line for line in table.splitlines() if "hub kernels" in line)
    following = table.splitlines()[table.splitlines().index(row):][:4]  # the row, wrapped at the terminal's width
    assert "refused" in " ".join(" ".join(following).replace("│", " ").split())


@pytest.mark.parametrize("command", ["ask", "chat", "caption", "bench", "calibrate"])
def test_every_command_that_loads_a_model_offers_the_flag(command):
    result = run_cli(command, "--help", env={"COLUMNS": "200"})
    assert "--hub-kernels" in result.stdout
