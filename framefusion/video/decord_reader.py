"""The decord decoder: fast, but only trusted where it agrees with the PyAV probe."""

from __future__ import annotations

import numpy as np

from framefusion.errors import FrameFusionError
from framefusion.video.clip import VideoInfo
from framefusion.video.probe import ffmpeg_path
from framefusion.video.sampling import TIME_EPSILON, frames_on_screen


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


class DecordDisagrees(FrameFusionError):
    """decord's view of the file does not match the PyAV probe: do not trust its frames (PyAV reads them instead)."""


def read_with_decord(info: VideoInfo, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames at `targets` (seconds from the first frame) with decord. Returns (uint8 (K,H,W,3), times (K,))."""
    import decord

    reader = decord.VideoReader(ffmpeg_path(info.path), ctx=decord.cpu(0))
    count = len(reader)
    if count < 1:
        raise DecordDisagrees("decord found no frames")
    spans = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64).reshape(count, 2)
    starts = spans[:, 0] - spans[0, 0]
    if np.any(np.diff(starts) < -TIME_EPSILON):
        raise DecordDisagrees("decord's frame times go backwards")
    # decord quietly stops early on some damaged files: its frames must reach the end the probe found.
    covered = spans[-1, 1] - spans[0, 0]
    frame_seconds = 1.0 / info.fps if info.fps > 0 else 0.0
    if covered < info.duration - max(1.5 * frame_seconds, 0.05):
        raise DecordDisagrees(f"decord's frames end at {covered:.3f} s, the video at {info.duration:.3f} s")
    picks = frames_on_screen(starts, targets)
    unique_picks, positions = np.unique(picks, return_inverse=True)
    batch = reader.get_batch(unique_picks.tolist()).asnumpy()
    # decord applies the rotation itself; anything else than the upright size means it did not.
    if batch.shape[1:] != (info.height, info.width, 3):
        raise DecordDisagrees(f"decord gave frames of {batch.shape[1:]}, expected {(info.height, info.width, 3)}")
    return np.ascontiguousarray(batch[positions], dtype=np.uint8), starts[picks]
