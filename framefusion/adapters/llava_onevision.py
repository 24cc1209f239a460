"""LLaVA-OneVision and LLaVA-Video (HF port): frames of ceil(s/2)^2 pooled tokens, then one newline token."""

from __future__ import annotations

import math

from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs


class LlavaOnevisionAdapter(FamilyAdapter):
    family = "llava-onevision"
    model_types = ("llava_onevision",)
    default_similarity_lower_bound = 0.6
    similarity_source = "FrameFusion authors' LLaVA-Video example"
    importance_queries = 1
    # The HF port appends a single newline embedding after all frames; it is no spatial position.
    trailing_tokens_per_video = 1

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches_per_side = vision.image_size // vision.patch_size
        # Video features are pooled 2x2 (bilinear to ceil(side / 2)) per frame.
        return math.ceil(patches_per_side / 2) ** 2
