"""Which of our child processes are still running: for the tests that check nothing outlives a run."""

from __future__ import annotations

import time
from typing import Iterable

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` now (children, grandchildren, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_running(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has ended; only its exit status waits to be read)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_running_after(processes: Iterable[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes that are still running `seconds` from now (returns as soon as none is)."""
    waiting = list(processes)
    deadline = time.monotonic() + seconds
    while True:
        waiting = [process for process in waiting if is_running(process)]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.1)


def command_line(process: psutil.Process) -> str:
    """The process's command line (as its process title shows it), "" once it has ended."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def describe(processes: Iterable[psutil.Process]) -> str:
    return "; ".join(f"{process.pid} {command_line(process)[:160] or '(ended)'}" for process in processes)
