"""What reading a video produces: a description of the file (`VideoInfo`) and sampled frames (`VideoClip`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns about a file without decoding it all.

    width, height: size of the frames as a player shows them (after rotation).
    rotation: counterclockwise degrees a player rotates the stored frames by (0, 90, 180 or 270).
    duration: seconds from the first frame to the end of the last one. num_frames: an estimate.
    start_time: presentation time (seconds) of the first frame in the file's own clock.
    """

    path: str
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    rotation: int
    codec: str
    container: str
    start_time: float


@dataclass(frozen=True, eq=False)
class VideoClip:
    """Frames sampled from a video.

    frames: uint8 (T, H, W, 3) RGB, upright as a player shows them.
    timestamps: seconds of each sampled frame from the video's first frame, length T, ascending.
    sampled_fps: T / (end - start), the rate of the sampled frames (not the file's).
    source_fps: the file's average frame rate. duration: the whole video's length (seconds).
    backend: what produced the frames: "decord" or "pyav" (or "memory" for `from_frames`).
    start, end: the time span sampled (seconds); end defaults to start + T / sampled_fps.
    """

    frames: np.ndarray
    timestamps: tuple[float, ...]
    sampled_fps: float
    source_fps: float
    duration: float
    path: str
    backend: str
    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        frames = self.frames
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be a uint8 array (T, H, W, 3), got {getattr(frames, 'shape', type(frames))}")
        if len(frames) == 0 or len(self.timestamps) != len(frames):
            raise ValueError(
                f"need at least one frame and one timestamp per frame, got {len(frames)} and {len(self.timestamps)}"
            )
        if not self.sampled_fps > 0:
            raise ValueError(f"sampled_fps must be > 0, got {self.sampled_fps}")
        if self.end is None:
            object.__setattr__(self, "end", self.start + len(frames) / self.sampled_fps)

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float, *, path: str = "<frames>") -> "VideoClip":
        """A clip of frames already in memory, taken at `fps` (e.g. `render_synthetic_frames` output).

        frames: uint8 (T, H, W, 3) RGB. Frame i is at i / fps seconds.
        """
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        count = len(frames)
        return cls(
            frames=frames,
            timestamps=tuple(index / fps for index in range(count)),
            sampled_fps=float(fps),
            source_fps=float(fps),
            duration=count / fps,
            path=path,
            backend="memory",
        )

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def video_metadata(self) -> Any:
        """transformers' `VideoMetadata` for these frames as an already sampled video.

        Pass it with `videos=processor_videos(clip.frames)` (transformers_compat), `video_metadata=[clip.video_metadata()]`
        and `do_sample_frames=False`:
        frames_indices 0..T-1 at fps = sampled_fps, so processors neither resample the frames nor mis-time
        them (Qwen2.5-VL: second_per_grid_ts = temporal_patch_size / sampled_fps).
        """
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(
            total_num_frames=self.num_frames,
            fps=self.sampled_fps,
            width=self.width,
            height=self.height,
            duration=self.num_frames / self.sampled_fps,
            video_backend=self.backend,
            frames_indices=list(range(self.num_frames)),
        )
