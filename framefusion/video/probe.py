"""Checking a file before anything decodes it, with PyAV: `probe_video` and the helpers the two decoders share.

Only a file that passed the probe reaches a decoder: decord can abort the process or quietly substitute other frames
on some broken files. Times are seconds in the file's own clock unless said otherwise.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import av

from framefusion.errors import VideoError, one_line
from framefusion.video.clip import VideoInfo

# How far before the declared end the probe starts reading packets to find where the video really ends.
TAIL_SCAN_SECONDS = 2.0
# A file whose packets stop more than this (or two frames) before the end its header declares is truncated.
TRUNCATION_SLACK_SECONDS = 0.2
REENCODE_HINT = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or pick another file"

_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe")


def error_reason(error: BaseException) -> str:
    """Why FFmpeg, decord or the OS failed, as one short line for the middle of a sentence that names the file.

    The str() of FFmpeg's and the OS's errors repeats the errno and the file name: their strerror is the reason alone.
    """
    strerror = getattr(error, "strerror", None) if isinstance(error, (av.FFmpegError, OSError)) else None
    if isinstance(strerror, str) and strerror.strip():
        return " ".join(strerror.split())
    return one_line(error, limit=160)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a readable video and describe it, with PyAV, decoding only the first frame.

    Raises VideoError (one line) for a missing path, a directory, a FIFO/device/socket, an empty file, a file
    that is not a video or has no video stream, and a truncated or corrupt file.
    """
    path_text = str(path)
    _check_regular_file(path_text)
    try:
        container = av.open(ffmpeg_path(path_text), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(
            f"{path_text}: not a readable video ({error_reason(error)}); check the file or {REENCODE_HINT}."
        ) from None
    with container:
        return _probe_open_container(container, path_text)


def ffmpeg_path(path: str) -> str:
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
        raise VideoError(f"{path}: cannot access the file ({error_reason(error)}).") from None
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
    stream = main_video_stream(container)
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
            f"stops at {reference_end:.2f} s; {REENCODE_HINT}."
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


def main_video_stream(container: Any) -> Any | None:
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
        raise VideoError(
            f"{path}: the first frame cannot be decoded ({error_reason(error)}); {REENCODE_HINT}."
        ) from None
    raise VideoError(f"{path}: the video stream holds no decodable frame; {REENCODE_HINT}.")


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
        raise VideoError(f"{path}: the video stream holds no readable packets; {REENCODE_HINT}.")
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
