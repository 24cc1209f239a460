"""InternVL (HF-native `internvl` classes): the processor writes a video as
"Frame1: <img> P x <IMG_CONTEXT> </img>\nFrame2: ...", P = (image_size / patch_size)^2 * downsample_ratio^2.

Frames are image tokens; a video is found as consecutive runs of exactly P of them with a frame label between
(see frames_as_images.py). The markers and labels are type -1, so are images (their runs are P x tiles, or lone).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from framefusion.families.base import VideoInputs
from framefusion.families.frames_as_images import FramesAsImagesFamily

if TYPE_CHECKING:
    import torch
    from torch import nn

    from framefusion.families.kit import FamilyKit
    from framefusion.runtime.vision_merge import TowerParts


class InternVL(FramesAsImagesFamily):
    name = "internvl"
    model_types = ("internvl",)
    rank = 60
    default_similarity_lower_bound = 0.5
    similarity_source = "FrameFusion authors' InternVL2.5 example"
    importance_queries = 1
    # "</img>", a newline, "FrameK", ":", " ", "<img>": a frame label is at least this long, adjacent images are shorter.
    min_frame_gap = 4
    # Its InternViT tower encodes a video's frames as a batch of images, one 448-px tile a frame.
    merges_frames_in_tower = True
    aliases = MappingProxyType(
        {"internvl3-1b": "OpenGVLab/InternVL3-1B-hf", "internvl3-8b": "OpenGVLab/InternVL3-8B-hf"}
    )

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches = (vision.image_size[0] // vision.patch_size[0]) * (vision.image_size[1] // vision.patch_size[1])
        return int(patches * model.config.downsample_ratio**2)

    def batch_tower(self, model: nn.Module) -> TowerParts | None:
        from framefusion.runtime.vision_merge import batch_tower_parts

        multimodal = self.multimodal_model(model)
        config = model.config

        def pool_scores(scores: torch.Tensor) -> torch.Tensor:
            # The model's own pixel shuffle gathers each token's patches (in its transposed order): their mean.
            frames, patches = scores.shape
            side = int(patches**0.5)
            shuffled = multimodal.pixel_shuffle(scores.reshape(frames, side, side, 1), config.downsample_ratio)
            return shuffled.reshape(frames, -1, shuffled.shape[-1]).mean(dim=-1).float()

        class_tokens = 1 if config.vision_feature_select_strategy == "default" else 0
        return batch_tower_parts(multimodal.vision_tower, config.vision_feature_layer, pool_scores, class_tokens)

    def tiny_kit(self) -> FamilyKit:
        return internvl_kit()


def internvl_kit() -> FamilyKit:
    """InternVL (HF-native; InternViT + Qwen2): every frame is an image of 16 tokens after pixel shuffle."""
    from framefusion.families._templates import LLAVA_QWEN_CHAT_TEMPLATE
    from framefusion.families._tiny_language_models import QWEN_ROPE, QWEN_TEXT_TOKEN_FIELDS, tiny_qwen_text_config
    from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, FamilyKit

    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "internvl",
            "text_config": tiny_qwen_text_config(num_hidden_layers, "qwen2", QWEN_ROPE),
            "vision_config": {
                "model_type": "internvl_vision",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": [TINY_FRAME_SIDE, TINY_FRAME_SIDE],
                "patch_size": [TINY_PATCH_SIZE, TINY_PATCH_SIZE],
            },
            "downsample_ratio": 0.5,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        }

    return FamilyKit(
        name="internvl",
        model_class="InternVLForConditionalGeneration",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        named_tokens=MappingProxyType(
            {
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            }
        ),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        token_id_fields=MappingProxyType({"image_token_id": "<IMG_CONTEXT>", **QWEN_TEXT_TOKEN_FIELDS}),
        # Qwen2 chat format: an image is <IMG_CONTEXT>, a video <video>, each on its own line before the text; the
        # processor expands a video to "Frame1: <img><IMG_CONTEXT>...</img>\nFrame2: ...".
        chat_template=LLAVA_QWEN_CHAT_TEMPLATE.replace("'<image>\\n'", "'<IMG_CONTEXT>\\n'"),
        processor_classes=("InternVLProcessor", "GotOcr2ImageProcessor", "InternVLVideoProcessor"),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(
            {
                "image_processor": {"size": frame_size, "crop_to_patches": False},
                "video_processor": {"size": frame_size},
                "processor": {"image_seq_length": (patches_per_side // 2) ** 2},
            }
        ),
    )


# What the `framefusion.families` entry point names.
internvl = InternVL()
