"""`read_video`: probe the file, work out the frames to sample, and read them with decord or PyAV."""

from __future__ import annotations

import logging
import os

from framefusion.errors import InputError
from framefusion.video.clip import VideoClip
from framefusion.video.decord_reader import decord_available, read_with_decord
from framefusion.video.probe import error_reason, probe_video
from framefusion.video.pyav_reader import read_with_pyav
from framefusion.video.sampling import (
    check_sampling_arguments,
    resolve_time_span,
    sample_count,
    slice_centres,
)

logger = logging.getLogger(__name__)


def resolve_backend(backend: str) -> str:
    """"auto" -> "decord" when importable else "pyav"; "decord" without decord is an InputError."""
    if backend == "auto":
        return "decord" if decord_available() else "pyav"
    if backend == "decord" and not decord_available():
        raise InputError("The decord backend is not installed; `pip install decord` or use backend='pyav'.")
    return backend


def read_video(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 64,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
) -> VideoClip:
    """Sample frames uniformly in time from [start, end] (seconds; default the whole video).

    num_frames: exactly that many frames, one at the centre of each of num_frames equal time slices.
    fps: fps * span frames instead, capped by max_frames and by the frames the file has; neither given:
    DEFAULT_SAMPLING_FPS. Each pick is the frame a player shows at the slice centre. An end past the video is
    clipped to it. backend: "auto" (decord if installed, else PyAV), "decord" or "pyav"; decord failing or
    disagreeing with the probe falls back to PyAV (clip.backend tells which one ran).
    Raises InputError for bad arguments, VideoError for files that cannot be read.
    """
    check_sampling_arguments(
        num_frames=num_frames, fps=fps, max_frames=max_frames, start=start, end=end, backend=backend
    )
    chosen = resolve_backend(backend)
    info = probe_video(path)
    span_start, span_end = resolve_time_span(start, end, info.duration)
    count = sample_count(
        num_frames=num_frames, fps=fps, max_frames=max_frames, span=span_end - span_start, source_fps=info.fps
    )
    targets = slice_centres(span_start, span_end, count)
    frames = times = None
    if chosen == "decord":
        try:
            frames, times = read_with_decord(info, targets)
        except Exception as error:  # decord raises its own types and RuntimeError; PyAV decides below
            logger.warning(
                "decord could not read %s (%s); reading it with PyAV instead.", info.path, error_reason(error)
            )
            chosen = "pyav"
    if chosen == "pyav":
        frames, times = read_with_pyav(info, targets)
    return VideoClip(
        frames=frames,
        timestamps=tuple(float(t) for t in times),
        sampled_fps=count / (span_end - span_start),
        source_fps=info.fps,
        duration=info.duration,
        path=info.path,
        backend=chosen,
        start=span_start,
        end=span_end,
    )
