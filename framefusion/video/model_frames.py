"""Frames a model's processor can take: refuse the shapes processors fail on, enlarge the ones they misread."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from framefusion.errors import VideoError
from framefusion.video.clip import VideoClip

# Smallest frame side handed to a model's processor (Qwen-VL's block size); smaller frames are enlarged.
MIN_MODEL_SIDE = 28
# Qwen-VL processors refuse frames whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200


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
