"""Where the commands write, and the one place that turns errors into one line and an exit code."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from framefusion.errors import FrameFusionError, InputError
from framefusion_cli.options import flag_for_setting

stdout = Console()
stderr = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def run_guarded(debug: bool, work: Callable[[], Any]) -> Any:
    """Run a command body; turn our errors into one line on stderr and an exit code (tracebacks with --debug).
    The library's warnings (a feature cache that cannot be used, a decoder fallback) print as one line each."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning
            return work()
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            stderr.print_exception()
        text = error.describe(flag_for_setting) if isinstance(error, FrameFusionError) else str(error)
        message = " ".join(text.split()) or type(error).__name__
        code = EXIT_USAGE if isinstance(error, InputError) else EXIT_FAILED
        if not isinstance(error, FrameFusionError):
            message = f"{type(error).__name__}: {message}" + ("" if debug else " (run with --debug for the traceback)")
        print_error(message)
        raise typer.Exit(code)


def print_error(message: str) -> None:
    """One line on stderr. escape: a message may hold brackets (pip install 'framefusion[ray]') that are not markup."""
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _one_line_warning(message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}", highlight=False,
                 soft_wrap=True)


def log(message: str) -> None:
    """Progress notes: on stderr, so stdout stays clean for --json."""
    stderr.print(f"[dim]{message}[/dim]", highlight=False)


def announce_loading(model: str) -> None:
    """Say that the model loads. transformers' own weight-loading bar stays off stderr when stderr is not a terminal
    (a log or a pipe): there it would leave a line per load; hub downloads keep their progress."""
    log(f"loading {model} ...")
    if not stderr.is_terminal:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
