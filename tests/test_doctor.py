"""`framefusion doctor`: what this machine offers, checked against what the libraries themselves report."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch
import transformers
from huggingface_hub import constants
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from framefusion.apps import doctor as library
from framefusion.runtime import transformers_compat as compat
from framefusion.pipeline.video_qa import resolve_device, resolve_dtype

from cli_checks import printed_json, run_cli


def doctor_json() -> dict:
    return printed_json(run_cli("doctor", "--json"))  # stdout holds the JSON and nothing else


def distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_json_versions_match_the_installed_libraries():
    report = doctor_json()
    assert report["python"] == platform.python_version()
    assert report["torch"] == torch.__version__
    support = report["transformers"]
    assert support["version"] == transformers.__version__
    assert support["tested_range"] == compat.TESTED_TRANSFORMERS
    assert support["newest_tested"] == compat.NEWEST_TESTED_TRANSFORMERS
    assert isinstance(support["in_tested_range"], bool)
    assert support["in_tested_range"] == (Version(transformers.__version__) in SpecifierSet(compat.TESTED_TRANSFORMERS))
    for name in ("decord", "av", "torchvision", "huggingface_hub"):
        assert report["packages"][name] == distribution_version(name)  # None: not installed


def test_json_devices_and_defaults_match_torch():
    report = doctor_json()
    devices = report["devices"]
    assert devices["logical_cores"] == os.cpu_count()
    assert devices["torch_threads"] == torch.get_num_threads()
    assert 0 < devices["ram_available_bytes"] <= devices["ram_total_bytes"]
    assert devices["cpu"]
    assert len(devices["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for gpu in devices["gpus"]:
        assert gpu["name"] == torch.cuda.get_device_name(gpu["index"])
        assert 0 <= gpu["free_bytes"] <= gpu["total_bytes"]
    assert devices["mps"] == torch.backends.mps.is_available()
    device = resolve_device("auto")
    assert report["defaults"]["device"] == str(device)
    assert report["defaults"]["dtype"] == str(resolve_dtype("auto", device)).removeprefix("torch.")
    assert report["defaults"]["video_backend"] in ("decord", "pyav")


def test_json_caches_are_where_loading_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEFUSION_CACHE", str(tmp_path / "ff-cache"))
    report = doctor_json()
    assert report["caches"] == {"huggingface": constants.HF_HUB_CACHE, "framefusion": str(tmp_path / "ff-cache")}


def test_hub_is_reported_offline_when_hf_hub_offline_is_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = doctor_json()["hub"]
    assert hub["state"] == "offline" and "HF_HUB_OFFLINE" in hub["detail"]
    assert hub["endpoint"] == constants.ENDPOINT


def test_hub_is_probed_when_allowed(hub_allowed, local_hub, closed_port_url):
    hub_allowed(local_hub.url)
    hub = doctor_json()["hub"]
    assert hub["endpoint"] == local_hub.url and hub["state"] == "reachable" and hub["detail"].startswith("HTTP 200")
    hub_allowed(closed_port_url)
    assert doctor_json()["hub"]["state"] == "unreachable"


def test_table_shows_the_facts_and_says_when_transformers_is_outside_the_tested_range(monkeypatch):
    inside = Version(transformers.__version__) in SpecifierSet(compat.TESTED_TRANSFORMERS)
    rows = table_rows()
    assert transformers.__version__ in rows["transformers"]
    assert rows["in tested range"].startswith("yes" if inside else "no")
    assert compat.TESTED_TRANSFORMERS in rows["in tested range"]
    assert rows["dtype"] == str(resolve_dtype("auto", resolve_device("auto"))).removeprefix("torch.")
    assert rows["state"].startswith("offline")

    real_version = library.installed_version
    monkeypatch.setattr(library, "installed_version",
                        lambda name: "4.57.0" if name == "transformers" else real_version(name))
    assert doctor_json()["transformers"]["in_tested_range"] is False
    rows = table_rows()
    assert rows["transformers"] == "4.57.0" and rows["in tested range"].startswith("no:")


def table_rows() -> dict[str, str]:
    """The table's rows as label -> value (the first line of a wrapped value)."""
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0] and cells[0] not in rows:
            rows[cells[0]] = cells[1]
    return rows

