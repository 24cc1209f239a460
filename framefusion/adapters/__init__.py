"""One adapter per model family; `adapter_for(model)` finds the one that handles a model."""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs
from framefusion.adapters.llava_onevision import LlavaOnevisionAdapter
from framefusion.adapters.qwen2_vl import Qwen25VLAdapter, Qwen2VLAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (Qwen2VLAdapter(), Qwen25VLAdapter(), LlavaOnevisionAdapter())


def supported_families() -> list[str]:
    return [adapter.family for adapter in ADAPTERS]


def adapter_by_family(family: str) -> FamilyAdapter:
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise ValueError(f"unknown model family {family!r}; supported: {', '.join(supported_families())}")


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for `model`, detected from its config's model_type (not from its name)."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    config = getattr(model, "config", None)
    found = f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})"
    raise ValueError(
        f"FrameFusion has no adapter for {found}; supported families: {', '.join(supported_families())}"
    )


__all__ = ["ADAPTERS", "FamilyAdapter", "VideoInputs", "adapter_by_family", "adapter_for", "supported_families"]
