"""FrameFusion: video token reduction for video LLMs on Hugging Face transformers.

    from framefusion import apply_framefusion, remove_framefusion
    handle = apply_framefusion(model, cost=0.3)
    model.generate(**inputs)
    handle.stats.tokens_per_layer
"""

from framefusion.api import FrameFusionHandle, apply_framefusion, framefusion_handle, remove_framefusion
from framefusion.families import has_reference_positions, remove_reference_positions, restore_reference_positions
from framefusion.runtime.reduction import FrameFusionStats, ReductionStep

__version__ = "0.1.0"

__all__ = [
    "FrameFusionHandle",
    "FrameFusionStats",
    "ReductionStep",
    "__version__",
    "apply_framefusion",
    "framefusion_handle",
    "has_reference_positions",
    "remove_framefusion",
    "remove_reference_positions",
    "restore_reference_positions",
]
