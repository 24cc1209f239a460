"""LLaVA-NeXT-Video (HF port): each frame's patch grid is pooled (stride 2) and the frames follow each other with
no separator and no newline token, so the video is one run of frames x (side / stride)^2 video tokens."""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import FamilyAdapter, VideoInputs


class LlavaNextVideoAdapter(FamilyAdapter):
    family = "llava-next-video"
    model_types = ("llava_next_video",)
    default_similarity_lower_bound = 0.6
    similarity_source = "FrameFusion authors' LLaVA-Video example (LLaVA-style)"
    importance_queries = 1

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        config = model.config
        patches_per_side = config.vision_config.image_size // config.vision_config.patch_size
        # The pooler (average, max or conv) has kernel = stride and no padding: floor division per side.
        return (patches_per_side // config.spatial_pool_stride) ** 2
