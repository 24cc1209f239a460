"""One adapter per model family; `adapter_for(model)` finds the one that handles a model."""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs
from framefusion.adapters.internvl import InternVLAdapter
from framefusion.adapters.llava_next_video import LlavaNextVideoAdapter
from framefusion.adapters.llava_onevision import LlavaOnevisionAdapter
from framefusion.adapters.minicpm_v import refuse_hybrid_stack
from framefusion.adapters.qwen2_vl import Qwen25VLAdapter, Qwen2VLAdapter
from framefusion.adapters.qwen3_vl import Qwen3VLAdapter
from framefusion.adapters.smolvlm import SmolVLMAdapter
from framefusion.errors import InputError

ADAPTERS: tuple[FamilyAdapter, ...] = (
    Qwen2VLAdapter(),
    Qwen25VLAdapter(),
    LlavaOnevisionAdapter(),
    Qwen3VLAdapter(),
    LlavaNextVideoAdapter(),
    InternVLAdapter(),
    SmolVLMAdapter(),
)


def supported_families() -> list[str]:
    return [adapter.family for adapter in ADAPTERS]


def adapter_by_family(family: str) -> FamilyAdapter:
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise ValueError(f"unknown model family {family!r}; supported: {', '.join(supported_families())}")


def find_adapter(model: nn.Module) -> FamilyAdapter | None:
    """The adapter whose family `model` belongs to (by config/class), or None; never raises."""
    return next((adapter for adapter in ADAPTERS if adapter.matches(model)), None)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for `model`, detected from its config's model_type (not from its name).

    Models whose language stack is hybrid (MiniCPM-V 4.x: mostly linear attention) are refused with the reason.
    """
    refuse_hybrid_stack(model)
    adapter = find_adapter(model)
    if adapter is not None:
        return adapter
    config = getattr(model, "config", None)
    found = f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})"
    raise InputError(
        f"FrameFusion has no adapter for {found}; supported families: {', '.join(supported_families())}"
    )


__all__ = ["ADAPTERS", "FamilyAdapter", "VideoInputs", "adapter_by_family", "adapter_for", "find_adapter",
           "supported_families"]
