"""One error formatter: `one_line` words our errors from their data and any other error with its type, on one line."""

from __future__ import annotations

import av
import pytest

from framefusion.errors import InputError, Suggestion, one_line
from framefusion.video.probe import error_reason


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def test_our_errors_name_settings_as_the_caller_asks():
    error = InputError("must be at least 1", setting="max_new_tokens", value=0,
                       suggestions=[Suggestion("ask for one token", setting="max_new_tokens", value=1)])
    assert one_line(error) == "max_new_tokens=0: must be at least 1: ask for one token (max_new_tokens=1)"
    assert one_line(error, flag) == "--max-new-tokens 0: must be at least 1: ask for one token (--max-new-tokens 1)"


def test_other_errors_keep_their_type_and_lose_their_line_breaks():
    assert one_line(KeyError("frames")) == "KeyError: 'frames'"
    assert one_line(RuntimeError("first line\n  second\tline\n")) == "RuntimeError: first line second line"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(InputError("a\nb")) == "a b"


def test_limit_cuts_a_long_line():
    text = one_line(ValueError("x" * 500), limit=40)
    assert len(text) == 40 and text.startswith("ValueError: xxx") and text.endswith("...")


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file or directory", "/videos/a.mp4"),
                                   av.error.InvalidDataError(1094995529, "Invalid data found when processing input",
                                                             "/videos/a.mp4")])
def test_video_reasons_leave_out_the_errno_and_the_file_name_the_message_has_already(error):
    assert "/videos/a.mp4" in str(error)
    reason = error_reason(error)
    assert "/videos/a.mp4" not in reason and "Errno" not in reason and reason.startswith(("No such", "Invalid data"))
