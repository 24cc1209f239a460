"""How FrameFusion runs one decoder layer in two halves, around the step it takes on the residual stream after the
layer's token mixer and before its feed-forward part.

`PreNormLayers` is the standard pre-norm layer (Llama, Qwen, and the hybrid stacks built from it):

    x = x + mixer(input_layernorm(x))          # attention_half
    x = x + mlp(post_attention_layernorm(x))   # feed_forward_half

whose token mixer is either softmax attention with a KV cache (`self_attn`) or, in a hybrid stack such as Qwen3.5's,
a linear-attention layer (`linear_attn`: Gated DeltaNet, a short causal convolution and a recurrent state, no
attention matrix). Only softmax attention over every token can rate importance for the prune step
(`importance_attention`); a linear-attention layer just runs on whatever tokens are still present, and its
convolution window and recurrent state (what decoding reads from the cache) are those of the kept tokens.

A family whose layers look different (Gemma 4: sandwich norms, per-layer inputs, sliding-window layers, layers that
reuse another layer's keys and values) gives the runtime its own subclass in `Family.install`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framefusion.runtime import transformers_compat as compat

# The token mixers a pre-norm layer may have: softmax attention, or a linear-attention (recurrent) layer.
ATTENTION = compat.ATTENTION_MODULE
LINEAR_ATTENTION = compat.LINEAR_ATTENTION_MODULE


class PreNormLayers:
    """The anatomy of a standard pre-norm decoder layer (see the module docstring)."""

    # Keyword arguments of a layer's forward, besides hidden_states, attention_mask, position_ids and
    # position_embeddings, that hold one row per token on dimension 1 and must follow the kept tokens.
    per_token_arguments: tuple[str, ...] = ()

    def steps_end(self, layers: list[nn.Module]) -> int:
        """Steps after a layer's token mixer run only in the layers before this index: every layer but the last. A
        family whose later layers read keys and values an earlier layer left for them ends the steps sooner."""
        return len(layers) - 1

    def problem(self, layer: nn.Module) -> str | None:
        """Why FrameFusion cannot run this layer (None: it can)."""
        missing = [name for name in ("input_layernorm", "post_attention_layernorm", "mlp") if not hasattr(layer, name)]
        if not (hasattr(layer, ATTENTION) or hasattr(layer, LINEAR_ATTENTION)):
            missing.append(ATTENTION)
        if missing:
            return f"{type(layer).__name__} is not a standard pre-norm decoder layer (no {', '.join(missing)})"
        return None

    def importance_attention(self, layer: nn.Module) -> nn.Module | None:
        """The softmax attention whose last queries can rate every token, or None for a layer that cannot."""
        return getattr(layer, ATTENTION, None)

    def attention_half(self, layer: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        """The residual stream after the token mixer. arguments: the layer's other keyword arguments (mask,
        positions, cache, ...), already cut to the tokens present."""
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
        attention = getattr(layer, ATTENTION, None)
        if attention is not None:
            hidden_states, _ = attention(hidden_states=hidden_states, **arguments)
        else:
            # A linear-attention layer takes no positions: its order is the sequence's (as the layer itself calls it).
            mixer_arguments = {key: value for key, value in arguments.items()
                               if key not in ("position_ids", "position_embeddings")}
            hidden_states = getattr(layer, LINEAR_ATTENTION)(hidden_states=hidden_states, **mixer_arguments)
        return residual + hidden_states

    def feed_forward_half(self, layer: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        """The layer's output from the residual stream after its token mixer (and after the step, if any)."""
        residual = hidden_states
        hidden_states = layer.post_attention_layernorm(hidden_states)
        hidden_states = layer.mlp(hidden_states)
        return residual + hidden_states
