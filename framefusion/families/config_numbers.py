"""Numbers read from a model's config.json dict, and the parameter counts of the parts families share (a ViT, an
MLP projector). Each family's memory figures are built from these; nothing here knows a family.

Nothing raises on a strange config except KeyError (a number missing) and ValueError (not a positive number).
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def text_config_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (multimodal) config.json dict."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def vision_tower_parameters(vision: Mapping[str, Any], width: int) -> int:
    """A ViT `width` wide: its blocks (attention, MLP, norms) and its patch embedding (with learned position
    embeddings when the config gives an image_size)."""
    depth = positive_int(vision, "depth", default=None) if "depth" in vision else positive_int(
        vision, "num_hidden_layers")
    if "intermediate_size" in vision:
        mlp_width = positive_int(vision, "intermediate_size")
    else:
        mlp_width = int(positive_number(vision, "mlp_ratio", default=4) * width)
    gated = vision.get("hidden_act") == "silu"  # a gated (SwiGLU) MLP, as Qwen2.5-VL's vision blocks
    block = 4 * width * width + 4 * width + (3 if gated else 2) * width * mlp_width + 4 * width
    patch = positive_int(vision, "patch_size", default=14)
    channels = positive_int(vision, "in_channels", default=3)
    temporal = positive_int(vision, "temporal_patch_size", default=1)
    patch_embedding = channels * temporal * patch * patch * width
    if "image_size" in vision:  # SigLIP/CLIP: learned position embeddings, one per patch
        patch_embedding += (positive_int(vision, "image_size") // patch) ** 2 * width
    return depth * block + patch_embedding


def mlp_projector_parameters(width: int, output: int) -> int:
    """A two-layer MLP from the vision width to the language model's width (LLaVA's projector)."""
    return width * output + output + output * output + output


def is_positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


_MISSING = object()


def positive_number(mapping: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    value = mapping.get(key, default)
    if value is _MISSING:
        raise KeyError(key)
    if not is_positive_number(value):
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return value


def positive_int(mapping: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    value = mapping.get(key)
    if value is None:
        if default is _MISSING or default is None:
            raise KeyError(key)
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive whole number, got {value!r}")
    return value
