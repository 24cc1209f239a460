import atexit
import os
import shutil
import socket
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Test helper modules (tiny_models, videos) import by plain name.
sys.path.insert(0, str(Path(__file__).parent))
# Never reach for the hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# framefusion's own cache (tiny checkpoints, features) in a folder of this run, never the user's.
os.environ["FRAMEFUSION_CACHE"] = tempfile.mkdtemp(prefix="framefusion-tests-")
# Each pytest process (xdist workers too) removes its own: left behind, a few hundred runs fill a disk.
atexit.register(shutil.rmtree, os.environ["FRAMEFUSION_CACHE"], ignore_errors=True)


def _threads_per_worker() -> int | None:
    """Each pytest-xdist worker's share of the cores (None outside xdist).

    Every worker's torch would otherwise start one thread per core: N workers on N cores run N*N threads that spin
    against each other, and the tiny models of the tests run several times slower than on one thread.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


if _threads_per_worker() is not None:
    # setdefault: a thread count set by whoever runs the tests wins. Subprocesses (the CLI, lmms-eval) inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_worker()))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def no_child_process_outlives_the_tests():
    """Fail the session if a process started during the tests (a decoder, a Ray worker, a command) still runs."""
    yield
    from processes import describe, descendants, still_running_after

    leftovers = still_running_after(descendants(os.getpid()), seconds=10)
    for process in leftovers:
        process.kill()
    if leftovers:
        pytest.fail(f"processes still running after the tests (now killed): {describe(leftovers)}")


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty vision-feature cache of its own (never the user's)."""
    monkeypatch.setenv("FRAMEFUSION_FEATURE_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


# --- a hub of our own ------------------------------------------------------------------------------------------------
class _RecordingHandler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_hub():
    """An HTTP server on 127.0.0.1 that records each request in `.requests` and answers with `.status` (200 unless
    changed); its address is `.url`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.requests = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hub_allowed(monkeypatch):
    """Undo the suite's HF_HUB_OFFLINE=1 for this test; returns a function that points the hub at a URL."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def use_endpoint(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)

    return use_endpoint
