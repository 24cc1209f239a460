"""Tiny checkpoints of the Qwen-VL families: Qwen2-VL and Qwen2.5-VL here; Qwen3-VL (qwen3_vl.py) starts from
the same tokens, template and processors."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from framefusion.families._templates import QWEN_CHAT_TEMPLATE
from framefusion.families._tiny_language_models import QWEN_TEXT_TOKEN_FIELDS, tiny_qwen_text_config
from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, TINY_TEXT_DIMS, FamilyKit

# Qwen's M-RoPE splits each head's rotary half-dimension into temporal, height and width sections;
# tiny heads are 16 wide, so 8 = 2 + 3 + 3 (the real 128-wide heads use 16 + 24 + 24).
TINY_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}


def _tiny_qwen_processor() -> dict:
    """Pixel limits that keep a 112x112 frame at 112x112 (8x8 patches, 16 tokens per 2-frame group)
    and shrink any larger frame to at most that many pixels."""
    size = {"shortest_edge": 56 * 56, "longest_edge": TINY_FRAME_SIDE * TINY_FRAME_SIDE}
    return {
        "image_processor": {"size": size},
        # cap_pixels_per_frame=True is the reference (qwen-vl-utils) behaviour; saying so also silences
        # transformers' warning about the default changing.
        "video_processor": {"size": size, "cap_pixels_per_frame": True},
    }


def qwen_vl_kit(name: str, model_class: str, processor_class: str, tiny_config: Callable[[int], dict]) -> FamilyKit:
    """Qwen2-VL and Qwen2.5-VL share tokens, template and image/video processors."""
    return FamilyKit(
        name=name,
        model_class=model_class,
        special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        named_tokens=MappingProxyType({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        token_id_fields=MappingProxyType(
            {
                "image_token_id": "<|image_pad|>",
                "video_token_id": "<|video_pad|>",
                "vision_start_token_id": "<|vision_start|>",
                "vision_end_token_id": "<|vision_end|>",
                **QWEN_TEXT_TOKEN_FIELDS,
            }
        ),
        chat_template=QWEN_CHAT_TEMPLATE,
        processor_classes=(processor_class, "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(_tiny_qwen_processor()),
    )


def qwen2_vl_kit() -> FamilyKit:
    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "qwen2_vl",
            "text_config": tiny_qwen_text_config(num_hidden_layers, "qwen2_vl_text", TINY_QWEN_ROPE),
            "vision_config": {
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": TINY_TEXT_DIMS["hidden_size"],  # the merger projects into the LLM width
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": TINY_PATCH_SIZE,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        }

    return qwen_vl_kit("qwen2-vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", tiny_config)


def qwen2_5_vl_kit() -> FamilyKit:
    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "qwen2_5_vl",
            "text_config": tiny_qwen_text_config(num_hidden_layers, "qwen2_5_vl_text", TINY_QWEN_ROPE),
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "out_hidden_size": TINY_TEXT_DIMS["hidden_size"],
                "num_heads": 2,
                "patch_size": TINY_PATCH_SIZE,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": TINY_FRAME_SIDE,
                "fullatt_block_indexes": [1],  # like the real model: windowed blocks, then a full one
                "tokens_per_second": 2,
            },
        }

    return qwen_vl_kit("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", tiny_config)
