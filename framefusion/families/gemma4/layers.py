"""How FrameFusion runs a Gemma 4 decoder layer in two halves around its step (the runtime's anatomy for this family).

A Gemma 4 text layer is not the plain pre-norm layer of runtime/layers.py:

    x = x + post_attention_layernorm(attention(input_layernorm(x)))            # attention_half
    x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)) [+ MoE experts])
    x = x + post_per_layer_input_norm(projection(act(gate(x)) * per_layer_input))   # per-layer inputs (E2B, E4B)
    x = x * layer_scalar                                                        # feed_forward_half

The per-layer input is one row per token, looked up from the token ids before the stack: it follows the kept tokens
(`per_token_arguments`). Sliding-window layers see only the last `sliding_window` positions, so only global (full)
attention layers can rate every token for the prune step.

KV sharing (`num_kv_shared_layers`, E2B and E4B): the last layers compute no keys and values of their own; each reads
those of the last earlier layer of its type, which stores them ("store") for the "reuse" layers after it. Those keys
and values have the length of the sequence the storing layer saw, so no step may change the sequence from the first
storing layer on: `steps_end` ends FrameFusion's steps there (a merge before that layer's attention is still fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from framefusion.runtime.layers import PreNormLayers

SLIDING = "sliding_attention"
FULL = "full_attention"
REUSE, STORE = "reuse", "store"


def kv_sharing(layer_types: Sequence[str], num_kv_shared_layers: int) -> list[str | None]:
    """Each layer's part in KV sharing, as transformers assigns it: "reuse" (the last `num_kv_shared_layers` layers:
    they read another layer's keys and values), "store" (the last layer of each type before them, whose keys and
    values they read), or None."""
    count = len(layer_types)
    first_shared = count - max(0, min(num_kv_shared_layers, count))
    modes: list[str | None] = [None if index < first_shared else REUSE for index in range(count)]
    for kind in set(layer_types):
        producers = [index for index in range(first_shared) if layer_types[index] == kind]
        if producers:
            modes[producers[-1]] = STORE
    return modes


def text_layout(text_config: Any) -> tuple[list[str], list[str | None]]:
    """(layer types, KV-sharing modes) of a Gemma 4 text config."""
    layer_types = [str(kind) for kind in text_config.layer_types]
    return layer_types, kv_sharing(layer_types, int(getattr(text_config, "num_kv_shared_layers", 0) or 0))


class Gemma4Layers(PreNormLayers):
    """The anatomy of Gemma 4's decoder layers (see the module docstring). layers: the stack, in order."""

    per_token_arguments = ("per_layer_input",)
    _PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "pre_feedforward_layernorm", "mlp",
              "post_feedforward_layernorm", "layer_scalar")

    def __init__(self, layers: Sequence[nn.Module], text_config: Any):
        self._index = {id(layer): index for index, layer in enumerate(layers)}
        self.layer_types, self.sharing = text_layout(text_config)
        self.sliding_window = int(text_config.sliding_window) if SLIDING in self.layer_types else None
        self._steps_end = next((index for index, mode in enumerate(self.sharing) if mode), len(layers) - 1)

    def index(self, layer: nn.Module) -> int:
        return self._index[id(layer)]

    def steps_end(self, layers: list[nn.Module]) -> int:
        """The first layer that stores or reads shared keys and values (every layer but the last without sharing)."""
        return min(self._steps_end, len(layers) - 1)

    def problem(self, layer: nn.Module) -> str | None:
        if id(layer) not in self._index or len(self._index) != len(self.layer_types):
            return f"{type(layer).__name__} is not a layer of the Gemma 4 stack its config describes"
        missing = [name for name in self._PARTS if not hasattr(layer, name)]
        if missing:
            return f"{type(layer).__name__} is not a Gemma 4 decoder layer (no {', '.join(missing)})"
        return None

    def importance_attention(self, layer: nn.Module) -> nn.Module | None:
        """A global attention layer with keys of its own (a sliding layer sees only its window; a KV-reusing layer
        projects no keys)."""
        index = self.index(layer)
        if self.layer_types[index] != FULL or self.sharing[index] == REUSE:
            return None
        return layer.self_attn

    def attention_half(self, layer: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        attention_arguments = {key: value for key, value in arguments.items() if key != "per_layer_input"}
        residual = hidden_states
        hidden_states, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **attention_arguments)
        return residual + layer.post_attention_layernorm(hidden_states)

    def feed_forward_half(self, layer: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        residual = hidden_states
        hidden_states = layer.mlp(layer.pre_feedforward_layernorm(hidden_states))
        if getattr(layer, "enable_moe_block", False):
            hidden_states = layer.post_feedforward_layernorm_1(hidden_states) + _experts(layer, residual)
        hidden_states = residual + layer.post_feedforward_layernorm(hidden_states)
        if getattr(layer, "hidden_size_per_layer_input", 0):
            residual = hidden_states
            hidden_states = layer.act_fn(layer.per_layer_input_gate(hidden_states)) * arguments["per_layer_input"]
            hidden_states = residual + layer.post_per_layer_input_norm(layer.per_layer_projection(hidden_states))
        return hidden_states * layer.layer_scalar


def _experts(layer: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """The MoE block's output (26B-A4B), routed on the residual stream before the MLP as the layer does."""
    flat = residual.reshape(-1, residual.shape[-1])
    _, top_k_weights, top_k_index = layer.router(flat)
    routed = layer.experts(layer.pre_feedforward_layernorm_2(flat), top_k_index, top_k_weights)
    return layer.post_feedforward_layernorm_2(routed.reshape(residual.shape))
