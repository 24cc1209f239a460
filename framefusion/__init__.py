"""FrameFusion: video token reduction for video LLMs on Hugging Face transformers.

    from framefusion import apply_framefusion, remove_framefusion
    handle = apply_framefusion(model, cost=0.3)
    model.generate(**inputs)
    handle.stats.tokens_per_layer
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The API, imported on first use: `import framefusion` (and the command line's --version) stays free of torch.
_EXPORTS = {
    "FrameFusionHandle": "framefusion.api",
    "apply_framefusion": "framefusion.api",
    "framefusion_handle": "framefusion.api",
    "remove_framefusion": "framefusion.api",
    "has_reference_positions": "framefusion.families",
    "remove_reference_positions": "framefusion.families",
    "restore_reference_positions": "framefusion.families",
    "FrameFusionStats": "framefusion.runtime.reduction",
    "ReductionStep": "framefusion.runtime.reduction",
    "InnerMerge": "framefusion.runtime.reduction",
    "EVS": "framefusion.runtime.before_llm",
    "VidCom2": "framefusion.runtime.before_llm",
    "FastVID": "framefusion.runtime.before_llm",
    "HoliTom": "framefusion.runtime.before_llm",
    "EarlyTom": "framefusion.runtime.before_llm",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'framefusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once found, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
