"""Deterministic synthetic videos for tests, benchmarks and the bundled sample.

The scene is built so that both kinds of FrameFusion step have work to do:

- a large static background (ground, road, house): its tokens repeat frame to frame, so they merge;
- a red ball rolling along the road: tokens that move;
- a sky whose colour drifts and whose "sparkle" cells are redrawn every frame: tokens that never repeat,
  so they survive merging and are left for importance pruning.

`render_synthetic_frames` returns the frames (pure numpy, no file); `write_synthetic_video` encodes them;
`write_video_frames` is the general encoder the test helpers use (any codec, variable timestamps, rotation).

`render_camera_frames` is footage of another kind: a fixed camera filming a room, with sensor noise in every frame,
still for a while, then a small object crossing (or a pan, or a cut); `write_camera_video` stores it the way a camera
does (lossy H.264), so that no two decoded frames are identical.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

# Fraction of the frame height taken by the sky band (the region that changes every frame).
SKY_FRACTION = 0.3
# Millisecond clock for variable-frame-rate files: fine enough for any timestamps a test needs.
MILLISECOND = Fraction(1, 1000)

_SKY_START_RGB = np.array([110, 170, 235], dtype=np.float32)  # day blue
_SKY_END_RGB = np.array([240, 140, 70], dtype=np.float32)  # sunset orange
_GRASS_RGB = np.array([70, 150, 60], dtype=np.uint8)
_ROAD_RGB = np.array([120, 120, 120], dtype=np.uint8)
_WALL_RGB = np.array([200, 170, 120], dtype=np.uint8)
_ROOF_RGB = np.array([150, 50, 40], dtype=np.uint8)
_BALL_RGB = np.array([220, 30, 30], dtype=np.uint8)
_STRIPE_RGB = np.array([250, 250, 250], dtype=np.uint8)
# The camera scene (render_camera_frames).
_WALL_COLOUR = np.array([170, 160, 140], dtype=np.float32)
_FLOOR_COLOUR = np.array([110, 85, 60], dtype=np.float32)
_OBJECT_RGB = np.array([30, 60, 200], dtype=np.float32)
# (left, top, right, bottom) as shares of the frame, and a colour: window, door, table, picture.
_FURNITURE = [(0.08, 0.12, 0.32, 0.45, (215, 225, 235)), (0.72, 0.15, 0.9, 0.7, (95, 65, 45)),
              (0.35, 0.55, 0.62, 0.78, (140, 100, 70)), (0.45, 0.18, 0.58, 0.36, (60, 110, 90))]


def render_background(width: int, height: int) -> np.ndarray:
    """The static part of the scene (ground, road and a house) below an empty sky.

    Returns: uint8 (height, width, 3) RGB.
    """
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    horizon = _horizon_row(height)
    frame[horizon:] = _GRASS_RGB
    road_top, road_bottom = _road_rows(height)
    frame[road_top:road_bottom] = _ROAD_RGB

    # A house on the grass between the horizon and the road, towards the right.
    house_left, house_right = int(0.62 * width), int(0.86 * width)
    wall_top, wall_bottom = horizon + max(1, (road_top - horizon) // 3), max(horizon + 2, road_top - 1)
    frame[wall_top:wall_bottom, house_left:house_right] = _WALL_RGB
    rows, cols = np.mgrid[horizon:wall_top, house_left:house_right]
    centre = (house_left + house_right - 1) / 2
    half_width = (house_right - house_left) / 2
    # Triangular roof: narrows linearly from the wall width at wall_top to a point at the horizon.
    roof_height = max(1, wall_top - horizon)
    inside_roof = np.abs(cols - centre) <= half_width * (rows - horizon + 1) / roof_height
    frame[rows[inside_roof], cols[inside_roof]] = _ROOF_RGB
    return frame


def render_synthetic_frames(
    *, seconds: float = 4.0, fps: float = 8, width: int = 224, height: int = 224, seed: int = 0
) -> np.ndarray:
    """Frames of the synthetic scene: static background, a rolling red ball, a changing sky.

    Returns: uint8 (T, height, width, 3) RGB with T = max(1, round(seconds * fps)). The same arguments
    always give the same frames.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1 pixel, got {width}x{height}")
    num_frames = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    background = render_background(width, height)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        progress = index / max(1, num_frames - 1)
        frame = background.copy()
        _paint_sky(frame, progress, rng)
        _paint_ball(frame, progress)
        frames[index] = frame
    return frames


def render_still_then_moving_frames(
    *, seconds: float = 4.0, fps: float = 8, width: int = 224, height: int = 224, seed: int = 0
) -> np.ndarray:
    """The synthetic scene held still on its first frame for the first half, then moving (ball and sky) for the
    second: the case frame dedup is for (a static shot, a paused screen). uint8 (T, height, width, 3) RGB."""
    frames = render_synthetic_frames(seconds=seconds, fps=fps, width=width, height=height, seed=seed)
    still = len(frames) // 2
    frames[:still] = frames[0]
    return frames


def render_camera_frames(
    *, seconds: float = 4.0, fps: float = 4, width: int = 160, height: int = 120, noise: float = 2.0,
    still_fraction: float = 0.5, object_area: float = 0.005, pan: float = 0.0, cut_fraction: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Frames of a fixed camera filming a room: textured walls and floor, sharp-edged furniture, sensor noise.

    noise: the standard deviation of the Gaussian sensor noise added to every pixel of every frame (0-255 scale).
    still_fraction: the share of the frames, from the start, in which nothing moves. object_area: the share of the
    frame a small square object covers; after the still part it crosses the room from left to right (0: no object).
    pan: the share of the width the view moves right by per frame, from the first frame. cut_fraction: from this
    share of the frames on, the camera shows another room (a cut). Returns uint8 (T, height, width, 3) RGB with
    T = max(1, round(seconds * fps)); the same arguments always give the same frames."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1 pixel, got {width}x{height}")
    num_frames = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    shift = [round(pan * width * index) for index in range(num_frames)]
    room = render_room(width + shift[-1], height, seed=seed)
    other_room = render_room(width, height, seed=seed + 1) if cut_fraction is not None else None
    side = max(1, round((object_area * width * height) ** 0.5)) if object_area > 0 else 0
    still = round(still_fraction * num_frames)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        if other_room is not None and index >= round(cut_fraction * num_frames):
            picture = other_room.copy()
        else:
            picture = room[:, shift[index] : shift[index] + width].copy()
        if side and index >= still:
            progress = (index - still + 0.5) / max(1, num_frames - still)
            left = round(progress * (width - side))
            top = round(0.55 * (height - side))
            picture[top : top + side, left : left + side] = _OBJECT_RGB
        picture += rng.normal(0.0, noise, picture.shape).astype(np.float32) if noise > 0 else 0.0
        frames[index] = np.clip(np.round(picture), 0, 255).astype(np.uint8)
    return frames


def render_room(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A still room: walls and floor with a soft texture, a window, a door, a table and a picture. float32
    (height, width, 3) RGB on 0-255."""
    rng = np.random.default_rng(seed)
    texture = sum(amplitude * (_value_noise(rng, width, height, cell) - 0.5)
                  for cell, amplitude in ((max(2, width // 6), 40.0), (max(2, width // 24), 20.0), (3, 8.0)))
    picture = np.empty((height, width, 3), dtype=np.float32)
    floor = round(0.7 * height)
    picture[:floor] = _WALL_COLOUR
    picture[floor:] = _FLOOR_COLOUR
    picture += texture[..., None]
    for left, top, right, bottom, colour in _FURNITURE:
        picture[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] = (
            np.asarray(colour) + 0.5 * texture[round(top * height) : round(bottom * height),
                                               round(left * width) : round(right * width), None])
    return picture


def write_camera_video(path: str | Path, *, fps: float = 4, crf: int = 23, codec: str = "libx264",
                       pixel_format: str | None = None, **scene: float) -> Path:
    """Encode `render_camera_frames(fps=fps, **scene)` lossily (H.264 at `crf` by default), as a camera would."""
    frames = render_camera_frames(fps=fps, **scene)
    options = {"crf": str(crf)}
    if codec == "libx265":
        options["x265-params"] = "log-level=error"  # x265 otherwise prints its settings on stderr
    return write_video_frames(path, frames, fps=fps, codec=codec, codec_options=options, pixel_format=pixel_format)


def write_synthetic_video(
    path: str | Path,
    *,
    seconds: float = 4.0,
    fps: int = 8,
    width: int = 224,
    height: int = 224,
    seed: int = 0,
    codec: str = "libx264",
) -> Path:
    """Encode the synthetic scene (see `render_synthetic_frames`) to `path`; the container follows the extension."""
    frames = render_synthetic_frames(seconds=seconds, fps=fps, width=width, height=height, seed=seed)
    return write_video_frames(path, frames, fps=fps, codec=codec)


def write_video_frames(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    fps: float = 8,
    codec: str = "libx264",
    timestamps: Sequence[float] | None = None,
    rotation: int | None = None,
    container_format: str | None = None,
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pixel_format: str | None = None,
) -> Path:
    """Encode RGB frames to a video file with PyAV.

    frames: uint8 (T, H, W, 3) RGB. timestamps: presentation time in seconds of each frame (variable frame
    rate); default i / fps. rotation: display-matrix rotation in degrees counterclockwise (what a player
    applies); the stored frames are the given ones. container_format: force a muxer ("webm", "matroska"...),
    default from the extension. pixel_format: what the file stores (e.g. "yuv420p10le" for 10 bits); default 4:2:0,
    or 4:4:4 for odd sizes, since 4:2:0 needs even width and height. Returns the path.
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    if timestamps is not None and len(timestamps) != len(frames):
        raise ValueError(f"got {len(timestamps)} timestamps for {len(frames)} frames")
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=_as_fraction(fps), options=codec_options or {})
        stream.width, stream.height = width, height
        stream.pix_fmt = pixel_format or _pixel_format_for(codec, width, height)
        if rotation:
            stream.set_display_rotation(rotation)
        if timestamps is not None:
            stream.codec_context.time_base = MILLISECOND
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pixel_format:
                frame = frame.reformat(format=pixel_format)
            if timestamps is None:
                frame.pts = index
            else:
                frame.pts = round(timestamps[index] * 1000)
                frame.time_base = MILLISECOND
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _pixel_format_for(codec: str, width: int, height: int) -> str:
    if codec in ("mjpeg",):
        return "yuvj420p" if width % 2 == 0 and height % 2 == 0 else "yuvj444p"
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def _as_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _value_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Smooth noise on 0-1: random values on a grid of `cell` pixels, interpolated bilinearly. float32 (height, width)."""
    grid = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    rows, cols = np.arange(height) / cell, np.arange(width) / cell
    top, left = rows.astype(int), cols.astype(int)
    down, right = (rows - top)[:, None].astype(np.float32), (cols - left)[None, :].astype(np.float32)
    upper = grid[top][:, left] * (1 - right) + grid[top][:, left + 1] * right
    lower = grid[top + 1][:, left] * (1 - right) + grid[top + 1][:, left + 1] * right
    return upper * (1 - down) + lower * down


def _horizon_row(height: int) -> int:
    return max(1, round(SKY_FRACTION * height))


def _road_rows(height: int) -> tuple[int, int]:
    return round(0.62 * height), round(0.86 * height)


def _paint_sky(frame: np.ndarray, progress: float, rng: np.random.Generator) -> None:
    """Sky band with a colour that drifts over the video and random bright cells redrawn each frame."""
    height, width = frame.shape[:2]
    horizon = _horizon_row(height)
    colour = (1 - progress) * _SKY_START_RGB + progress * _SKY_END_RGB
    vertical_shade = np.linspace(0.85, 1.1, horizon, dtype=np.float32)[:, None, None]
    sky = np.clip(colour[None, None, :] * vertical_shade, 0, 255)
    sky = np.broadcast_to(sky, (horizon, width, 3)).copy()
    # Flat cells rather than per-pixel noise: they change every frame yet keep the encoded file small.
    cell = max(2, min(width, height) // 14)
    cell_rows, cell_cols = -(-horizon // cell), -(-width // cell)
    lit = rng.random((cell_rows, cell_cols)) < 0.35
    brightness = rng.uniform(0.6, 1.0, size=(cell_rows, cell_cols, 1)).astype(np.float32)
    sparkle = np.where(lit[..., None], 255 * brightness, 0).astype(np.float32)
    sparkle = sparkle.repeat(cell, axis=0).repeat(cell, axis=1)[:horizon, :width]
    sky = np.where(lit.repeat(cell, axis=0).repeat(cell, axis=1)[:horizon, :width, None], sparkle, sky)
    frame[:horizon] = sky.astype(np.uint8)


def _paint_ball(frame: np.ndarray, progress: float) -> None:
    """A red ball with a white stripe, rolling left to right along the road (the stripe turns as it rolls)."""
    height, width = frame.shape[:2]
    road_top, road_bottom = _road_rows(height)
    radius = max(1.0, 0.1 * min(width, height))
    centre_y = road_top + (road_bottom - road_top) / 2 - 0.3 * radius
    centre_x = radius + progress * (width - 2 * radius)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = rows - centre_y, cols - centre_x
    inside = dx**2 + dy**2 <= radius**2
    frame[inside] = _BALL_RGB
    # Rolling without slipping: the angle turned equals the distance travelled divided by the radius.
    angle = (centre_x - radius) / radius
    distance_to_stripe = np.abs(dx * np.sin(angle) - dy * np.cos(angle))
    frame[inside & (distance_to_stripe <= max(0.5, 0.18 * radius))] = _STRIPE_RGB
