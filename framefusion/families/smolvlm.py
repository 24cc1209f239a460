"""SmolVLM / SmolVLM2 (`smolvlm` classes): the processor writes a video as an intro line, then per frame
"\nFrame from MM:SS:<fake_token_around_image><global-img> P x <image> <fake_token_around_image>",
P = (image_size / patch_size)^2 / scale_factor^2.

Frames are image tokens; a video is found as consecutive runs of exactly P of them with a frame label between
(see frames_as_images.py). Tiles of a split image are separated by two or three marker tokens only, and stay type -1.
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

# SmolVLM2's own format; its processor substitutes its video template whenever a video is present.
SMOLVLM_CHAT_TEMPLATE = r"""
<|im_start|>
{%- for message in messages -%}
  {{- message['role'] | capitalize -}}
  {%- if message['content'] is string -%}{{- ': ' + message['content'] -}}
  {%- else -%}
    {%- if message['content'][0]['type'] == 'image' -%}{{- ':' -}}{%- else -%}{{- ': ' -}}{%- endif -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}{{- part['text'] -}}
      {%- elif part['type'] == 'image' -%}{{- '<image>' -}}
      {%- elif part['type'] == 'video' -%}{{- '<video>' -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<end_of_utterance>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}
""".strip()


class SmolVLM(FramesAsImagesFamily):
    name = "smolvlm"
    model_types = ("smolvlm",)
    rank = 70
    default_similarity_lower_bound = 0.5
    similarity_source = "none published for SmolVLM: the authors' default of 0.5"
    importance_queries = 1
    # Between frames: <fake_token_around_image>, "\nFrame from MM:SS:" (several tokens), <fake_token_around_image>,
    # <global-img>. Between tiles of one image: <fake_token_around_image><row_i_col_j>, after a newline at most.
    min_frame_gap = 6
    pixel_frame_dim = 1  # pixel_values [1, T, 3, H, W]
    # Its SigLIP tower encodes a video's frames as a batch of images, one image a frame.
    merges_frames_in_tower = True
    aliases = MappingProxyType({"smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct"})

    def language_model(self, model: nn.Module) -> nn.Module:
        return self.multimodal_model(model).text_model  # SmolVLM names its decoder stack text_model

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches_per_side = vision.image_size // vision.patch_size
        return (patches_per_side // model.config.scale_factor) ** 2

    def batch_tower(self, model: nn.Module) -> TowerParts | None:
        from framefusion.runtime.vision_merge import batch_tower_parts

        connector = self.multimodal_model(model).connector

        def pool_scores(scores: torch.Tensor) -> torch.Tensor:
            # The connector's own pixel shuffle gathers each token's patches: the token's score is their mean.
            return connector.pixel_shuffle(scores[..., None], connector.scale_factor).mean(dim=-1).float()

        # The features are the tower's last layer output (after its post_layernorm): every layer can merge frames.
        return batch_tower_parts(self.multimodal_model(model).vision_model, -1, pool_scores)

    def tiny_kit(self) -> FamilyKit:
        return smolvlm_kit()


def smolvlm_kit() -> FamilyKit:
    """SmolVLM / SmolVLM2 (SigLIP + SmolLM2): every frame is one 16-token image after pixel shuffle."""
    from framefusion.families._tiny_language_models import tiny_llama_text_config
    from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, FamilyKit

    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE
    side = {"longest_edge": TINY_FRAME_SIDE}

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "smolvlm",
            "text_config": tiny_llama_text_config(num_hidden_layers),
            "vision_config": {
                "model_type": "smolvlm_vision",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": TINY_FRAME_SIDE,
                "patch_size": TINY_PATCH_SIZE,
            },
            "scale_factor": 2,
        }

    return FamilyKit(
        name="smolvlm",
        model_class="SmolVLMForConditionalGeneration",
        special_tokens=(
            "<unk>", "<s>", "</s>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
            "<global-img>", "<image>", "<video>",
        ),
        named_tokens=MappingProxyType(
            {
                "image_token": "<image>",
                "video_token": "<video>",
                "fake_image_token": "<fake_token_around_image>",
                "global_image_token": "<global-img>",
                "end_of_utterance_token": "<end_of_utterance>",
            }
        ),
        eos_token="<end_of_utterance>",
        pad_token="<unk>",
        token_id_fields=MappingProxyType(
            {
                "image_token_id": "<image>",
                "text_config.bos_token_id": "<s>",
                "text_config.eos_token_id": "<end_of_utterance>",
                "text_config.pad_token_id": "<unk>",
            }
        ),
        chat_template=SMOLVLM_CHAT_TEMPLATE,
        processor_classes=("SmolVLMProcessor", "SmolVLMImageProcessor", "SmolVLMVideoProcessor"),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(
            {
                "image_processor": {"size": side, "max_image_size": side, "do_image_splitting": False},
                "video_processor": {"size": side, "max_image_size": side},
                "processor": {"image_seq_len": (patches_per_side // 2) ** 2},
            }
        ),
    )


# What the `framefusion.families` entry point names.
smolvlm = SmolVLM()
