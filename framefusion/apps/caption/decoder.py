"""Decoding videos in a child process that never outlives the process that started it.

A decoder that aborts or segfaults on a corrupt file (decord can) takes down only the child, which is replaced,
and the file gets an error record. The child decodes the next video while the model works on the current one.

However its parent ends (a clean exit, Ctrl-C, kill -9, the OOM killer), the child ends within a moment:
- on Linux the kernel kills it when the parent dies (prctl PR_SET_PDEATHSIG), armed when the child was started
  from the parent's main thread (the signal follows the *thread* that forked, which in a Ray actor is a pool thread);
- everywhere, a watchdog thread in the child exits as soon as its parent process id changes (re-parenting), and the
  child's reads end on the pipe's end-of-file: the parent's end is closed in the child, so the parent's death
  closes the pipe.
The child never blocks or ignores SIGTERM, so `kill` ends it at once.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from framefusion.errors import VideoError

PARENT_CHECK_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int, *, kernel_signal: bool) -> None:
    """Make this (child) process end as soon as the process `parent_pid` is gone, however it ended.

    kernel_signal: also ask Linux to SIGKILL us when the parent dies (only right when the thread that started
    us lives as long as the parent process). Call it first thing in the child.
    """
    if kernel_signal and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the watchdog below still works
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    # Also covers the parent dying before prctl above was armed: the parent id has already changed then.
    threading.Thread(target=watch, name="framefusion-parent-watch", daemon=True).start()


def restore_default_termination() -> None:
    """SIGTERM ends the process at once, whatever was blocked or handled in the parent at fork time; Ctrl-C,
    which reaches the whole process group, is left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask on this platform
        pass


def decode_video(path: str, settings: Any) -> Any:
    """The frames of one video as `settings` (a CaptionSettings) sample them: a VideoClip."""
    from framefusion.video import check_frame_shape_for_model, read_video

    clip = read_video(path, num_frames=settings.frames if settings.fps is None else None, fps=settings.fps,
                      max_frames=settings.max_frames, backend=settings.backend)
    check_frame_shape_for_model(clip.width, clip.height, path)
    return clip


def one_line_error(error: BaseException, path: str | None = None) -> str:
    """An exception as one line, without the file's path in front (the record names the video already)."""
    from framefusion.errors import FrameFusionError

    message = " ".join(str(error).split()) or type(error).__name__
    if path and message.startswith(f"{path}: "):
        message = message[len(path) + 2:]
    if not isinstance(error, FrameFusionError):
        message = f"{type(error).__name__}: {message}"
    return message


def _decode_loop(connection: Connection, decode: Callable[[str, Any], Any], parent_pid: int,
                 inherited: Sequence[Connection], kernel_signal: bool) -> None:
    """Child body: decode each (path, settings) received; answer ("clip", clip, seconds) or ("error", message)."""
    # fork copied the parent's end of the pipe into this process; while we hold it, the parent's death could not
    # close the pipe and our reads would wait forever.
    for connection_copy in inherited:
        connection_copy.close()
    restore_default_termination()
    end_with_parent(parent_pid, kernel_signal=kernel_signal)
    # A crash here is reported by the parent as the file's error; a Python traceback dump would only be noise.
    faulthandler.disable()
    while True:
        try:
            path, settings = connection.recv()
        except (EOFError, OSError):  # the parent is gone, or stopped us
            return
        started = time.perf_counter()
        try:
            clip = decode(path, settings)
            reply: tuple = ("clip", clip, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure becomes the file's error record
            reply = ("error", one_line_error(error, path))
        try:
            connection.send(reply)
        except (BrokenPipeError, OSError):
            return


class DecodeTimeout(VideoError):
    """Decoding one video took longer than the time allowed for it."""


class DecodeWorker:
    """One child process that decodes videos, one at a time, and is replaced when it dies or hangs.

    decode: the function run in the child, (path, settings) -> VideoClip (tests pass one that crashes).
    """

    def __init__(self, decode: Callable[[str, Any], Any] = decode_video):
        self.decode = decode
        methods = multiprocessing.get_all_start_methods()
        # fork: the child needs no imports and starts in milliseconds; it never touches torch or the GPU.
        self._forks = "fork" in methods
        self._context = multiprocessing.get_context("fork" if self._forks else "spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self.pending: str | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs (tests and diagnostics)."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent_end, child_end = self._context.Pipe()
        kernel_signal = threading.current_thread() is threading.main_thread()
        self._process = self._context.Process(
            target=_decode_loop,
            args=(child_end, self.decode, os.getpid(), (parent_end,) if self._forks else (), kernel_signal),
            daemon=True, name="framefusion-decoder",
        )
        self._process.start()
        child_end.close()
        self._connection = parent_end

    def submit(self, path: str, settings: Any) -> None:
        self.start()
        self._connection.send((path, settings))
        self.pending = path

    def result(self, timeout: float | None = None) -> tuple[Any, float]:
        """The clip of the submitted video and the seconds its decoding took; VideoError when it failed."""
        self.pending = None
        try:
            ready = self._connection.poll(timeout)
        except (EOFError, OSError):
            ready = True
        if not ready:
            self.stop()
            raise DecodeTimeout("decoding took longer than the time allowed for one video; allow more or check the "
                                "file", setting="timeout", value=timeout)
        try:
            reply = self._connection.recv()
        except Exception:  # noqa: BLE001 - EOF, or a reply cut short when the child died while sending it
            code = self._exit_code()
            self.stop()
            raise VideoError(
                f"the video decoder crashed on this file ({code}); it is probably corrupt: re-encode it "
                "(e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`)"
            ) from None
        if reply[0] == "error":
            raise VideoError(reply[1])
        return reply[1], reply[2]

    def _exit_code(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def stop(self) -> None:
        """Kill the child (it may be stuck in C code) and forget it; the next submit starts a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None
        self.pending = None


__all__ = ["DecodeTimeout", "DecodeWorker", "decode_video", "end_with_parent", "one_line_error",
           "restore_default_termination"]
