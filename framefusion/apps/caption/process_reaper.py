"""End what a process started once that process is gone, however it ended (kill -9 and the OOM killer included).

Some helpers do not end with the process that started them: Ray's local instance ties its daemons to the process
that started it, but two of them (the dashboard and runtime-env agents) outlive a killed owner by a minute while
they try to report its death to the dead control store. The reaper is a small separate process that notes, twice
a second, every process its parent started since the reaper began; when the parent dies, it kills those still
running, then exits. Stopped normally, it exits without killing anything.

    reaper = ProcessReaper.start()   # before starting the helpers
    ...
    reaper.stop()                    # after shutting them down

It runs this file as a script (`python process_reaper.py PARENT_PID`): no package import, so it starts in a
fraction of a second and holds no model or GPU memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

SNAPSHOT_SECONDS = 0.5
_STOP = b"stop\n"


class ProcessReaper:
    """The reaper process watching this one."""

    def __init__(self, process: subprocess.Popen):
        self._process = process

    @classmethod
    def start(cls) -> "ProcessReaper":
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
            # Its own session: Ctrl-C at the terminal, meant for us, must not end the reaper first.
            start_new_session=True,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        """The work ended normally: the reaper exits and kills nothing."""
        try:
            self._process.stdin.write(_STOP)
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def watch(parent_pid: int) -> None:
    """Reaper body: snapshot the parent's new descendants until it dies (kill them) or says stop (kill nothing)."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopped = threading.Event()
    stdin_ended = threading.Event()

    def read_stdin() -> None:
        # EOF without the stop line: the parent died (its end of the pipe closed with it).
        if sys.stdin.buffer.readline() == _STOP:
            stopped.set()
        stdin_ended.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        parent = psutil.Process(parent_pid)
        there_before = {child.pid for child in parent.children(recursive=True)}
    except psutil.NoSuchProcess:
        return
    started: dict[int, psutil.Process] = {}
    while not stdin_ended.is_set() and os.getppid() == parent_pid:
        try:
            for child in parent.children(recursive=True):
                if child.pid not in there_before and child.pid != os.getpid():
                    started.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        stdin_ended.wait(SNAPSHOT_SECONDS)
    stdin_ended.wait(0.2)  # a stop line written just before the parent ended
    if stopped.is_set():
        return
    for process in started.values():
        try:
            if process.is_running():  # same pid and start time: never a reused pid
                process.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
