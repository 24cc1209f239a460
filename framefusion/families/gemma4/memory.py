"""Memory figures of Gemma 4 from config.json: its decoder (sliding and global attention layers of different head
sizes, KV sharing, per-layer inputs, an optional MoE block) and its vision tower (learned 2-D position table, pooled
patches, a linear projection into the language model).

Counted exactly as transformers builds the modules (tests recount the shipped shapes on the meta device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from framefusion.families.config_numbers import positive_int

FULL = "full_attention"
# The video processor's defaults (Gemma4VideoProcessor): a budget of 70 soft tokens per frame, 16-pixel patches
# pooled 3 x 3.
DEFAULT_SOFT_TOKENS, DEFAULT_PATCH, DEFAULT_POOLING = 70, 16, 3
# transformers' default global head size (configuration_gemma4.py: `global_head_dim`).
DEFAULT_GLOBAL_HEAD_DIM = 512


def tokens_per_frame(processor: Mapping[str, Any] | None, frame_size: tuple[int, int] | None) -> int:
    """Tokens of one frame: the processor resizes it, keeping its aspect ratio, to the largest multiple of
    patch x pooling pixels per side within the soft-token budget; without a frame size, the budget itself."""
    settings = processor or {}
    budget = _setting(settings, "max_soft_tokens", DEFAULT_SOFT_TOKENS)
    if frame_size is None:
        return budget
    patch = _setting(settings, "patch_size", DEFAULT_PATCH)
    pooling = _setting(settings, "pooling_kernel_size", DEFAULT_POOLING)
    width, height = frame_size
    if not (width > 0 and height > 0):
        return budget
    side = pooling * patch
    factor = math.sqrt(budget * pooling * pooling * patch * patch / (width * height))
    rows, columns = int(factor * height // side), int(factor * width // side)
    if rows == 0 or columns == 0:  # a very thin frame: one block across, as many along as fit
        longest = budget  # (max_patches // pooling^2) blocks
        rows, columns = (1, min(int(width / height), longest)) if rows == 0 else (min(int(height / width), longest), 1)
    return max(1, min(rows * columns, budget))


def _setting(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def layer_types(text: Mapping[str, Any]) -> list[str]:
    """Each decoder layer's kind: config's layer_types, else transformers' default (every sixth is global)."""
    layers = positive_int(text, "num_hidden_layers")
    given = text.get("layer_types")
    if isinstance(given, list) and len(given) == layers:
        kinds = [str(kind) for kind in given]
    else:
        kinds = ["sliding_attention" if (index + 1) % 6 else FULL for index in range(layers)]
    kinds[-1] = FULL  # transformers forces the last layer global
    return kinds


def _shared_from(text: Mapping[str, Any], layers: int) -> int:
    shared = text.get("num_kv_shared_layers", 0)
    shared = shared if isinstance(shared, int) and not isinstance(shared, bool) and shared > 0 else 0
    return layers - min(shared, layers)


def _attention_shape(text: Mapping[str, Any], index: int, kind: str) -> tuple[int, int]:
    """(head size, key/value heads) of one layer: global layers use `global_head_dim` (and, where keys are values,
    `num_global_key_value_heads`) unless config.json spells the layer's own numbers out in per_layer_config."""
    heads = positive_int(text, "num_attention_heads")
    head_dim = positive_int(text, "head_dim", default=positive_int(text, "hidden_size") // heads)
    kv_heads = positive_int(text, "num_key_value_heads", default=heads)
    if kind == FULL:
        head_dim = positive_int(text, "global_head_dim", default=DEFAULT_GLOBAL_HEAD_DIM)
        if text.get("attention_k_eq_v", False) and text.get("num_global_key_value_heads") is not None:
            kv_heads = positive_int(text, "num_global_key_value_heads")
    overrides = text.get("per_layer_config")
    if isinstance(overrides, Mapping):
        own = overrides.get(str(index), overrides.get(index))
        if isinstance(own, Mapping):
            head_dim = positive_int(own, "head_dim", default=head_dim)
            kv_heads = positive_int(own, "num_key_value_heads", default=kv_heads)
    return head_dim, kv_heads


def decoder_parameters(text: Mapping[str, Any]) -> int:
    """The decoder layers, and the per-layer input tables and projection that feed them."""
    hidden = positive_int(text, "hidden_size")
    heads = positive_int(text, "num_attention_heads")
    intermediate = positive_int(text, "intermediate_size")
    bias = bool(text.get("attention_bias", False))
    per_layer = int(text.get("hidden_size_per_layer_input", 0) or 0)
    kinds = layer_types(text)
    first_shared = _shared_from(text, len(kinds))
    total = 0
    for index, kind in enumerate(kinds):
        head_dim, kv_heads = _attention_shape(text, index, kind)
        reuses = index >= first_shared
        total += 2 * hidden * heads * head_dim + head_dim + (heads * head_dim + hidden) * bias  # q, o, q_norm
        if not reuses:
            values = 0 if text.get("attention_k_eq_v", False) and kind == FULL else 1
            total += (1 + values) * kv_heads * head_dim * (hidden + bias) + head_dim  # k (and v), k_norm
        wide = 2 if reuses and text.get("use_double_wide_mlp", False) else 1
        total += 3 * hidden * intermediate * wide + 4 * hidden  # MLP and the four norms
        if per_layer:
            total += 2 * hidden * per_layer + hidden  # gate, projection, post norm
        if text.get("enable_moe_block", False):
            experts = positive_int(text, "num_experts")
            expert_size = positive_int(text, "moe_intermediate_size")
            total += hidden * experts + hidden + experts + 3 * experts * hidden * expert_size + 3 * hidden
    if per_layer:
        vocabulary = positive_int(text, "vocab_size_per_layer_input", default=positive_int(text, "vocab_size"))
        total += (vocabulary + hidden) * len(kinds) * per_layer + per_layer  # tables, model projection, its norm
    return total


def cache_layers(text: Mapping[str, Any]) -> int:
    """The global layers that keep keys and values of their own (a sliding layer keeps at most its window; a
    KV-reusing layer keeps none), counted in layers of the config's head size and key/value heads."""
    kinds = layer_types(text)
    first_shared = _shared_from(text, len(kinds))
    heads = positive_int(text, "num_attention_heads")
    unit = positive_int(text, "head_dim", default=positive_int(text, "hidden_size") // heads)
    unit *= positive_int(text, "num_key_value_heads", default=heads)
    size = sum(math.prod(_attention_shape(text, index, kind)) for index, kind in enumerate(kinds[:first_shared])
               if kind == FULL)
    return max(1, -(-size // unit))


def vision_parameters(vision: Mapping[str, Any], text_hidden: int) -> int:
    """The ViT (bias-free projections, q/k norms, four norms per layer), its patch projection and 2-D position
    table, and the projection into the language model."""
    width = positive_int(vision, "hidden_size")
    heads = positive_int(vision, "num_attention_heads", default=12)
    kv_heads = positive_int(vision, "num_key_value_heads", default=heads)
    head_dim = positive_int(vision, "head_dim", default=width // heads)
    patch = positive_int(vision, "patch_size", default=16)
    attention = 2 * width * heads * head_dim + 2 * width * kv_heads * head_dim + 2 * head_dim
    layer = attention + 3 * width * positive_int(vision, "intermediate_size") + 4 * width
    embeddings = 3 * patch * patch * width + 2 * positive_int(vision, "position_embedding_size", default=10240) * width
    return positive_int(vision, "num_hidden_layers") * layer + embeddings + width * text_hidden
