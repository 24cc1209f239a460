"""What the runtime saw of a video, handed to the family that reads it (families/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class VideoInputs:
    """What the runtime saw of the video for one forward of the multimodal model.

    video_grid_thw: [num_videos, 3] (Qwen-style grids) when the family has one, captured from the forward's arguments
    or from the last call of the model's `get_video_features` (generate() encodes the video before the forward and
    does not pass the grid on).
    """

    video_grid_thw: torch.Tensor | None = None
