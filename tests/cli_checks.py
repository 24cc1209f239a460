"""The one check of a command's error, for every CLI test: one line, the README's exit code, no traceback."""

from __future__ import annotations

from typing import Any


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
