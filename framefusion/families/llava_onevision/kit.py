"""The tiny LLaVA-OneVision checkpoint (SigLIP + Qwen2); the same class loads the LLaVA-Video-*-Qwen2-hf conversions."""

from __future__ import annotations

from types import MappingProxyType

from framefusion.families._templates import LLAVA_QWEN_CHAT_TEMPLATE
from framefusion.families._tiny_language_models import QWEN_ROPE, QWEN_TEXT_TOKEN_FIELDS, tiny_qwen_text_config
from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, FamilyKit


def llava_onevision_kit() -> FamilyKit:
    # anyres tiles of the tiny 112-pixel image size (the real model uses multiples of 384).
    grid_pinpoints = [[112, 112], [112, 224], [224, 112], [224, 224]]
    siglip_mean_std = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "llava_onevision",
            "text_config": tiny_qwen_text_config(num_hidden_layers, "qwen2", QWEN_ROPE),
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": TINY_FRAME_SIDE,
                "patch_size": TINY_PATCH_SIZE,
                "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6,
                "vision_use_head": False,
            },
            "vision_feature_select_strategy": "full",
            "vision_feature_layer": -1,
            "vision_aspect_ratio": "anyres_max_9",
            "image_grid_pinpoints": grid_pinpoints,
            "projector_hidden_act": "gelu",
        }

    return FamilyKit(
        name="llava-onevision",
        model_class="LlavaOnevisionForConditionalGeneration",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        named_tokens=MappingProxyType({"image_token": "<image>", "video_token": "<video>"}),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        token_id_fields=MappingProxyType(
            {"image_token_index": "<image>", "video_token_index": "<video>", **QWEN_TEXT_TOKEN_FIELDS}
        ),
        chat_template=LLAVA_QWEN_CHAT_TEMPLATE,
        processor_classes=(
            "LlavaOnevisionProcessor",
            "LlavaOnevisionImageProcessor",
            "LlavaOnevisionVideoProcessor",
        ),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(
            {
                "image_processor": {"size": frame_size, "image_grid_pinpoints": grid_pinpoints, **siglip_mean_std},
                "video_processor": {"size": frame_size, **siglip_mean_std},
                "processor": {
                    "num_image_tokens": patches_per_side * patches_per_side,
                    "vision_feature_select_strategy": "full",
                    "vision_aspect_ratio": "anyres_max_9",
                },
            }
        ),
    )
