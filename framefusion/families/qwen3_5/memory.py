"""Memory figures of Qwen3.5 from config.json: its hybrid decoder (Gated DeltaNet and gated softmax attention
layers) and its vision tower (a ViT with learned, interpolated position embeddings and a 2x2 patch merger).

Counted exactly as transformers builds the modules (tests recount the shipped shapes on the meta device).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from framefusion.families.qwen_vl import memory as qwen_vl_memory
from framefusion.families.config_numbers import positive_int

FULL_ATTENTION = "full_attention"
# Qwen3-VL's video processor (Qwen3.5's): `size["longest_edge"]` is a pixel budget for the whole video, and with the
# reference per-frame cap a frame costs at most `max_video_tokens` blocks of (patch * merge)^2 pixels.
DEFAULT_MAX_VIDEO_TOKENS = 768


def tokens_per_frame(config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                     frame_size: tuple[int, int] | None) -> int:
    """Tokens of one frame, at most: Qwen-VL's count (pixels in blocks, frames paired), a frame never costing more
    than the per-frame cap of `max_video_tokens` blocks (the published `longest_edge` budgets the whole video)."""
    settings = processor or {}
    cap = settings.get("max_video_tokens", DEFAULT_MAX_VIDEO_TOKENS)
    if not (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0):
        cap = DEFAULT_MAX_VIDEO_TOKENS
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), Mapping) else {}
    temporal = positive_int(vision, "temporal_patch_size", default=2)
    return min(qwen_vl_memory.tokens_per_frame(config, processor, frame_size), max(1, -(-cap // temporal)))


def layer_types(text: Mapping[str, Any]) -> list[str]:
    """Each decoder layer's kind: config's layer_types, else every `full_attention_interval`-th layer (default 4)
    is full attention, as transformers fills them in."""
    layers = positive_int(text, "num_hidden_layers")
    given = text.get("layer_types")
    if isinstance(given, list) and len(given) == layers:
        return [str(kind) for kind in given]
    interval = positive_int(text, "full_attention_interval", default=4)
    return [FULL_ATTENTION if (index + 1) % interval == 0 else "linear_attention" for index in range(layers)]


def full_attention_layers(text: Mapping[str, Any]) -> int:
    """Layers with a KV cache that grows with the prompt (the linear-attention layers keep a fixed-size state)."""
    return sum(kind == FULL_ATTENTION for kind in layer_types(text))


def decoder_parameters(text: Mapping[str, Any]) -> int:
    """The decoder layers: gated softmax attention or Gated DeltaNet, a gated MLP and two norms each."""
    hidden = positive_int(text, "hidden_size")
    heads = positive_int(text, "num_attention_heads")
    kv_heads = positive_int(text, "num_key_value_heads", default=heads)
    head_dim = positive_int(text, "head_dim", default=hidden // heads)
    bias = bool(text.get("attention_bias", False))
    # q_proj also gives the output gate: 2 * heads * head_dim outputs.
    attention = hidden * 2 * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    attention += (2 * heads * head_dim + 2 * kv_heads * head_dim + hidden) * bias + 2 * head_dim  # biases, q/k norms
    key_heads = positive_int(text, "linear_num_key_heads", default=16)
    value_heads = positive_int(text, "linear_num_value_heads", default=32)
    key_dim = key_heads * positive_int(text, "linear_key_head_dim", default=128)
    value_head_dim = positive_int(text, "linear_value_head_dim", default=128)
    value_dim = value_heads * value_head_dim
    conv_dim = 2 * key_dim + value_dim
    linear = (hidden * conv_dim + hidden * value_dim + 2 * hidden * value_heads  # in_proj_qkv, _z, _b, _a
              + conv_dim * positive_int(text, "linear_conv_kernel_dim", default=4)  # depthwise convolution
              + 2 * value_heads + value_head_dim + value_dim * hidden)  # dt_bias, A_log, gated norm, out_proj
    common = 3 * hidden * positive_int(text, "intermediate_size") + 2 * hidden
    return sum(common + (attention if kind == FULL_ATTENTION else linear) for kind in layer_types(text))


def vision_parameters(vision: Mapping[str, Any], text_hidden: int) -> int:
    """The ViT (LayerNorms, qkv and MLP with biases), its patch and position embeddings, and the patch merger."""
    width = positive_int(vision, "hidden_size")
    mlp = positive_int(vision, "intermediate_size")
    output = positive_int(vision, "out_hidden_size", default=text_hidden)
    patch = positive_int(vision, "patch_size", default=16)
    temporal = positive_int(vision, "temporal_patch_size", default=2)
    merged = width * positive_int(vision, "spatial_merge_size", default=2) ** 2
    block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) + (2 * width * mlp + mlp + width)
    embeddings = positive_int(vision, "in_channels", default=3) * temporal * patch * patch * width + width
    embeddings += positive_int(vision, "num_position_embeddings", default=2304) * width
    merger = 2 * width + merged * merged + merged + merged * output + output
    return positive_int(vision, "depth") * block + embeddings + merger
