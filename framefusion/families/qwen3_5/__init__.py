"""Qwen3.5 (dense): Qwen3-VL's video layout on a hybrid language model.

The processor is Qwen3-VL's: one frame is one temporal patch (2 video frames) of (h/merge) x (w/merge) tokens, each
written as its own "<t seconds><|vision_start|> tokens <|vision_end|>" block, so the layout, the frame multiple and
the frame-dedup rules are Qwen3-VL's (no DeepStack). The language model is not a plain transformer stack: three
layers in four are Gated DeltaNet linear attention (a short causal convolution and a recurrent state, no attention
matrix) and every fourth is softmax attention with a KV cache (`config.text_config.layer_types`).

How FrameFusion maps onto it (docs/adding-a-model.md, "Hybrid stacks"): a merge step needs only hidden states and
runs after any layer; the prune step needs the last queries' attention and runs after the nearest full-attention
layer once merging is done (each layer it waits through counts in the budget at the token count merging left).
`cost` counts every decoder layer, linear or not. A linear-attention layer simply runs on the tokens still present,
so its convolution window and recurrent state, all that decoding reads from its cache, are those of the kept tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framefusion.families.qwen3_vl import Qwen3VL
from framefusion.families.qwen3_5 import memory

if TYPE_CHECKING:
    from framefusion.families.kit import FamilyKit


class Qwen35(Qwen3VL):
    name = "qwen3.5"
    model_types = ("qwen3_5",)
    rank = 45
    default_similarity_lower_bound = 0.5
    fastvid_variant = "segmentwise"
    similarity_source = "FrameFusion authors' Qwen2-VL example (same lineage; none published for Qwen3.5)"
    aliases = MappingProxyType(
        {
            "qwen3.5-0.8b": "Qwen/Qwen3.5-0.8B",
            "qwen3.5-2b": "Qwen/Qwen3.5-2B",
            "qwen3.5-4b": "Qwen/Qwen3.5-4B",
            "qwen3.5-9b": "Qwen/Qwen3.5-9B",
        }
    )
    shape_names = ("qwen3.5-0.8b",)

    def tiny_kit(self) -> FamilyKit:
        from framefusion.families.qwen3_5.kit import qwen3_5_kit

        return qwen3_5_kit()

    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int:
        return memory.tokens_per_frame(config, processor, frame_size)

    def vision_parameters(self, vision: Mapping[str, Any], text_hidden: int) -> int:
        return memory.vision_parameters(vision, text_hidden)

    def language_parameters(self, text: Mapping[str, Any]) -> int:
        return memory.decoder_parameters(text)

    def cache_layers(self, text: Mapping[str, Any]) -> int:
        return memory.full_attention_layers(text)

    # Decoding after a reduced prefill reads how many tokens each linear-attention layer's cache saw, which the cache
    # counts from transformers 5.25 on; on older releases the family refuses its models with the reason.
    minimum_transformers = "5.25.0"

    @property
    def refuses(self) -> bool:  # type: ignore[override]
        from packaging.version import Version

        from framefusion.runtime.transformers_compat import installed_version

        return Version(installed_version()) < Version(self.minimum_transformers)

    def refuse(self, model: Any) -> None:
        from framefusion.errors import InputError
        from framefusion.runtime.transformers_compat import installed_version

        raise InputError(f"FrameFusion runs Qwen3.5 with transformers {self.minimum_transformers} or newer (this is "
                         f"{installed_version()}): pip install -U transformers")


# What the `framefusion.families` entry point names.
qwen3_5 = Qwen35()
