"""The one way the tests run the command line, and the one check of a command's error: one line, the README's exit
code, no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The console script's own entry point (framefusion_cli.entry), for the tests that start the real command in a child
# process: what a user's shell runs, Ctrl-C handling included.
LAUNCH = "import sys; from framefusion_cli.entry import main; sys.exit(main())"


def run_cli(*arguments: object, input: str | None = None, env: dict[str, str] | None = None,
            catch_exceptions: bool = False) -> Any:
    """`framefusion ARGUMENTS` in this process through typer's CliRunner (stdout and stderr kept apart); returns its
    result. An exception the command does not turn into an error line propagates with its traceback, unless
    `catch_exceptions` keeps it in `result.exception`."""
    from typer.testing import CliRunner

    from framefusion_cli.app import app

    return CliRunner().invoke(app, [str(argument) for argument in arguments], input=input, env=env,
                              catch_exceptions=catch_exceptions)


def printed_json(result: Any) -> Any:
    """What a command that succeeded printed on stdout, read as JSON."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def printed_json_lines(result: Any) -> list[Any]:
    """What a command that succeeded printed on stdout, one JSON value per line."""
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file a command wrote; every line must be whole."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def framefusion_command(*arguments: object) -> list[str]:
    """The argument list that starts `framefusion ARGUMENTS` in a child process."""
    return [sys.executable, "-c", LAUNCH, *(str(argument) for argument in arguments)]


def error_line(result: Any, exit_code: int, *words: str, before_loading: bool = False) -> str:
    """The error line of `result` (a CliRunner result): the exit code is `exit_code`, no traceback shows, exactly one
    line starts with "error:" and it is the last one, and it holds every word of `words` (case as given).

    before_loading: the command was refused before any model loaded, so stderr holds the error line alone.
    """
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if before_loading:
        assert lines == errors, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]
