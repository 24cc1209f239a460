"""Which of our child processes are still running: for the tests that check nothing outlives a run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterable

import psutil
import pytest


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


def wait_for_records(process: subprocess.Popen, output: Path, count: int, limit: float) -> None:
    """Wait until a running caption command has written `count` records (lines) to `output`; fail the test if it
    exits first or `limit` seconds pass (then it is killed)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"caption exited early ({process.returncode}): {process.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no record was written in time")
