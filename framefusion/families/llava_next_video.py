"""LLaVA-NeXT-Video (HF port): each frame's patch grid is pooled (stride 2) and the frames follow each other with
no separator and no newline token, so the video is one run of frames x (side / stride)^2 video tokens."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from framefusion.families.base import Family, VideoInputs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from framefusion.families.kit import FamilyKit
    from framefusion.runtime.vision_merge import TowerParts

# Vicuna-style conversation of LLaVA-NeXT-Video: "USER: <video>\n... ASSISTANT:".
LLAVA_VICUNA_CHAT_TEMPLATE = r"""
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}
    {%- if message['content'] is string -%}{{- message['content'] + ' ' -}}
    {%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}{%- endfor -%}
    {%- endif -%}
  {%- else -%}
    {{- message['role'].upper() + ': ' -}}
    {%- if message['content'] is string -%}
      {{- message['content'] -}}
    {%- else -%}
      {%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
      {%- for part in message['content'] if part['type'] == 'video' -%}{{- '<video>\n' -}}{%- endfor -%}
      {%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}
    {%- endif -%}
    {{- ' ' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
""".strip()


class LlavaNextVideo(Family):
    name = "llava-next-video"
    model_types = ("llava_next_video",)
    rank = 50
    default_similarity_lower_bound = 0.6
    fastvid_variant = "parallel"
    merges_frames_in_tower = True
    similarity_source = "FrameFusion authors' LLaVA-Video example (LLaVA-style)"
    importance_queries = 1
    aliases = MappingProxyType({"llava-next-video-7b": "llava-hf/LLaVA-NeXT-Video-7B-hf"})

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        config = model.config
        patches_per_side = config.vision_config.image_size // config.vision_config.patch_size
        # The pooler (average, max or conv) has kernel = stride and no padding: floor division per side.
        return (patches_per_side // config.spatial_pool_stride) ** 2

    def batch_tower(self, model: nn.Module) -> TowerParts | None:
        from framefusion.runtime.vision_merge import batch_tower_parts

        multimodal = self.multimodal_model(model)
        config = model.config

        def pool_scores(scores: torch.Tensor) -> torch.Tensor:
            # The video pooler the features go through ([frames, patches, 1]).
            return multimodal.vision_resampler(scores[..., None])[..., 0].float()

        class_tokens = 1 if config.vision_feature_select_strategy == "default" else 0
        return batch_tower_parts(multimodal.vision_tower, config.vision_feature_layer, pool_scores, class_tokens)

    def tiny_kit(self) -> FamilyKit:
        return llava_next_video_kit()


def llava_next_video_kit() -> FamilyKit:
    """LLaVA-NeXT-Video (CLIP + Llama/Vicuna): frames average-pooled 2x2 to (side/2)^2 tokens, no separators."""
    from framefusion.families._tiny_language_models import LLAMA_TEXT_TOKEN_FIELDS, tiny_llama_text_config
    from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, FamilyKit

    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    grid_pinpoints = [[112, 112], [112, 224], [224, 112], [224, 224]]

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "llava_next_video",
            "text_config": tiny_llama_text_config(num_hidden_layers),
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": TINY_FRAME_SIDE,
                "patch_size": TINY_PATCH_SIZE,
                "projection_dim": 32,
            },
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
            "image_grid_pinpoints": grid_pinpoints,
            "spatial_pool_mode": "average",
            "spatial_pool_stride": 2,
        }

    return FamilyKit(
        name="llava-next-video",
        model_class="LlavaNextVideoForConditionalGeneration",
        special_tokens=("<unk>", "<s>", "</s>", "<image>", "<video>"),
        named_tokens=MappingProxyType({"image_token": "<image>", "video_token": "<video>"}),
        eos_token="</s>",
        pad_token="<unk>",
        token_id_fields=MappingProxyType(
            {"image_token_index": "<image>", "video_token_index": "<video>", **LLAMA_TEXT_TOKEN_FIELDS}
        ),
        chat_template=LLAVA_VICUNA_CHAT_TEMPLATE,
        processor_classes=("LlavaNextVideoProcessor", "LlavaNextImageProcessor", "LlavaNextVideoVideoProcessor"),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(
            {
                "image_processor": {"size": {"shortest_edge": TINY_FRAME_SIDE}, "crop_size": frame_size,
                                    "image_grid_pinpoints": grid_pinpoints},
                "video_processor": {"size": {"shortest_edge": TINY_FRAME_SIDE}, "crop_size": frame_size},
                "processor": {"patch_size": TINY_PATCH_SIZE, "vision_feature_select_strategy": "default",
                              "num_additional_image_tokens": 1},
            }
        ),
    )


# What the `framefusion.families` entry point names.
llava_next_video = LlavaNextVideo()
