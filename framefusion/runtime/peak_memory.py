"""Peak memory of one piece of work: on a GPU the most allocated, on a CPU how far the resident memory rose."""

from __future__ import annotations

import threading
from typing import Any

import torch

from framefusion.runtime.clock import device_sync

# Seconds between two samples of the resident memory while a CPU run is measured.
RSS_SAMPLING_INTERVAL = 0.005


def release_free_memory_to_os() -> None:
    """Hand memory the allocator keeps from earlier runs back to the OS (glibc), so a run's growth is its own."""
    import ctypes
    import ctypes.util

    library = ctypes.util.find_library("c")
    if library is None:
        return
    try:
        trim = ctypes.CDLL(library).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): resident memory is read as it is
        return
    trim(0)


class _ResidentMemoryPeak:
    """Samples this process's resident memory in a background thread; `stop()` returns how far it rose."""

    def __init__(self, interval: float = RSS_SAMPLING_INTERVAL):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start_bytes = self._process.memory_info().rss
        self.peak_bytes = self.start_bytes
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return self.peak_bytes - self.start_bytes


class MemoryMeter:
    """Peak memory of the `with` block, in `peak_bytes`: GPU max allocated (reset first), or on a CPU the increase of
    resident memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            device_sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # Without this, pages freed after the warm-up stay resident and later runs appear to need nothing.
            release_free_memory_to_os()
            self._rss = _ResidentMemoryPeak()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            device_sync(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = int(self._rss.stop())
