"""Error types. Each carries what was wrong and what would fit, as data, not as command-line words.

The library names settings by their Python parameter names (`frames`, `dtype`, `output`); the CLI words the same
error with its flags by passing `describe` a function that maps a setting to its flag. Exit codes in the CLI:
`InputError` (bad input or usage) -> 2, any other `FrameFusionError` (processing failed) -> 1.

    raise InputError("must be at least 1", setting="frames", value=0)
    str(error)                      -> "frames=0: must be at least 1"
    error.describe(cli_flag_name)   -> "--frames 0: must be at least 1"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


def python_setting_name(setting: str) -> str:
    return setting


@dataclass(frozen=True)
class Suggestion:
    """One way out: change `setting` (to `value` when one is known to fit), and why (`reason`, e.g. a size)."""

    text: str
    setting: str | None = None
    value: Any = None
    reason: str = ""

    def describe(self, name_setting: Callable[[str], str] = python_setting_name) -> str:
        if self.setting is None:
            return self.text + (f" ({self.reason})" if self.reason else "")
        name = name_setting(self.setting)
        change = name if self.value is None else f"{name} {self.value}" if name.startswith("-") else f"{name}={self.value!r}"
        details = ", ".join(part for part in (change, self.reason) if part)
        return f"{self.text} ({details})"


class FrameFusionError(Exception):
    """Base class of the errors this project raises on purpose.

    problem: what is wrong, in words that hold for a Python caller and a command-line user alike;
    setting/value: the setting at fault and what it was given, when one is; suggestions: ways out.
    """

    def __init__(self, problem: str, *, setting: str | None = None, value: Any = None,
                 suggestions: Sequence[Suggestion] = ()):
        self.problem = problem
        self.setting = setting
        self.value = value
        self.suggestions = tuple(suggestions)
        super().__init__(self.describe())

    def __reduce__(self):
        # Errors cross process boundaries (caption's decoder worker, Ray workers): keep the data, not only the text.
        return _rebuild, (type(self), self.problem, self.setting, self.value, self.suggestions)

    def describe(self, name_setting: Callable[[str], str] = python_setting_name) -> str:
        """The one-line message, with settings named by `name_setting` (the CLI passes its flags)."""
        message = self.problem
        if self.setting is not None:
            name = name_setting(self.setting)
            if self.value is None:
                subject = name
            elif name.startswith("-"):
                subject = f"{name} {self.value}"
            else:
                subject = f"{name}={self.value!r}"
            message = f"{subject}: {message}"
        if self.suggestions:
            message += ": " + "; or ".join(suggestion.describe(name_setting) for suggestion in self.suggestions)
        return message


class InputError(FrameFusionError, ValueError):
    """Bad input from the user: a file, a setting, a model name. Caught before any model is loaded when possible."""


class VideoError(InputError):
    """A video that cannot be read or sampled."""


class ProfileError(InputError):
    """A reduction profile file or setting that is not valid."""


class ModelLoadError(FrameFusionError):
    """A model that cannot be found, downloaded or loaded."""


class OutOfMemory(FrameFusionError):
    """The work does not fit in the device's memory; suggestions say which settings would make it fit."""


class WillNotFit(InputError):
    """Refused before loading: the estimate says the model and its inputs do not fit in the device's free memory."""


def one_line(error: BaseException, name_setting: Callable[[str], str] = python_setting_name, *,
             limit: int | None = None) -> str:
    """`error` as one line, for a terminal, a log line or a record: the one error formatter of the project.

    Our errors are described with settings named by `name_setting` (the CLI passes its flags). Any other error keeps
    its type in front, because it was not raised on purpose and its message alone can be cryptic (`KeyError: 'x'`).
    Line breaks and runs of spaces become one space; `limit` cuts a longer line to that many characters.
    """
    if isinstance(error, FrameFusionError):
        text = " ".join(error.describe(name_setting).split())
    else:
        message = " ".join(str(error).split())
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    text = text or type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def _rebuild(error_type: type, problem: str, setting: str | None, value: Any,
             suggestions: tuple[Suggestion, ...]) -> FrameFusionError:
    error = error_type.__new__(error_type)
    FrameFusionError.__init__(error, problem, setting=setting, value=value, suggestions=suggestions)
    return error


def first_line(error: BaseException) -> str:
    """An exception's message as one line: its first line, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
