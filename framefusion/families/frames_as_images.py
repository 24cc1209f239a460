"""Videos whose frames are written as images: InternVL and SmolVLM expand a video into one image per frame, each
a run of exactly P image tokens framed by its own markers and a short label ("Frame3: ", "Frame from 00:02:").

The model sees image tokens only, so a video is recognised by its shape: two or more runs of exactly P image
tokens in a row, each separated from the previous one by a label of `min_gap` to `max_gap` tokens. Tiles of one
image are separated by markers alone (shorter gaps) and never count as frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framefusion.families.base import Family, VideoInputs, video_token_runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from torch import nn

# Longest label between two frames, in tokens; generous, a frame label is a handful of tokens.
MAX_FRAME_GAP = 32


def frame_groups(
    is_image: torch.Tensor, tokens_per_frame: int, min_gap: int, max_gap: int = MAX_FRAME_GAP
) -> list[list[tuple[int, int]]]:
    """The videos in a prompt: lists of (start, end) frame runs. is_image: [L] bool (image token positions)."""
    videos: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for start, end in video_token_runs(is_image):
        is_frame = end - start == tokens_per_frame
        if is_frame and current and min_gap <= start - current[-1][1] <= max_gap:
            current.append((start, end))
            continue
        if len(current) >= 2:
            videos.append(current)
        current = [(start, end)] if is_frame else []
    if len(current) >= 2:
        videos.append(current)
    return videos


def frame_patch_types(
    is_image: torch.Tensor, tokens_per_frame: int, min_gap: int, max_gap: int = MAX_FRAME_GAP
) -> torch.Tensor | None:
    """[L] patch types (0 ... P-1 within each frame, a new range per video, -1 elsewhere), or None without video."""
    import torch

    videos = frame_groups(is_image, tokens_per_frame, min_gap, max_gap)
    if not videos:
        return None
    patch_types = torch.full(is_image.shape, -1, dtype=torch.long, device=is_image.device)
    spatial_positions = torch.arange(tokens_per_frame, device=is_image.device)
    for index, frames in enumerate(videos):
        for start, end in frames:
            patch_types[start:end] = spatial_positions + index * tokens_per_frame
    return patch_types


class FramesAsImagesFamily(Family):
    """Base of the families whose processor writes each frame as an image (InternVL, SmolVLM).

    Subclasses set `min_frame_gap` (shortest label between two frames, longer than any gap between tiles of one
    image) and implement tokens_per_frame.
    """

    min_frame_gap: int = 4
    # The processor returns the frames as pixel_values and the model has no video encoder: generate() and the forward
    # take them as images.
    video_modality = "image"
    # The dimension of pixel_values (and pixel_attention_mask) along which the frames lie: InternVL [T, 3, H, W],
    # SmolVLM [1, T, 3, H, W]. Every output of the vision tower holds its frames along dimension 0.
    pixel_frame_dim: int = 0

    def video_token_id(self, model: nn.Module) -> int:
        # Every frame is expanded to image tokens; the <video> placeholder never reaches the model.
        return int(model.config.image_token_id)

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        is_image = input_ids == self.video_token_id(model)
        return frame_patch_types(is_image, self.tokens_per_frame(model, 0, 0, video), self.min_frame_gap)

    def frame_inputs(self, video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
        from framefusion.families.frame_features import FrameAxis, select_unit_inputs

        axis = FrameAxis(dim=self.pixel_frame_dim)
        axes = {key: axis for key in ("pixel_values", "pixel_attention_mask") if key in video_inputs}
        return select_unit_inputs(video_inputs, axes, units, num_units)

    def spread_frame_features(self, features: Any, take: Sequence[int], num_encoded: int) -> Any:
        from framefusion.families.frame_features import FrameAxis, spread_output

        per_frame = FrameAxis(dim=0)
        layout = dict.fromkeys(("pooler_output", "last_hidden_state", "hidden_states"), per_frame)
        return spread_output(features, take, num_encoded, layout)
