"""The one line Ray's C++ core writes on the driver's stderr when its log level is set, kept off it.

RAY_BACKEND_LOG_LEVEL is the only setting of the C++ core's log level (`framefusion caption` sets it to `fatal`:
the core logs routine notes at error level, such as Ray Data's actor pool having "constructor arguments in the
object store"). The process that starts the core reads it and, before the level applies, announces at info level:

    [2026-12-05 17:14:38,678 I 9877 9877] logging.cc:303: Set ray log level from environment variable
    RAY_BACKEND_LOG_LEVEL to 3

The driver's core starts in `ray.init`, and writes to file descriptor 2, not to `sys.stderr`. So while `ray.init`
runs, descriptor 2 is a pipe whose lines a thread passes on to the real stderr as they come, all but that one; once
it has passed, descriptor 2 is the real stderr again. A warning while connecting ("Failed to connect to GCS ...") still
shows when it happens. Ray's daemons and workers write to their own log files, not to the driver's descriptor.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

LEVEL_VARIABLE = "RAY_BACKEND_LOG_LEVEL"
_LEVEL_NOTE = re.compile(rb"Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL")
# How long the end of the body waits for the last lines to be passed on.
_DRAIN_SECONDS = 2.0


@contextmanager
def without_ray_log_level_note() -> Iterator[None]:
    """Run the body (`ray.init`) with descriptor 2 passed through a filter that drops Ray's announcement of
    RAY_BACKEND_LOG_LEVEL and nothing else. Does nothing when that variable is unset (Ray announces nothing) or
    descriptor 2 is closed."""
    if LEVEL_VARIABLE not in os.environ:
        yield
        return
    try:
        held = _HeldStderr()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        held.release()


class _HeldStderr:
    """Descriptor 2 as a pipe, and the thread that passes its lines on to the real stderr (`target`, a descriptor
    of the thread's own: it may outlive the body if a child kept the pipe open)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = True
        self.target = os.dup(2)
        read_end, write_end = os.pipe()
        self.thread = threading.Thread(target=self._pass_on, args=(read_end,), daemon=True, name="ray-stderr")
        _flush_python_stderr()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread.start()

    def release(self) -> None:
        """Descriptor 2 back to the real stderr (if the announcement has not done it), and the last lines passed
        on: the pipe's last writer is gone, so the thread reads to its end and stops."""
        _flush_python_stderr()  # Python's own writes during the body come through the pipe, in order
        self._restore()
        self.thread.join(_DRAIN_SECONDS)

    def _restore(self) -> None:
        with self.lock:
            if self.held:
                os.dup2(self.target, 2)
                self.held = False

    def _pass_on(self, read_end: int) -> None:
        # After the announcement, the rest of `ray.init` writes straight to stderr.
        pending = b""
        try:
            while chunk := os.read(read_end, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if _LEVEL_NOTE.search(line):
                        self._restore()
                    else:
                        _write_all(self.target, line + b"\n")
            if pending:
                _write_all(self.target, pending)
        finally:
            os.close(read_end)
            os.close(self.target)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _flush_python_stderr() -> None:
    if sys.stderr is not None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


__all__ = ["LEVEL_VARIABLE", "without_ray_log_level_note"]
