"""Reaching the Hugging Face hub: one quick probe, and offline mode when the hub does not answer.

Without a network huggingface_hub retries each file 5 times with backoff: about 170 s and 80 log lines before a
load fails. One probe with a short timeout decides instead; when the hub does not answer, files come from the
local Hugging Face cache only, so a cached model loads at once and an uncached one fails within seconds.
HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set means no probe at all.

    with hub_access() as hub:     # probes (at most once a minute), goes offline if unreachable
        hf_hub_download(...)      # or from_pretrained(...)
    hub.state, hub.reason         # what the probe found, for error messages
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from framefusion.errors import first_line

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT_SECONDS = 2.0
# A load probes twice (the memory estimate's small files, then the model); one answer serves both.
PROBE_REUSE_SECONDS = 60.0
# The logger of huggingface_hub's retry loop ("... thrown while requesting ...", "Retrying in 4s [Retry 3/5]").
RETRY_LOGGER = "huggingface_hub.utils._http"


class HubState(str, enum.Enum):
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    OFFLINE = "offline"  # HF_HUB_OFFLINE is set: never probed


@dataclass(frozen=True)
class HubStatus:
    """What one probe of `endpoint` found. detail: e.g. "HTTP 200 in 0.12 s", "no answer within 2 s"."""

    endpoint: str
    state: HubState
    detail: str

    @property
    def online(self) -> bool:
        return self.state is HubState.REACHABLE

    @property
    def reason(self) -> str:
        """Why files come from the local cache only, as a clause: "HF_HUB_OFFLINE is set"."""
        if self.state is HubState.OFFLINE:
            return "HF_HUB_OFFLINE is set"
        if self.state is HubState.UNREACHABLE:
            return f"the hub cannot be reached ({self.endpoint}: {self.detail})"
        return f"the hub answered ({self.endpoint}: {self.detail})"

    def to_dict(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "state": self.state.value, "detail": self.detail}


_recent_probes: dict[str, tuple[float, HubStatus]] = {}


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now or was when huggingface_hub loaded."""
    from_env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if from_env.upper() in TRUE_VALUES:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The hub huggingface_hub talks to (HF_ENDPOINT as it was when huggingface_hub loaded)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_status(*, timeout: float = PROBE_TIMEOUT_SECONDS, reuse: bool = True) -> HubStatus:
    """OFFLINE when HF_HUB_OFFLINE is set (nothing is sent), else the answer of a probe of the endpoint, reusing
    one made in the last minute unless `reuse` is False."""
    endpoint = hub_endpoint()
    if hub_offline():
        return HubStatus(endpoint, HubState.OFFLINE, "HF_HUB_OFFLINE is set")
    recent = _recent_probes.get(endpoint)
    if reuse and recent is not None and time.monotonic() - recent[0] < PROBE_REUSE_SECONDS:
        return recent[1]
    status = probe_hub(endpoint, timeout=timeout)
    _recent_probes[endpoint] = (time.monotonic(), status)
    return status


def probe_hub(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> HubStatus:
    """One HEAD request to `endpoint` (default: huggingface_hub's), no retries, at most `timeout` seconds in all.

    Sent with huggingface_hub's own HTTP client, so its proxy and certificate settings apply. Any answer below
    500 counts as reachable; server errors count as unreachable, since huggingface_hub would retry them too.
    """
    endpoint = endpoint or hub_endpoint()
    outcome: dict[str, object] = {}
    started = time.monotonic()

    def send() -> None:
        from huggingface_hub.utils import get_session

        try:
            outcome["status"] = get_session().head(endpoint, timeout=timeout).status_code
        except Exception as error:  # noqa: BLE001 - whatever the client raises, the hub did not answer
            outcome["error"] = first_line(error)

    # A thread bounds the whole probe: the client's timeout does not cover a hanging DNS lookup.
    worker = threading.Thread(target=send, name="framefusion-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    seconds = time.monotonic() - started
    if "status" in outcome:
        code = int(outcome["status"])  # type: ignore[call-overload]
        state = HubState.REACHABLE if code < 500 else HubState.UNREACHABLE
        return HubStatus(endpoint, state, f"HTTP {code} in {seconds:.2f} s")
    if "error" in outcome:
        return HubStatus(endpoint, HubState.UNREACHABLE, str(outcome["error"]))
    return HubStatus(endpoint, HubState.UNREACHABLE, f"no answer within {timeout:g} s")


@contextmanager
def hub_access(*, timeout: float = PROBE_TIMEOUT_SECONDS) -> Iterator[HubStatus]:
    """Hub downloads inside the block: offline (local cache only) unless the hub answers a quick probe, and
    without huggingface_hub's retry messages. Yields the HubStatus; everything is restored afterwards."""
    from huggingface_hub import constants

    status = hub_status(timeout=timeout)
    saved_constant = constants.HF_HUB_OFFLINE
    saved_environment = os.environ.get("HF_HUB_OFFLINE")
    retry_logger = logging.getLogger(RETRY_LOGGER)
    saved_level = retry_logger.level
    if not status.online:
        # huggingface_hub reads the variable once, at import: the constant is what its downloads consult.
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
    retry_logger.setLevel(logging.ERROR)
    try:
        yield status
    finally:
        retry_logger.setLevel(saved_level)
        constants.HF_HUB_OFFLINE = saved_constant
        if saved_environment is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_environment
