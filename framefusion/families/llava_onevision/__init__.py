"""LLaVA-OneVision and LLaVA-Video (HF port): frames of ceil(s/2)^2 pooled tokens, then one newline token.

The same classes load the LLaVA-Video-*-Qwen2-hf conversions; the real shapes of both are in shapes/.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framefusion.families.base import Family, VideoInputs, patches_per_side

if TYPE_CHECKING:
    import torch
    from torch import nn

    from framefusion.runtime.vision_merge import TowerParts

    from framefusion.families.kit import FamilyKit


class LlavaOnevision(Family):
    name = "llava-onevision"
    model_types = ("llava_onevision",)
    rank = 30
    default_similarity_lower_bound = 0.6
    fastvid_variant = "parallel"
    merges_frames_in_tower = True
    siglip_tower = True
    similarity_source = "FrameFusion authors' LLaVA-Video example"
    importance_queries = 1
    # The HF port appends a single newline embedding after all frames; it is no spatial position.
    trailing_tokens_per_video = 1
    aliases = MappingProxyType(
        {
            "llava-onevision-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
            "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
            "llava-video-7b-qwen2": "llava-hf/LLaVA-Video-7B-Qwen2-hf",
        }
    )
    shape_names = ("llava-onevision-qwen2-0.5b", "llava-video-7b-qwen2")
    # What `framefusion bench` measures when no model is named (random weights, nothing to download).
    default_benchmark_shape = "llava-onevision-qwen2-0.5b"

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches_along_side = vision.image_size // vision.patch_size
        # Video features are pooled 2x2 (bilinear to ceil(side / 2)) per frame.
        return math.ceil(patches_along_side / 2) ** 2

    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int | None:
        side = patches_per_side(config)
        return None if side is None else max(1, math.ceil(side / 2) ** 2)

    def batch_tower(self, model: nn.Module) -> TowerParts | None:
        from framefusion.runtime.vision_merge import batch_tower_parts

        multimodal = self.multimodal_model(model)

        def pool_scores(scores: torch.Tensor) -> torch.Tensor:
            # The same 2-D pooling as the video features ([frames, patches, 1] through apply_pooling).
            return multimodal.apply_pooling(scores[..., None].to(multimodal.image_newline.dtype))[..., 0].float()

        return batch_tower_parts(multimodal.vision_tower, model.config.vision_feature_layer, pool_scores)

    def tiny_kit(self) -> FamilyKit:
        from framefusion.families.llava_onevision.kit import llava_onevision_kit

        return llava_onevision_kit()


# What the `framefusion.families` entry point names.
llava_onevision = LlavaOnevision()
