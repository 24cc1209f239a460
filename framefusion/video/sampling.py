"""The sampling rules, pure: how many frames, which time span, which frame is on screen at a time.

Times are seconds from the video's first frame.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from framefusion.errors import InputError, VideoError

BACKENDS = ("auto", "decord", "pyav")
# Frames per second sampled when neither num_frames nor fps is given (what Qwen-VL processors default to).
DEFAULT_SAMPLING_FPS = 2.0
# Frame times from the two decoders and the slice centres are compared with this slack (seconds), so that
# float rounding never moves a pick to the neighbouring frame.
TIME_EPSILON = 1e-4


def slice_centres(start: float, end: float, count: int) -> np.ndarray:
    """Centres of `count` equal time slices of [start, end]. Returns float64 (count,)."""
    width = (end - start) / count
    return start + (np.arange(count, dtype=np.float64) + 0.5) * width


def frames_on_screen(frame_times: Sequence[float] | np.ndarray, targets: Sequence[float] | np.ndarray) -> np.ndarray:
    """Index of the frame a player shows at each target time: the last frame starting at or before it.

    frame_times: ascending start times (N,); targets: (K,). Returns int64 (K,); a target before the first
    frame gets frame 0.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    picks = np.searchsorted(times, np.asarray(targets, dtype=np.float64) + TIME_EPSILON, side="right") - 1
    return np.clip(picks, 0, len(times) - 1).astype(np.int64)


def sample_count(
    *, num_frames: int | None, fps: float | None, max_frames: int, span: float, source_fps: float
) -> int:
    """How many frames to sample from a span of `span` seconds.

    num_frames wins when given (exactly that many, even if it means repeating frames). Otherwise
    fps * span frames (fps defaults to DEFAULT_SAMPLING_FPS), at least 1, at most max_frames and at most the
    number of frames the file has in the span, so a high fps never repeats frames.
    """
    if num_frames is not None:
        return int(num_frames)
    rate = DEFAULT_SAMPLING_FPS if fps is None else float(fps)
    wanted = max(1, round(rate * span))
    frames_in_span = max(1, round(source_fps * span)) if source_fps > 0 else wanted
    return int(min(wanted, max_frames, frames_in_span))


def check_sampling_arguments(
    *,
    num_frames: int | None,
    fps: float | None,
    max_frames: int,
    start: float | None,
    end: float | None,
    backend: str,
) -> None:
    """Raise InputError, naming the setting, for arguments that are wrong whatever the video."""
    if num_frames is not None and fps is not None:
        raise InputError("sample either a number of frames or at a rate, not both", setting="fps", value=fps)
    if num_frames is not None and (not _is_integer(num_frames) or num_frames < 1):
        raise InputError("must be a whole number >= 1", setting="num_frames", value=num_frames)
    if fps is not None and (not _is_real(fps) or not math.isfinite(fps) or fps <= 0):
        raise InputError("must be a number > 0", setting="fps", value=fps)
    if not _is_integer(max_frames) or max_frames < 1:
        raise InputError("must be a whole number >= 1", setting="max_frames", value=max_frames)
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not _is_real(value) or not math.isfinite(value) or value < 0):
            raise InputError("must be a number of seconds >= 0", setting=name, value=value)
    if start is not None and end is not None and end <= start:
        raise InputError(f"must be after the start ({start} s)", setting="end", value=end)
    if backend not in BACKENDS:
        raise InputError(f"unknown video backend: use one of {', '.join(BACKENDS)}", setting="backend", value=backend)


def resolve_time_span(start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    """The span [start, end] to sample, seconds: defaults to the whole video; an end past the video is clipped."""
    span_start = 0.0 if start is None else float(start)
    if span_start >= duration:
        raise VideoError(f"is at or past the end of the video ({duration:.3f} s long): use a start below {duration:.3f}",
                         setting="start", value=span_start)
    span_end = duration if end is None else min(float(end), duration)
    return span_start, span_end


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
