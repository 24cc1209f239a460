"""Timing work on a device: the one place that synchronises the device around a timer.

GPU work is asynchronous: a timer read without synchronising measures how fast the work was queued, not how long it
took. Every timer of the project (the pipeline's stages, each forward of the language model, FrameFusion's own
overhead, the benchmark's memory meter) synchronises through `device_sync`.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def device_sync(device: torch.device) -> None:
    """Wait until the work queued on `device` is done (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Adds up the seconds spent inside its `with` blocks, the device synchronised at both ends of each.

        with Stopwatch(device) as vision:
            features = encode(...)
        vision.seconds

    enabled=False: the blocks run with no synchronisation and nothing is counted, so work timed only on request
    (FrameFusion's overhead, which the benchmark asks for) costs nothing otherwise.
    """

    def __init__(self, device: torch.device, *, enabled: bool = True):
        self.device = device
        self.enabled = enabled
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        if self.enabled:
            device_sync(self.device)
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            device_sync(self.device)
            self.seconds += time.perf_counter() - self._start


class ForwardClock:
    """Times each forward of `module` from now until `close()`; for a language model inside generate(), the first
    forward is the prefill and the others are decode steps.

    starts, ends: `time.perf_counter()` readings around each forward; durations: ends - starts, seconds.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device = device
        self.starts: list[float] = []
        self.durations: list[float] = []
        self.ends: list[float] = []
        self._handles = [module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after)]

    def _before(self, *args: Any) -> None:
        device_sync(self.device)
        self.starts.append(time.perf_counter())

    def _after(self, *args: Any) -> None:
        device_sync(self.device)
        end = time.perf_counter()
        self.durations.append(end - self.starts[-1])
        self.ends.append(end)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
