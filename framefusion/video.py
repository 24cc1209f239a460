"""Reading and sampling video frames.

One sampler for the whole project: `read_video` picks frames uniformly in time (the centres of equal time
slices), by timestamp, so variable-frame-rate files are sampled correctly, and it seeks rather than
decoding a whole long file. Two decoders: decord (fast, default when installed) and PyAV (everywhere, and the
fallback). Every file is first checked with PyAV (`probe_video`): decord can abort the process or quietly
substitute other frames on some broken files, so it only sees files that passed the check, and its answer
is checked against the probe before it is used.

Times in this module are seconds from the video's first frame.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import numbers
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import av
import numpy as np

from framefusion.errors import InputError, VideoError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# Frames per second sampled when neither num_frames nor fps is given (what Qwen-VL processors default to).
DEFAULT_SAMPLING_FPS = 2.0
# Frame times from the two decoders and the slice centres are compared with this slack (seconds), so that
# float rounding never moves a pick to the neighbouring frame.
TIME_EPSILON = 1e-4
# Without a keyframe index, decode forward instead of seeking when the next wanted time is this close (seconds).
SEEK_GAP_SECONDS = 2.0
# How far before the declared end the probe starts reading packets to find where the video really ends.
TAIL_SCAN_SECONDS = 2.0
# A file whose packets stop more than this (or two frames) before the end its header declares is truncated.
TRUNCATION_SLACK_SECONDS = 0.2
# Smallest frame side handed to a model's processor (Qwen-VL's block size); smaller frames are enlarged.
MIN_MODEL_SIDE = 28
# Qwen-VL processors refuse frames whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200

_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe")
_REENCODE_HINT = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or pick another file"


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


# --------------------------------------------------------------------------------------------------------
# Frames a model's processor can take
# --------------------------------------------------------------------------------------------------------


def check_frame_shape_for_model(width: int, height: int, path: str) -> None:
    """VideoError for frames no model processor takes: more than MAX_ASPECT_RATIO times wider than tall, or
    taller than wide (Qwen-VL's resize refuses them). Cheap: call it on `probe_video`'s size before loading."""
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise VideoError(
            f"{path}: frames of {width}x{height} pixels are too narrow for the model (aspect ratio above "
            f"{MAX_ASPECT_RATIO}:1); crop or pad the video first."
        )


def enlarge_small_frames(clip: VideoClip, min_side: int = MIN_MODEL_SIDE) -> VideoClip:
    """The clip with each pixel repeated until both sides are at least `min_side` (nearest neighbour, as a player
    shows a tiny video enlarged); the clip itself when it is large enough.

    Why: Qwen-VL processors work in 28-pixel blocks, and transformers reads frames 1 or 3 pixels tall as
    channels-first images, so tiny frames are silently misread. Frames more than MAX_ASPECT_RATIO times wider
    than tall (or taller than wide) are refused with a VideoError: the processors fail on them.
    frames: uint8 (T, H, W, 3) -> uint8 (T, H * k, W * k, 3), k = ceil(min_side / min(H, W)).
    """
    height, width = clip.height, clip.width
    check_frame_shape_for_model(width, height, clip.path)
    factor = math.ceil(min_side / min(height, width))
    if factor <= 1:
        return clip
    enlarged = np.repeat(np.repeat(clip.frames, factor, axis=1), factor, axis=2)
    return dataclasses.replace(clip, frames=np.ascontiguousarray(enlarged))


# --------------------------------------------------------------------------------------------------------
# Pure sampling rules
# --------------------------------------------------------------------------------------------------------


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
    """Raise InputError for arguments that are wrong whatever the video."""
    if num_frames is not None and fps is not None:
        raise InputError("Pass either num_frames or fps, not both.")
    if num_frames is not None and (not _is_integer(num_frames) or num_frames < 1):
        raise InputError(f"num_frames must be a whole number >= 1, got {num_frames!r}.")
    if fps is not None and (not _is_real(fps) or not math.isfinite(fps) or fps <= 0):
        raise InputError(f"fps must be a number > 0, got {fps!r}.")
    if not _is_integer(max_frames) or max_frames < 1:
        raise InputError(f"max_frames must be a whole number >= 1, got {max_frames!r}.")
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not _is_real(value) or not math.isfinite(value) or value < 0):
            raise InputError(f"{name} must be a number of seconds >= 0, got {value!r}.")
    if start is not None and end is not None and end <= start:
        raise InputError(f"end ({end} s) must be after start ({start} s).")
    if backend not in BACKENDS:
        raise InputError(f"Unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}.")


def resolve_time_span(start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    """The span [start, end] to sample, seconds: defaults to the whole video; an end past the video is clipped."""
    span_start = 0.0 if start is None else float(start)
    if span_start >= duration:
        raise VideoError(
            f"start={span_start:g} s is at or past the end of the video ({duration:.3f} s long); "
            f"use a start below {duration:.3f}."
        )
    span_end = duration if end is None else min(float(end), duration)
    return span_start, span_end


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """"auto" -> "decord" when importable else "pyav"; "decord" without decord is an InputError."""
    if backend == "auto":
        return "decord" if decord_available() else "pyav"
    if backend == "decord" and not decord_available():
        raise InputError("The decord backend is not installed; `pip install decord` or use backend='pyav'.")
    return backend


# --------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a readable video and describe it, with PyAV, decoding only the first frame.

    Raises VideoError (one line) for a missing path, a directory, a FIFO/device/socket, an empty file, a file
    that is not a video or has no video stream, and a truncated or corrupt file.
    """
    path_text = str(path)
    _check_regular_file(path_text)
    try:
        container = av.open(_file_path_for_ffmpeg(path_text), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(
            f"{path_text}: not a readable video ({_short(error)}); check the file or {_REENCODE_HINT}."
        ) from None
    with container:
        return _probe_open_container(container, path_text)


def _file_path_for_ffmpeg(path: str) -> str:
    """The absolute path: FFmpeg reads a name such as "concat:a.mp4" or "http:x" as a protocol, not a file."""
    return os.path.abspath(path)


def _check_regular_file(path: str) -> None:
    # stat before opening: opening a FIFO for reading blocks until a writer appears.
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file; check the path.") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise VideoError(f"{path}: a loop of symbolic links; point the link at a real file.") from None
        reason = error.strerror or _short(error)
        raise VideoError(f"{path}: cannot access the file ({reason}).") from None
    if stat.S_ISDIR(status.st_mode):
        raise VideoError(f"{path}: is a directory; pass a video file inside it.")
    if not stat.S_ISREG(status.st_mode):
        raise VideoError(f"{path}: not a regular file (a pipe, device or socket); save the video to a file first.")
    if status.st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes); it may still be downloading or copying.")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied; make the file readable.")


def _probe_open_container(container: Any, path: str) -> VideoInfo:
    if container.format.name in _IMAGE_FORMATS:
        raise VideoError(f"{path}: a still image, not a video; pass a video file.")
    stream = _main_video_stream(container)
    if stream is None:
        kinds = sorted({s.type for s in container.streams if s.type != "video"})
        if container.streams.video:
            kinds.append("a cover picture")
        held = " and ".join(kinds) or "nothing"
        raise VideoError(f"{path}: has no video stream (it holds {held}); pass a video file.")
    first = _first_frame(container, stream, path)
    first_time = float(first.time) if first.time is not None else 0.0
    fps = _average_fps(stream)
    declared_end = _declared_end(container, stream)
    observed_end, end_of_all_streams = _scan_tail(container, stream, declared_end, fps, path)
    frame_seconds = 1.0 / fps if fps > 0 else 0.0
    # A file whose data stops well before the end its header promises has lost its tail.
    reference_end = observed_end if stream.duration else end_of_all_streams
    if declared_end is not None and reference_end < declared_end - max(TRUNCATION_SLACK_SECONDS, 2 * frame_seconds):
        raise VideoError(
            f"{path}: truncated or corrupt: the header says the video ends at {declared_end:.2f} s but the data "
            f"stops at {reference_end:.2f} s; {_REENCODE_HINT}."
        )
    duration = max(observed_end - first_time, frame_seconds, 1e-3)
    rotation = _normalised_rotation(first.rotation)
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    num_frames = int(stream.frames) if stream.frames else max(1, round(duration * fps))
    return VideoInfo(
        path=path,
        duration=duration,
        fps=fps if fps > 0 else num_frames / duration,
        num_frames=num_frames,
        width=width,
        height=height,
        rotation=rotation,
        codec=stream.codec_context.name,
        container=container.format.name,
        start_time=first_time,
    )


def _main_video_stream(container: Any) -> Any | None:
    # Cover art in audio files is a video stream marked as an attached picture: that is not a video.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _first_frame(container: Any, stream: Any, path: str) -> Any:
    try:
        sent_data = False
        for packet in container.demux(stream):
            # The demuxer ends with an empty packet that flushes the decoder. PyAV before 16 crashes (segfault) when
            # that flush is the first thing a decoder sees (a file cut inside its header): flush only after data.
            if packet.size == 0 and not sent_data:
                break
            sent_data = sent_data or packet.size > 0
            for frame in packet.decode():
                return frame
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{path}: the first frame cannot be decoded ({_short(error)}); {_REENCODE_HINT}.") from None
    raise VideoError(f"{path}: the video stream holds no decodable frame; {_REENCODE_HINT}.")


def _average_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 10_000:
            return float(rate)
    return 0.0


def _declared_end(container: Any, stream: Any) -> float | None:
    """End time (seconds, file clock) the headers promise for the video, or None when they do not say."""
    if stream.duration and stream.time_base:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)
    if container.duration:
        start = container.start_time or 0
        return (start + container.duration) / av.time_base
    return None


def _scan_tail(container: Any, stream: Any, declared_end: float | None, fps: float, path: str) -> tuple[float, float]:
    """Read (not decode) the packets at the end of the file.

    Returns (end of the video stream, end of any stream), seconds in the file clock: the end of a stream is
    the start of its last frame in presentation order plus that frame's duration.
    """
    scan_from = None if declared_end is None else declared_end - TAIL_SCAN_SECONDS
    ends = _packet_ends(container, stream, scan_from, fps, path)
    if ends[0] is None and scan_from is not None:
        # Nothing readable after the seek point: read from the start to find where the data stops.
        ends = _packet_ends(container, stream, None, fps, path)
    video_end, any_end = ends
    if video_end is None:
        raise VideoError(f"{path}: the video stream holds no readable packets; {_REENCODE_HINT}.")
    return video_end, max(video_end, any_end or video_end)


def _packet_ends(
    container: Any, stream: Any, scan_from: float | None, fps: float, path: str
) -> tuple[float | None, float | None]:
    try:
        if scan_from is None or scan_from <= 0:
            container.seek(0, backward=True, any_frame=False)
        else:
            container.seek(int(scan_from / stream.time_base), stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError):
        pass  # not seekable: keep reading from where the first frame left off
    latest: dict[int, tuple[float, float]] = {}  # stream index -> (latest start, its end)
    try:
        for packet in container.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            begin = float(packet.pts * packet.time_base)
            length = float(packet.duration * packet.time_base) if packet.duration else 0.0
            if packet.stream.index == stream.index and not length and fps > 0:
                length = 1.0 / fps
            previous = latest.get(packet.stream.index)
            if previous is None or begin >= previous[0]:
                latest[packet.stream.index] = (begin, begin + length)
    except (av.FFmpegError, OSError):
        pass  # a read error at the tail: what was read so far tells where the good data stops
    video = latest.get(stream.index)
    any_end = max((end for _, end in latest.values()), default=None)
    return (video[1] if video else None), any_end


def _normalised_rotation(degrees: float | None) -> int:
    """Counterclockwise rotation snapped to 0, 90, 180 or 270 degrees."""
    if not degrees:
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


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
            frames, times = _read_with_decord(info, targets)
        except Exception as error:  # decord raises its own types and RuntimeError; PyAV decides below
            logger.warning("decord could not read %s (%s); reading it with PyAV instead.", info.path, _short(error))
            chosen = "pyav"
    if chosen == "pyav":
        frames, times = _read_with_pyav(info, targets)
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


class _DecordDisagrees(RuntimeError):
    """decord's view of the file does not match the PyAV probe: do not trust its frames."""


def _read_with_decord(info: VideoInfo, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames at `targets` (seconds from the first frame) with decord. Returns (uint8 (K,H,W,3), times (K,))."""
    import decord

    reader = decord.VideoReader(_file_path_for_ffmpeg(info.path), ctx=decord.cpu(0))
    count = len(reader)
    if count < 1:
        raise _DecordDisagrees("decord found no frames")
    spans = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64).reshape(count, 2)
    starts = spans[:, 0] - spans[0, 0]
    if np.any(np.diff(starts) < -TIME_EPSILON):
        raise _DecordDisagrees("decord's frame times go backwards")
    # decord quietly stops early on some damaged files: its frames must reach the end the probe found.
    covered = spans[-1, 1] - spans[0, 0]
    frame_seconds = 1.0 / info.fps if info.fps > 0 else 0.0
    if covered < info.duration - max(1.5 * frame_seconds, 0.05):
        raise _DecordDisagrees(f"decord's frames end at {covered:.3f} s, the video at {info.duration:.3f} s")
    picks = frames_on_screen(starts, targets)
    unique_picks, positions = np.unique(picks, return_inverse=True)
    batch = reader.get_batch(unique_picks.tolist()).asnumpy()
    # decord applies the rotation itself; anything else than the upright size means it did not.
    if batch.shape[1:] != (info.height, info.width, 3):
        raise _DecordDisagrees(f"decord gave frames of {batch.shape[1:]}, expected {(info.height, info.width, 3)}")
    return np.ascontiguousarray(batch[positions], dtype=np.uint8), starts[picks]


def _read_with_pyav(info: VideoInfo, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames at `targets` (seconds from the first frame) with PyAV. Returns (uint8 (K,H,W,3), times (K,))."""
    try:
        container = av.open(_file_path_for_ffmpeg(info.path), mode="r")
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{info.path}: cannot open the video ({_short(error)}).") from None
    with container:
        stream = _main_video_stream(container)
        stream.thread_type = "AUTO"
        decoder = _ForwardDecoder(container, stream, info)
        frames, times = [], []
        converted: dict[int, np.ndarray] = {}
        for target in targets:
            frame, time = decoder.frame_at(float(target))
            if id(frame) not in converted:
                converted = {id(frame): _upright_rgb(frame, info.rotation)}
            frames.append(converted[id(frame)])
            times.append(time)
    times = np.asarray(times, dtype=np.float64)
    # Seeks into damaged data can still land on frames stamped out of order: refuse rather than mis-time them.
    if np.any(np.diff(times) < -TIME_EPSILON):
        raise VideoError(f"{info.path}: frame times go backwards (damaged timestamps); {_REENCODE_HINT}.")
    return np.stack(frames), times


class _ForwardDecoder:
    """Decodes forward from seek points and answers "which frame is on screen at time t" for ascending t."""

    def __init__(self, container: Any, stream: Any, info: VideoInfo):
        self.container, self.stream, self.info = container, stream, info
        self.frames: Iterator[Any] | None = None
        self.current: tuple[float, Any] | None = None  # last decoded frame at or before the wanted time
        self.upcoming: tuple[float, Any] | None = None  # first decoded frame after it
        self._sought_from_start = False

    def frame_at(self, target: float) -> tuple[Any, float]:
        """The frame on screen at `target` seconds and its time (seconds from the first frame)."""
        if not self._can_continue_to(target):
            self._seek(target)
        while True:
            if self.upcoming is None:
                self.upcoming = self._next_frame(target)
            if self.upcoming is None:
                return self._last_frame_for(target)
            if self.current is not None and self.upcoming[0] < self.current[0] - TIME_EPSILON:
                # A frame stamped earlier than one already shown: damaged or repeated data; a player skips it.
                self.upcoming = None
                continue
            if self.upcoming[0] <= target + TIME_EPSILON:
                self.current, self.upcoming = self.upcoming, None
                continue
            if self.current is None:
                # The seek landed after the target (unusual index): start again from the beginning.
                if self._sought_from_start:
                    return self.upcoming[1], self.upcoming[0]
                self._seek(0.0, from_start=True)
                continue
            return self.current[1], self.current[0]

    def _can_continue_to(self, target: float) -> bool:
        if self.frames is None or self.current is None or self.current[0] > target + TIME_EPSILON:
            return False
        keyframe = self._last_keyframe_at_or_before(target)
        if keyframe is None:
            return target - self.current[0] < SEEK_GAP_SECONDS
        # A seek restarts decoding at that keyframe: it saves work only when the keyframe lies ahead of us.
        return keyframe <= self.current[0] + TIME_EPSILON

    def _last_keyframe_at_or_before(self, target: float) -> float | None:
        """Time of the last indexed keyframe at or before `target` (seconds), None when the file has no index.

        Containers index decoding timestamps, a little earlier than presentation ones: close enough to decide.
        """
        # PyAV exposes the index from 16 on; with older PyAV (lmms-eval pins av<16) decide by distance alone.
        entries = getattr(self.stream, "index_entries", None)
        if entries is None or len(entries) == 0:
            return None
        file_time = int((self.info.start_time + target) / self.stream.time_base)
        position = entries.search_timestamp(file_time, backward=True, any_frame=False)
        if position < 0:
            return None
        return float(entries[position].timestamp * self.stream.time_base) - self.info.start_time

    def _seek(self, target: float, from_start: bool = False) -> None:
        self._sought_from_start = from_start or target <= SEEK_GAP_SECONDS
        file_time = self.info.start_time + target
        try:
            if self._sought_from_start:
                self.container.seek(0, backward=True, any_frame=False)
            else:
                self.container.seek(
                    int(file_time / self.stream.time_base), stream=self.stream, backward=True, any_frame=False
                )
        except (av.FFmpegError, OSError) as error:
            raise VideoError(
                f"{self.info.path}: cannot seek to {target:.2f} s ({_short(error)}); {_REENCODE_HINT}."
            ) from None
        self.frames = self.container.decode(self.stream)
        self.current = self.upcoming = None

    def _next_frame(self, target: float) -> tuple[float, Any] | None:
        try:
            frame = next(self.frames, None)
        except (av.FFmpegError, OSError) as error:
            raise VideoError(
                f"{self.info.path}: corrupt video data near {target:.2f} s ({_short(error)}); {_REENCODE_HINT}."
            ) from None
        if frame is None:
            return None
        if frame.is_corrupt:
            raise VideoError(f"{self.info.path}: a damaged frame near {target:.2f} s; {_REENCODE_HINT}.")
        time = float(frame.time) - self.info.start_time if frame.time is not None else 0.0
        return time, frame

    def _last_frame_for(self, target: float) -> tuple[Any, float]:
        """At the end of the stream the last frame stays on screen, but only for its own duration."""
        if self.current is not None:
            time, frame = self.current
            average_seconds = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
            own_seconds = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
            if target <= time + max(1.5 * average_seconds, own_seconds) + TIME_EPSILON:
                return frame, time
        reached = "nothing" if self.current is None else f"{self.current[0]:.2f} s"
        raise VideoError(
            f"{self.info.path}: no frame could be decoded at {target:.2f} s (decoding stopped at {reached}); "
            f"the file looks corrupt; {_REENCODE_HINT}."
        )


def _upright_rgb(frame: Any, rotation: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame, rotated counterclockwise by `rotation` degrees as a player does."""
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return np.ascontiguousarray(rgb)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _short(error: BaseException) -> str:
    """An exception as one short line (decord and FFmpeg messages can span lines and include paths)."""
    # FFmpeg errors repeat the file name after their message; strerror is the message alone.
    message = error.strerror if isinstance(error, av.FFmpegError) and error.strerror else str(error)
    text = " ".join(message.split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
