"""Memory figures of the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), from config.json and processor settings.

Their processors resize each frame to a whole number of 28-pixel blocks within a pixel budget, and pair frames in
time; their vision towers end in a merger that concatenates 2x2 patches before projecting into the language model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from framefusion.families.config_numbers import is_positive_number, mlp_projector_parameters, positive_int, vision_tower_parameters

# Qwen2-VL and 2.5-VL merge 2x2 patches of 14 px (28 px blocks); Qwen3-VL and Qwen3.5 patches are 16 px (32 px
# blocks). All pair frames in time.
BLOCK_PIXELS = 28 * 28
# Per-frame pixel cap of Qwen-VL's published video processors (768 blocks) when a config does not say.
DEFAULT_MAX_BLOCKS = 768
DEFAULT_MAX_PIXELS = DEFAULT_MAX_BLOCKS * BLOCK_PIXELS


def tokens_per_frame(config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                     frame_size: tuple[int, int] | None) -> int:
    """Tokens of one frame: its pixels (the video's, else the processor's cap) in 28-px blocks, frames paired."""
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), Mapping) else {}
    block_pixels = (positive_int(vision, "patch_size", default=14)
                    * positive_int(vision, "spatial_merge_size", default=2)) ** 2
    max_pixels, min_pixels = pixel_limits(processor or {}, default_max=DEFAULT_MAX_BLOCKS * block_pixels)
    pixels = max_pixels if frame_size is None else frame_size[0] * frame_size[1]
    pixels = min(max(pixels, min_pixels), max_pixels)
    blocks = math.ceil(pixels / block_pixels)
    temporal = positive_int(vision, "temporal_patch_size", default=2)
    return max(1, math.ceil(blocks / temporal))


def pixel_limits(processor: Mapping[str, Any], default_max: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(max, min) pixels per frame from the processor settings (max_pixels/min_pixels or size's edges)."""
    size = processor.get("size") if isinstance(processor.get("size"), Mapping) else {}
    max_pixels = processor.get("max_pixels", size.get("longest_edge", default_max))
    min_pixels = processor.get("min_pixels", size.get("shortest_edge", 0))
    if not is_positive_number(max_pixels):
        max_pixels = default_max
    if not is_positive_number(min_pixels) or min_pixels > max_pixels:
        min_pixels = 0
    return int(max_pixels), int(min_pixels)


def vision_parameters(vision: Mapping[str, Any], text_hidden: int) -> int:
    """The vision tower and its patch merger (2x2 patches concatenated, then a two-layer MLP)."""
    if "embed_dim" in vision:  # Qwen2-VL: hidden_size is the merger's output width
        width, output = positive_int(vision, "embed_dim"), positive_int(vision, "hidden_size", default=text_hidden)
    else:
        width = positive_int(vision, "hidden_size")
        output = positive_int(vision, "out_hidden_size", default=text_hidden)
    tower = vision_tower_parameters(vision, width)
    merge = positive_int(vision, "spatial_merge_size", default=1)
    if merge > 1:
        merged = width * merge * merge
        return tower + merged * merged + merged + merged * output + output
    return tower + mlp_projector_parameters(width, output)
