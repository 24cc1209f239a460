"""Qwen2-VL and Qwen2.5-VL: one frame is one temporal patch (2 video frames) of (h/merge) x (w/merge) tokens."""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs


class Qwen2VLAdapter(FamilyAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl",)
    default_similarity_lower_bound = 0.5
    similarity_source = "FrameFusion authors' Qwen2-VL example"
    importance_queries = 4  # as the official Qwen2-VL adapter
    needs_reference_positions = True

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        grids = video.video_grid_thw
        if grids is None or video_index >= len(grids):
            raise ValueError(
                f"the prompt holds video tokens but the video's grid (video_grid_thw) is unknown for video "
                f"{video_index + 1}: pass pixel_values_videos with video_grid_thw, or call generate()/the model with them"
            )
        merge = model.config.vision_config.spatial_merge_size
        frames, height, width = (int(x) for x in grids[video_index])
        per_frame = (height // merge) * (width // merge)
        if per_frame * frames != num_tokens:
            raise ValueError(
                f"video {video_index + 1} has {num_tokens} video tokens but its grid {frames}x{height}x{width} gives "
                f"{per_frame * frames}: the prompt and the video inputs do not match"
            )
        return per_frame


class Qwen25VLAdapter(Qwen2VLAdapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    similarity_source = "FrameFusion authors' Qwen2-VL example (same family)"
