"""Without a reachable hub: one quick probe, then the local Hugging Face cache only, never minutes of retries.

The probe is checked against HTTP servers of our own on 127.0.0.1 (answering, failing, silent, or a closed port);
the whole path through the real command runs in a subprocess with HF_ENDPOINT pointing at a closed port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from framefusion.model_zoo import build_tiny_checkpoint, tiny_families
from framefusion.model_zoo.hub import HubState, hub_access, hub_status, probe_hub

from cli_checks import framefusion_command

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
# Only a guard against a hang; the assertions are on exit codes and what the command printed.
HANG_GUARD_SECONDS = 60


@pytest.fixture
def silent_server_url() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


# --------------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------------


def test_a_hub_that_answers_is_reachable_after_one_request(local_hub, hub_allowed):
    status = probe_hub(local_hub.url)
    assert status.state is HubState.REACHABLE and status.online
    assert status.detail.startswith("HTTP 200")
    assert local_hub.requests == [("HEAD", "/")]


def test_a_hub_with_server_errors_counts_as_unreachable(local_hub, hub_allowed):
    local_hub.status = 503
    status = probe_hub(local_hub.url)
    assert status.state is HubState.UNREACHABLE
    assert status.detail.startswith("HTTP 503")
    assert len(local_hub.requests) == 1  # no retries


def test_a_closed_port_is_unreachable(hub_allowed, closed_port_url):
    status = probe_hub(closed_port_url)
    assert status.state is HubState.UNREACHABLE and not status.online
    assert closed_port_url in status.reason and "cannot be reached" in status.reason


def test_a_hub_that_never_answers_is_unreachable(silent_server_url, hub_allowed):
    assert probe_hub(silent_server_url, timeout=0.3).state is HubState.UNREACHABLE


def test_hf_hub_offline_means_no_request_at_all(local_hub, hub_allowed, monkeypatch):
    hub_allowed(local_hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = hub_status(reuse=False)
    assert status.state is HubState.OFFLINE and status.reason == "HF_HUB_OFFLINE is set"
    assert local_hub.requests == []


def test_one_probe_serves_the_estimate_and_the_load(local_hub, hub_allowed):
    hub_allowed(local_hub.url)
    assert hub_status().online and hub_status().online
    assert len(local_hub.requests) == 1


def test_unreachable_hub_means_local_files_only_inside_the_block_and_nothing_changed_after(hub_allowed, tmp_path,
                                                                                          closed_port_url):
    hub_allowed(closed_port_url)
    with hub_access() as hub:
        assert hub.state is HubState.UNREACHABLE
        assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
        # Straight to the local cache: a missing file is reported at once, not after retries.
        with pytest.raises(LocalEntryNotFoundError):
            hf_hub_download("framefusion-tests/not-cached", "config.json", cache_dir=tmp_path)
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_reachable_hub_leaves_online_mode_alone(local_hub, hub_allowed):
    hub_allowed(local_hub.url)
    with hub_access() as hub:
        assert hub.online and constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


# --------------------------------------------------------------------------------------------------------
# The real command in a subprocess, as a user without network runs it
# --------------------------------------------------------------------------------------------------------


def run_command(*args: str, hf_home: Path, endpoint: str, offline: bool = False) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_VERBOSITY")}
    environment.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint)
    if offline:
        environment["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(framefusion_command(*args), capture_output=True, text=True, env=environment,
                          check=False, timeout=HANG_GUARD_SECONDS)


def stderr_lines(process: subprocess.CompletedProcess) -> list[str]:
    return [line for line in process.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_first_command_without_hub_or_cache_fails_in_one_line(tmp_path, closed_port_url):
    process = run_command("ask", str(SAMPLE), "What happens in this video?",
                          hf_home=tmp_path / "empty-hf-home", endpoint=closed_port_url)
    lines = stderr_lines(process)
    assert process.returncode == 1, process.stderr
    assert len(lines) <= 3, process.stderr
    assert lines[-1].startswith("error:")
    assert "not in the local Hugging Face cache" in lines[-1] and "cannot be reached" in lines[-1]
    assert "Retry" not in process.stderr and "Traceback" not in process.stderr
    assert process.stdout == ""


@pytest.mark.slow
def test_hf_hub_offline_set_sends_nothing_to_the_hub(tmp_path, local_hub):
    process = run_command("ask", str(SAMPLE), "What happens?", "--model", "framefusion-tests/not-cached",
                          hf_home=tmp_path / "empty-hf-home", endpoint=local_hub.url, offline=True)
    lines = stderr_lines(process)
    assert process.returncode == 1, process.stderr
    assert len(lines) <= 3 and "HF_HUB_OFFLINE is set" in lines[-1], process.stderr
    assert local_hub.requests == []


def write_cached_hub_model(hf_home: Path, repo_id: str) -> Path:
    """A tiny checkpoint laid out as huggingface_hub caches a download: a snapshot folder and refs/main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repository = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = build_tiny_checkpoint(tiny_families()[0], repository / "snapshots" / revision)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.slow
def test_cached_hub_model_runs_offline_when_the_hub_is_unreachable(tmp_path, closed_port_url):
    repo_id = "framefusion-tests/cached-tiny"
    write_cached_hub_model(tmp_path / "hf-home", repo_id)
    process = run_command("ask", str(SAMPLE), "What happens?", "--model", repo_id, "--frames", "4",
                          "--max-new-tokens", "3", "--json", hf_home=tmp_path / "hf-home", endpoint=closed_port_url)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["model"] == repo_id
    assert result["tokens"]["frames"] == 4 and result["tokens"]["visual"] > 0
    assert 1 <= result["new_tokens"] <= 3
    assert "Retry" not in process.stderr and "thrown while requesting" not in process.stderr
