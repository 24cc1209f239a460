"""Gemma 4's attention masks while decoding after a reduced prefill, in the prompt's original positions.

transformers builds a decoding step's masks from cache counts: a sliding-window layer lets the new token see every key
its cache still holds (the last `sliding_window - 1`), which is right only when those keys are the last positions of
the prompt. After FrameFusion removed tokens, a layer's cache holds the kept tokens only, so its last keys reach back
further than the window: the new token would see positions that the same sequence without a cache hides (there the
prefill's own mask, cut to the kept tokens, hides every position `sliding_window` or more behind). The same step's
masks are also sized from one layer's count, while layers before a step hold more tokens than those after it and a
KV-reusing layer reads the keys of the layer that stores them.

So for the decoding steps after a reduced prefill this replaces the mask of every layer that lost tokens with one
built from the original positions of its keys (recorded at the prefill; the tokens after the prompt follow on without
gaps): a key is visible to a query at position p if it is not after p and, in a sliding layer, after
p - sliding_window. The same holds for a later turn of a conversation on that cache. Eager and sdpa masks are built;
other backends keep transformers' masks.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from framefusion.families.gemma4.layers import REUSE, SLIDING, Gemma4Layers
from framefusion.runtime import transformers_compat as compat

if TYPE_CHECKING:
    from framefusion.runtime.hooks import FrameFusionRuntime


class KeptPositions:
    """The original positions each layer's keys stand for, after the last reduced prefill into one cache."""

    def __init__(self) -> None:
        self._cache: weakref.ref | None = None
        self.prompt_length = 0
        self.positions: dict[int, torch.Tensor] = {}

    def start(self, cache: Any, prompt_length: int) -> None:
        self._cache = weakref.ref(cache)
        self.prompt_length = prompt_length
        self.positions = {}

    def of(self, cache: Any, layer_index: int) -> torch.Tensor | None:
        """[n] positions of the prompt's keys in this layer, or None where the layer kept every token (or the cache
        is not the one the last reduced prefill filled)."""
        if self._cache is None or cache is None or self._cache() is not cache:
            return None
        return self.positions.get(layer_index)


def install_decoding_masks(runtime: FrameFusionRuntime, anatomy: Gemma4Layers) -> KeptPositions:
    """Wrap every layer's attention: record its positions during a reducing prefill, give it positional masks while
    decoding from that prefill's cache. Put back by runtime.remove()."""
    kept = KeptPositions()
    for index, layer in enumerate(runtime.layers):
        attention = layer.self_attn
        attribute = "_old_forward" if compat.keeps_accelerate_wrapper(attention) else "forward"
        runtime.replace_attribute(attention, attribute,
                                  _attention_forward(getattr(attention, attribute), runtime, anatomy, kept, index))
    return kept


def _attention_forward(original: Callable, runtime: FrameFusionRuntime, anatomy: Gemma4Layers, kept: KeptPositions,
                       index: int) -> Callable:
    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        cache = compat.cache_from_kwargs(kwargs)
        state = runtime.prefill
        if state is not None:
            if cache is not None:  # a prefill without a cache (a recomputation) leaves the record alone
                if index == 0:
                    kept.start(cache, state.original_length)
                if state.length < state.original_length:
                    kept.positions[index] = state.positions
            return original(*args, **kwargs)
        positions = kept.of(cache, index)
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        if positions is not None and isinstance(hidden_states, torch.Tensor):
            mask = decoding_mask(runtime, anatomy, kept, index, positions, cache, kwargs, hidden_states)
            if mask is not None:
                kwargs["attention_mask"] = mask
        return original(*args, **kwargs)

    return forward


def decoding_mask(runtime: FrameFusionRuntime, anatomy: Gemma4Layers, kept: KeptPositions, index: int,
                  positions: torch.Tensor, cache: Any, arguments: dict[str, Any],
                  hidden_states: torch.Tensor) -> torch.Tensor | None:
    """[1, 1, q, K] mask of a decoding step for layer `index` whose prompt keys stand for `positions`, for its q query
    rows (hidden_states [1, q, d]; eager: additive in their dtype, sdpa: boolean); None to keep the one transformers
    made (another backend, or nothing to change)."""
    backend = compat.attention_implementation(runtime.model.config)
    position_ids = arguments.get("position_ids")
    if backend not in ("eager", "sdpa") or not isinstance(position_ids, torch.Tensor):
        return None
    sliding = anatomy.layer_types[index] == SLIDING
    # The queries' positions: the last rows of position_ids (a continuation's KV-reusing layers compute only the last
    # token; transformers slices their inputs, not the position ids).
    queries = position_ids.reshape(-1, position_ids.shape[-1])[0, -hidden_states.shape[-2]:]  # [q]
    if arguments.get("attention_mask") is None and not sliding and queries.numel() == 1:
        return None  # one new token sees every key of a global layer: sdpa's own unmasked attention
    if anatomy.sharing[index] == REUSE:
        # The storing layer ran before this one in the same step: its keys already hold this step's tokens.
        keys = arguments["shared_kv_states"][anatomy.layer_types[index]][0].shape[-2]
    else:
        keys = cache.get_mask_sizes(queries.numel(), index)[0]
    device = queries.device
    after_prompt = torch.arange(kept.prompt_length, int(queries[-1]) + 1, device=device)
    key_positions = torch.cat([positions.to(device), after_prompt])
    if keys > key_positions.numel():
        return None
    key_positions = key_positions[-keys:]
    visible = key_positions[None, :] <= queries[:, None]
    if sliding:
        visible &= key_positions[None, :] > queries[:, None] - anatomy.sliding_window
    visible = visible[None, None]
    if backend == "sdpa":
        return visible
    dtype = hidden_states.dtype
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
