"""`framefusion doctor`: what this machine offers, checked against what the libraries themselves report."""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import pytest
import torch
import transformers
from huggingface_hub import constants
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from typer.testing import CliRunner

from framefusion.apps import doctor as library
from framefusion.runtime import transformers_compat as compat
from framefusion.pipeline.video_qa import resolve_device, resolve_dtype
from framefusion_cli.app import app

runner = CliRunner()


def doctor_json() -> dict:
    result = runner.invoke(app, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout holds the JSON and nothing else


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


class _Answering(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_allowed(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda url: monkeypatch.setattr(constants, "ENDPOINT", url)


def test_hub_is_probed_when_allowed(hub_allowed):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        hub_allowed(url)
        hub = doctor_json()["hub"]
        assert hub["endpoint"] == url and hub["state"] == "reachable" and hub["detail"].startswith("HTTP 200")
    finally:
        server.shutdown()
        server.server_close()

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    hub_allowed(url)
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
    result = runner.invoke(app, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0] and cells[0] not in rows:
            rows[cells[0]] = cells[1]
    return rows

