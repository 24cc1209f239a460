"""Qwen2-VL and Qwen2.5-VL: one frame is one temporal patch (2 video frames) of (h/merge) x (w/merge) tokens.

On transformers 5.x both also need their reference rotary positions restored (positions.py, docs/positions.md).
Their tiny checkpoints are in kits.py, their memory figures in memory.py, the real shapes of the published models
in shapes/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framefusion.families.base import Family, VideoInputs
from framefusion.families.qwen_vl import memory

if TYPE_CHECKING:
    from torch import nn

    from framefusion.families.kit import FamilyKit


class Qwen2VL(Family):
    name = "qwen2-vl"
    model_types = ("qwen2_vl",)
    rank = 10
    default_similarity_lower_bound = 0.5
    fastvid_variant = "segmentwise"
    similarity_source = "FrameFusion authors' Qwen2-VL example"
    importance_queries = 4  # as the official Qwen2-VL adapter
    # The processor pairs frames into temporal patches: an odd count would repeat the last frame.
    frame_multiple = 2
    aliases = MappingProxyType(
        {"qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct"}
    )
    default_alias = "qwen2-vl-2b"
    shape_names = ("qwen2-vl-2b", "qwen2-vl-7b")

    def packed_tower(self, model: nn.Module) -> nn.Module | None:
        return self.multimodal_model(model).visual

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

    def frame_inputs(self, video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
        from framefusion.families.qwen_vl.frames import temporal_patch_inputs

        return temporal_patch_inputs(video_inputs, units, num_units)

    def spread_frame_features(self, features: Any, take: Sequence[int], num_encoded: int) -> Any:
        from framefusion.families.qwen_vl.frames import spread_temporal_patch_features

        return spread_temporal_patch_features(features, take, num_encoded)

    def restore_reference_positions(self, model: nn.Module) -> bool:
        from framefusion.families.qwen_vl import positions

        return positions.restore_reference_positions(model)

    def remove_reference_positions(self, model: nn.Module) -> bool:
        from framefusion.families.qwen_vl import positions

        return positions.remove_reference_positions(model)

    def has_reference_positions(self, model: nn.Module) -> bool:
        from framefusion.families.qwen_vl import positions

        return positions.has_reference_positions(model)

    def tiny_kit(self) -> FamilyKit:
        from framefusion.families.qwen_vl.kits import qwen2_vl_kit

        return qwen2_vl_kit()

    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int:
        return memory.tokens_per_frame(config, processor, frame_size)

    def vision_parameters(self, vision: Mapping[str, Any], text_hidden: int) -> int:
        return memory.vision_parameters(vision, text_hidden)


class Qwen25VL(Qwen2VL):
    name = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    rank = 20
    similarity_source = "FrameFusion authors' Qwen2-VL example (same family)"
    aliases = MappingProxyType(
        {"qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct"}
    )
    default_alias = None
    shape_names = ("qwen2.5-vl-3b", "qwen2.5-vl-7b")

    def tiny_kit(self) -> FamilyKit:
        from framefusion.families.qwen_vl.kits import qwen2_5_vl_kit

        return qwen2_5_vl_kit()


# What the `framefusion.families` entry points name.
qwen2_vl = Qwen2VL()
qwen2_5_vl = Qwen25VL()
