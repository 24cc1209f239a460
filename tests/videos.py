"""Test videos written on the fly: good ones of several kinds and broken ones.

Every good video made here carries each frame's index in its pixels (`read_frame_index`), so a test can
tell exactly which source frame a sampler picked. Files are tiny and encode in milliseconds.

    from tests.videos import write_indexed_video, good_videos, broken_videos
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import av
import numpy as np

from framefusion.video.synthetic import write_synthetic_video, write_video_frames

# Frame i shows red = (i % 16) * 16 and green = (i // 16) * 16 in its left half: steps of 16 survive lossy
# coding, and 256 frames can be told apart.
INDEX_STEP = 16
# Presentation times (seconds) of the variable-frame-rate video: bursts and long holds.
VFR_TIMESTAMPS = (0.0, 0.1, 0.15, 0.2, 0.5, 1.0, 1.05, 1.1, 2.0, 2.5, 2.55, 2.6, 2.65, 3.0)
# Where the broken files are cut, as fractions of the good file's size.
TRUNCATION_POINTS = (0.1, 0.5, 0.9)
# A file name with spaces, accents, CJK and an emoji.
UNUSUAL_NAME = "holiday clip \u2013 \u00e9t\u00e9 \u65e5\u672c \U0001f3ac.mp4"
TEN_BIT_PIXEL_FORMAT = "yuv420p10le"


def indexed_frames(num_frames: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frames whose left half encodes the frame index and whose right half is a moving gradient.

    Returns uint8 (num_frames, height, width, 3).
    """
    if num_frames > 256:
        raise ValueError("indexed frames can number at most 256")
    columns = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    half = max(1, width // 2)
    for index in range(num_frames):
        frames[index, :, :half, 0] = (index % 16) * INDEX_STEP
        frames[index, :, :half, 1] = (index // 16) * INDEX_STEP
        frames[index, :, :half, 2] = 128
        texture = (columns * 5 + rows * 3 + index * 9) % 256
        frames[index, :, half:, 0] = texture[:, half:]
        frames[index, :, half:, 1] = 255 - texture[:, half:]
        frames[index, :, half:, 2] = (rows * 4) % 256
    return frames


def read_frame_index(frame: np.ndarray) -> int:
    """The index `indexed_frames` wrote into an upright, unrotated frame. frame: uint8 (H, W, 3)."""
    half = max(1, frame.shape[1] // 2)
    patch = frame[:, :half].reshape(-1, 3).astype(np.float32)
    red, green = np.median(patch[:, 0]), np.median(patch[:, 1])
    return int(round(red / INDEX_STEP)) + 16 * int(round(green / INDEX_STEP))


def write_indexed_video(
    folder: str | os.PathLike,
    name: str = "clip.mp4",
    *,
    seconds: float = 2.0,
    fps: float = 8,
    width: int = 64,
    height: int = 48,
    timestamps: Sequence[float] | None = None,
    rotation: int | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
    keyframe_interval: int | None = None,
) -> Path:
    """A video of round(seconds * fps) indexed frames (or one per timestamp when timestamps are given).

    keyframe_interval: frames between keyframes (libx264 only); default the encoder's (250).
    """
    count = len(timestamps) if timestamps is not None else max(1, round(seconds * fps))
    return write_video_frames(
        Path(folder) / name,
        indexed_frames(count, width, height),
        fps=fps,
        codec=codec,
        timestamps=timestamps,
        rotation=rotation,
        container_format=container_format,
        container_options=container_options,
        codec_options={"g": str(keyframe_interval)} if keyframe_interval else None,
    )


def moving_square_frames(num_frames: int = 8, side: int = 112, *, still_frames: int = 0) -> np.ndarray:
    """uint8 (T, side, side, 3): a bright 30-px square sliding 8 px a frame over a still gradient, so that most of each
    frame repeats, like a decoded video. The first `still_frames` frames show the gradient alone: one still picture
    for that long, then the square moves."""
    row = np.linspace(0, 200, side, dtype=np.float32)
    frames = np.broadcast_to(row[None, None, :, None], (num_frames, side, side, 3)).copy()
    for index in range(still_frames, num_frames):
        left = 4 + (index - still_frames) * 8
        frames[index, 30:60, left : left + 30] = 255
    return frames.astype(np.uint8)


def write_truncated_video(folder: str | os.PathLike, name: str = "truncated.mp4") -> Path:
    """The first half of a 3 s indexed H.264 file, as an interrupted copy or download leaves it."""
    with tempfile.TemporaryDirectory() as scratch:
        whole = write_indexed_video(scratch, "whole.mp4", seconds=3.0)
        return _truncated_copy(whole, Path(folder) / name, 0.5)


def copied_videos(folder: str | os.PathLike, sources: Mapping[str, str | os.PathLike]) -> Path:
    """A new folder holding a copy of each source video under its name in `sources` ({name: source}); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for name, source in sources.items():
        shutil.copyfile(source, folder / name)
    return folder


ROTATED = Path(__file__).parent / "data" / "rotated"


def rotated_copy(folder: str | os.PathLike, name: str) -> Path:
    """A copy of a committed rotated clip (1 s of indexed 64x48 frames at 8 fps, a display-matrix rotation).

    Made once by write_indexed_video(..., rotation=...) with PyAV 18: PyAV before 16 (which lmms-eval pins) cannot write
    a display matrix, and reading rotated files must be tested with every supported PyAV.
    """
    target = Path(folder) / name
    shutil.copyfile(ROTATED / name, target)
    return target


def good_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """Valid videos that every reader must handle, by name. All but "synthetic" are indexed."""
    folder = Path(folder)
    return {
        "short": write_indexed_video(folder, "short.mp4", seconds=1.0, fps=8),
        "long": write_indexed_video(
            folder, "long.mp4", seconds=20.0, fps=10, width=96, height=64, keyframe_interval=10
        ),
        "wide": write_indexed_video(folder, "wide.mp4", seconds=2.0, fps=12, width=160, height=90),
        "odd_size": write_indexed_video(folder, "odd_size.mp4", seconds=2.0, fps=8, width=33, height=21),
        "vfr": write_indexed_video(folder, "vfr.mp4", timestamps=VFR_TIMESTAMPS, fps=20),
        "rotated_90": rotated_copy(folder, "rotated_90.mp4"),
        "rotated_180": rotated_copy(folder, "rotated_180.mp4"),
        "rotated_270": rotated_copy(folder, "rotated_270.mp4"),
        "single_frame": write_indexed_video(folder, "single_frame.mp4", seconds=0.125, fps=8),
        "tiny_1x1": write_indexed_video(folder, "tiny_1x1.mp4", seconds=1.0, fps=4, width=1, height=1),
        "tiny_2x2": write_indexed_video(folder, "tiny_2x2.mp4", seconds=1.0, fps=4, width=2, height=2),
        "mkv": write_indexed_video(folder, "clip.mkv", seconds=2.0, fps=8),
        "webm_vp9": write_indexed_video(folder, "clip.webm", seconds=2.0, fps=8, codec="libvpx-vp9"),
        "mpeg_ts": write_indexed_video(folder, "clip.ts", seconds=2.0, fps=8),
        # Players read the content, not the extension: a Matroska file named .mp4 is a valid video.
        "mkv_named_mp4": write_indexed_video(folder, "matroska_inside.mp4", seconds=2.0, container_format="matroska"),
        "synthetic": write_synthetic_video(folder / "synthetic.mp4", seconds=2.0, fps=8, width=112, height=112),
    }


def broken_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """Files that must be refused with VideoError, by name."""
    folder = Path(folder)
    source = folder / "_whole"
    source.mkdir(parents=True, exist_ok=True)
    moov_at_end = write_indexed_video(source, "moov_at_end.mp4", seconds=3.0)
    faststart = write_indexed_video(source, "faststart.mp4", seconds=3.0, container_options={"movflags": "faststart"})
    matroska = write_indexed_video(source, "clip.mkv", seconds=3.0)
    webm = write_indexed_video(source, "clip.webm", seconds=3.0, codec="libvpx-vp9")

    broken = {"zero_bytes": _write_bytes(folder / "zero_bytes.mp4", b"")}
    for fraction in TRUNCATION_POINTS:
        percent = round(fraction * 100)
        broken[f"truncated_mp4_{percent}"] = _truncated_copy(moov_at_end, folder / f"truncated_{percent}.mp4", fraction)
        broken[f"truncated_faststart_{percent}"] = _truncated_copy(
            faststart, folder / f"truncated_faststart_{percent}.mp4", fraction
        )
        broken[f"truncated_mkv_{percent}"] = _truncated_copy(matroska, folder / f"truncated_{percent}.mkv", fraction)
    broken["garbage_in_webm"] = _overwritten_copy(webm, folder / "garbage_in.webm", at=0.5, length=2000)
    broken["garbage_in_mp4"] = _overwritten_copy(faststart, folder / "garbage_in.mp4", at=0.5, length=2000)
    broken["text_named_mp4"] = _write_bytes(folder / "notes.mp4", b"These are my holiday notes, not a video.\n" * 20)
    broken["random_bytes_mp4"] = _write_bytes(
        folder / "random.mp4", np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    )
    broken["audio_only_mp4"] = write_audio_only(folder / "audio_only.mp4")
    broken["audio_with_cover_art_mp3"] = write_audio_only(folder / "song.mp3", cover_art=True)
    broken["png_named_mp4"] = _write_bytes(folder / "picture.mp4", _png_bytes())
    return broken


def hostile_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """Valid but unusual files a user may hand over, by name: each must give an answer (or one clear error).

    Some overlap good_videos on purpose: the hardening tests drive each one through `framefusion ask`.
    """
    folder = Path(folder)
    hostile = {
        "single_frame": write_indexed_video(folder, "single_frame.mp4", seconds=0.125, fps=8),
        "tiny_1x1": write_indexed_video(folder, "tiny_1x1.mp4", seconds=1.0, fps=4, width=1, height=1),
        "three_pixels_tall": write_indexed_video(folder, "strip_64x3.mp4", seconds=1.0, fps=4, width=64, height=3),
        "below_28_px": write_indexed_video(folder, "small_20x14.mp4", seconds=1.0, fps=4, width=20, height=14),
        "ten_bit": write_ten_bit_video(folder / "ten_bit.mp4"),
        "long_2h_16px": write_long_tiny_video(folder / "two_hours_16px.mp4"),
        "vfr": write_indexed_video(folder, "vfr.mp4", timestamps=VFR_TIMESTAMPS, fps=20),
        "rotated_90": rotated_copy(folder, "rotated_90.mp4"),
        "rotated_270": rotated_copy(folder, "rotated_270.mp4"),
        "spaces_and_non_ascii_name": write_indexed_video(folder, UNUSUAL_NAME, seconds=1.0),
        # FFmpeg reads "concat:x" as its concat protocol unless the path is made absolute first.
        "protocol_like_name": write_indexed_video(folder, "concat:clip.mp4", seconds=1.0),
        "leading_dash_name": write_indexed_video(folder, "-rf.mp4", seconds=1.0),
    }
    hostile["symlink_to_video"] = _symlink(folder / "link_to_clip.mp4", hostile["vfr"])
    return hostile


def unusable_inputs(folder: str | os.PathLike) -> dict[str, Path]:
    """Paths given as a video that must be refused with a one-line VideoError, at once, by name."""
    folder = Path(folder)
    loop = make_symlink_loop(folder / "loop")
    return {
        "fifo": make_fifo(folder, "pipe.mp4"),
        "dev_zero": Path("/dev/zero"),
        "dev_null": Path("/dev/null"),
        "symlink_to_dev_zero": _symlink(folder / "zeros.mp4", Path("/dev/zero")),
        "symlink_loop": loop / "a.mp4",
        "dangling_symlink": _symlink(folder / "gone.mp4", folder / "never_written.mp4"),
        "too_wide_600x2": write_indexed_video(folder, "wide_600x2.mp4", seconds=0.5, fps=4, width=600, height=2),
    }


def write_long_tiny_video(path: str | os.PathLike, *, hours: float = 2.0, side: int = 16, fps: int = 1,
                          keyframe_interval: int = 60) -> Path:
    """A long video at tiny resolution (default 2 h at 16x16, 1 fps: 7200 frames), written in about a second.

    Frame i is a flat grey of level i % 256: enough to tell which frame a sampler picked near a time.
    """
    path = Path(path)
    count = round(hours * 3600 * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "g": str(keyframe_interval)})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for index in range(count):
            pixels = np.full((side, side, 3), index % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_ten_bit_video(path: str | os.PathLike, *, frames: int = 8, fps: int = 8) -> Path:
    """Indexed 64x48 frames stored as 10-bit 4:2:0 (yuv420p10le, H.264 High 10)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = TEN_BIT_PIXEL_FORMAT
        for index, rgb in enumerate(indexed_frames(frames, 64, 48)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=TEN_BIT_PIXEL_FORMAT)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_symlink_loop(folder: str | os.PathLike) -> Path:
    """A folder holding a.mp4 -> b.mp4 -> a.mp4 and a subfolder linking back to the folder itself."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _symlink(folder / "a.mp4", folder / "b.mp4")
    _symlink(folder / "b.mp4", folder / "a.mp4")
    _symlink(folder / "again", folder)
    return folder


def _symlink(link: Path, target: Path) -> Path:
    # An absolute target: a relative one would be read relative to the link's folder.
    os.symlink(os.path.abspath(target), link)
    return link


def write_audio_only(path: str | os.PathLike, *, seconds: float = 1.0, cover_art: bool = False) -> Path:
    """A file with one audio stream (a quiet tone) and, with cover_art, an attached picture stream."""
    path = Path(path)
    sample_rate, samples_per_frame = 16_000, 1152
    codec = "libmp3lame" if path.suffix == ".mp3" else "aac"
    with av.open(str(path), mode="w") as container:
        audio = container.add_stream(codec, rate=sample_rate)
        audio.layout = "mono"
        if cover_art:
            picture = container.add_stream("png")
            picture.width = picture.height = 16
            picture.pix_fmt = "rgb24"
            picture.disposition = av.stream.Disposition.attached_pic.value  # PyAV < 16 takes only the int
            packet = av.Packet(_png_bytes())
            packet.stream, packet.pts, packet.dts = picture, 0, 0
            container.mux(packet)
        time = np.arange(samples_per_frame, dtype=np.float32) / sample_rate
        for index in range(max(1, round(seconds * sample_rate / samples_per_frame))):
            tone = 0.1 * np.sin(2 * np.pi * 440 * (time + index * samples_per_frame / sample_rate))
            frame = av.AudioFrame.from_ndarray(tone[None, :].astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, index * samples_per_frame
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def make_fifo(folder: str | os.PathLike, name: str = "pipe.mp4") -> Path:
    """A named pipe with a video's name: opening it for reading would block until a writer came."""
    path = Path(folder) / name
    os.mkfifo(path)
    return path


def _truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    return _write_bytes(target, data[: int(len(data) * fraction)])


def _overwritten_copy(source: Path, target: Path, *, at: float, length: int) -> Path:
    data = bytearray(source.read_bytes())
    offset = int(len(data) * at)
    noise = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    data[offset : offset + length] = noise[: max(0, len(data) - offset)]
    return _write_bytes(target, bytes(data))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png_bytes() -> bytes:
    """A 16x16 red PNG, encoded with PyAV so the helpers need no imaging library."""
    frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), (220, 30, 30), dtype=np.uint8), format="rgb24")
    codec = av.CodecContext.create("png", "w")
    codec.width = codec.height = 16
    codec.pix_fmt = "rgb24"
    return b"".join(bytes(packet) for packet in codec.encode(frame))


__all__ = [
    "INDEX_STEP",
    "TRUNCATION_POINTS",
    "VFR_TIMESTAMPS",
    "TEN_BIT_PIXEL_FORMAT",
    "UNUSUAL_NAME",
    "broken_videos",
    "good_videos",
    "hostile_videos",
    "indexed_frames",
    "make_fifo",
    "make_symlink_loop",
    "read_frame_index",
    "unusable_inputs",
    "write_audio_only",
    "write_indexed_video",
    "write_long_tiny_video",
    "write_ten_bit_video",
]
