"""MiniCPM-V: registered only to refuse the transformers-native classes, with the reason.

transformers 5.23 ships MiniCPM-V 4.6 and 4.7 (`minicpmv4_6`, `minicpmv4_7`; also `minicpm_ocr`), and all three
put a Qwen3.5 language model (`qwen3_5_text`) under the vision encoder: a hybrid stack in which three layers in
four are Gated DeltaNet linear attention with a recurrent state and only every fourth is softmax attention with a
KV cache. The runtime runs such stacks (merging after any layer, pruning after the nearest full-attention layer: the
qwen3.5 family), but no family home describes MiniCPM-V's video layout (its slices and pooled frame tokens), so
these classes are refused. Any other model whose language stack lists linear-attention layers and that no supported
family claims is refused the same way.
MiniCPM-V 2.6, the version the FrameFusion paper evaluates, is a standard attention stack but needs remote code
(trust_remote_code) and is not a transformers-native class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framefusion.errors import InputError
from framefusion.families.base import Family

if TYPE_CHECKING:
    from torch import nn


class MiniCPMV(Family):
    name = "minicpm-v"
    model_types = ("minicpmv4_6", "minicpmv4_7", "minicpm_ocr")
    rank = 80
    refuses = True

    def matches(self, model: nn.Module) -> bool:
        return super().matches(model) or bool(recurrent_layer_types(model))

    def refuse(self, model: nn.Module) -> None:
        kinds = ", ".join(recurrent_layer_types(model)) or "linear attention"
        name = f"{type(model).__name__} (model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r})"
        raise InputError(
            f"FrameFusion cannot run on {name}: its language model is a hybrid stack whose layers are mostly {kinds} "
            "with a recurrent state, and no model family describes its video layout; use a supported model (Qwen3.5 "
            "runs such a stack) or add a family for it (see docs/adding-a-model.md)"
        )


def recurrent_layer_types(model: nn.Module) -> list[str]:
    """The non-attention layer kinds of the model's language stack (e.g. ["linear_attention"]), if it lists any."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None) or []
    return sorted({kind for kind in layer_types if "linear" in kind})


# What the `framefusion.families` entry point names.
minicpm_v = MiniCPMV()
