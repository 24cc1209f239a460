"""Qwen3-VL: one frame is one temporal patch (2 video frames) of (h/merge) x (w/merge) tokens, and the processor
writes each frame group as its own block, "<t seconds><|vision_start|> tokens <|vision_end|>".

So one video is many runs of video tokens with timestamp text between them: the patch types run on across those
separators, and a token is compared with the same spatial position of the previous frame group. DeepStack (visual
features added to the first layers' outputs) is handled by the runtime, for any text model that has it.
"""

from __future__ import annotations

import torch
from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs


class Qwen3VLAdapter(FamilyAdapter):
    family = "qwen3-vl"
    model_types = ("qwen3_vl",)
    default_similarity_lower_bound = 0.5
    similarity_source = "FrameFusion authors' Qwen2-VL example (same family)"
    importance_queries = 4  # as the official Qwen2-VL adapter, for every Qwen-VL family

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        grid = self._grid(video, video_index)
        merge = model.config.vision_config.spatial_merge_size
        return (int(grid[1]) // merge) * (int(grid[2]) // merge)

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        """[L] patch types: the i-th video owns the next t * P video tokens (wherever the separators fall)."""
        video_positions = torch.nonzero(input_ids == self.video_token_id(model)).squeeze(-1)
        if video_positions.numel() == 0:
            return None
        grids = video.video_grid_thw
        if grids is None:
            self._grid(video, 0)  # raises the explanation
        patch_types = torch.full_like(input_ids, -1)
        used = next_type = 0
        for index in range(len(grids)):
            frames = int(grids[index][0])
            per_frame = self.tokens_per_frame(model, index, 0, video)
            owned = video_positions[used : used + frames * per_frame]
            if owned.numel() != frames * per_frame:
                break
            patch_types[owned] = torch.arange(owned.numel(), device=input_ids.device) % per_frame + next_type
            used += owned.numel()
            next_type += per_frame
        if used != video_positions.numel():
            raise ValueError(
                f"the prompt holds {video_positions.numel()} video tokens but the video grids {grids.tolist()} give "
                f"{used if used < video_positions.numel() else 'more'}: the prompt and the video inputs do not match"
            )
        return patch_types

    @staticmethod
    def _grid(video: VideoInputs, video_index: int) -> torch.Tensor:
        grids = video.video_grid_thw
        if grids is None or video_index >= len(grids):
            raise ValueError(
                f"the prompt holds video tokens but the video's grid (video_grid_thw) is unknown for video "
                f"{video_index + 1}: pass pixel_values_videos with video_grid_thw, or call generate()/the model with them"
            )
        return grids[video_index]
