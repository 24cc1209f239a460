"""The model families this package can build from nothing: one `FamilyKit` per family.

A kit says what a family's checkpoint is made of, as data: its special tokens, which config fields
hold which token's id, its chat template, its transformers processor classes, and the config and
processor settings of a tiny version (hidden size 64, 112x112 frames). Real-shape models
(shapes/*.json) reuse the same kit with the published config instead of the tiny one.

Adding a family is one function returning a `FamilyKit` plus one line in `FAMILY_KITS`. Nothing here
imports transformers: parsing a model name must stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from framefusion.errors import InputError

# Frames are resized to at most this many pixels per side-squared in tiny models, so a 112x112 frame
# is 8x8 patches of 14 pixels and tests stay fast whatever the video's resolution.
TINY_FRAME_SIDE = 112
TINY_PATCH_SIZE = 14

# The language model of every tiny checkpoint: small but with grouped-query attention like the real ones.
TINY_TEXT_DIMS = MappingProxyType(
    {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    }
)

@dataclass(frozen=True)
class FamilyKit:
    """What it takes to build a checkpoint of one model family with random weights.

    `token_id_fields` maps a config key (dotted for sub-configs, e.g. "text_config.eos_token_id") to the
    token whose tokenizer id it must hold; the builder writes the ids so config and tokenizer agree.
    `processor_classes` names the transformers classes (processor, image processor, video processor).
    `tiny_config(num_hidden_layers)` returns a config.json dict without vocab size or token ids.
    `tiny_processor` holds keyword arguments per processor part: {"image_processor": {...},
    "video_processor": {...}, "processor": {...}}.
    """

    name: str
    model_class: str
    special_tokens: tuple[str, ...]
    named_tokens: Mapping[str, str]
    eos_token: str
    pad_token: str
    token_id_fields: Mapping[str, str]
    chat_template: str
    processor_classes: tuple[str, str, str]
    tiny_config: Callable[[int], dict]
    tiny_processor: Mapping[str, Mapping]


# Close to Qwen's own template: default system prompt, <|vision_start|><|video_pad|><|vision_end|> per
# video where the user put it; the processor expands the single <|video_pad|> to one per video token.
QWEN_CHAT_TEMPLATE = r"""
{%- set default_system = 'You are a helpful assistant.' -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- else -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'image' -%}
        {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
      {%- elif part['type'] == 'video' -%}
        {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
      {%- elif part['type'] == 'text' -%}
        {{- part['text'] -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

# LLaVA-OneVision's Qwen2 conversation format: images, then videos, each on its own line, then the text.
LLAVA_QWEN_CHAT_TEMPLATE = r"""
{%- set default_system = 'You are a helpful assistant.' -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- else -%}
    {%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {%- for part in message['content'] if part['type'] == 'video' -%}{{- '<video>\n' -}}{%- endfor -%}
    {%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

# Token ids a Qwen2 language model's config refers to (Qwen has no BOS in prompts; <|endoftext|> pads).
QWEN_TEXT_TOKEN_FIELDS = {
    "text_config.bos_token_id": "<|endoftext|>",
    "text_config.eos_token_id": "<|im_end|>",
    "text_config.pad_token_id": "<|endoftext|>",
}


def _tiny_qwen_text_config(num_hidden_layers: int, model_type: str, rope: dict) -> dict:
    return {"model_type": model_type, "num_hidden_layers": num_hidden_layers, **TINY_TEXT_DIMS, "rope_parameters": rope}


def _tiny_qwen_processor() -> dict:
    """Pixel limits that keep a 112x112 frame at 112x112 (8x8 patches, 16 tokens per 2-frame group)
    and shrink any larger frame to at most that many pixels."""
    size = {"shortest_edge": 56 * 56, "longest_edge": TINY_FRAME_SIDE * TINY_FRAME_SIDE}
    return {
        "image_processor": {"size": size},
        # cap_pixels_per_frame=True is the reference (qwen-vl-utils) behaviour; saying so also silences
        # transformers' warning about the default changing.
        "video_processor": {"size": size, "cap_pixels_per_frame": True},
    }


# Qwen's M-RoPE splits each head's rotary half-dimension into temporal, height and width sections;
# tiny heads are 16 wide, so 8 = 2 + 3 + 3 (the real 128-wide heads use 16 + 24 + 24).
TINY_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}


def _qwen_vl_kit(name: str, model_class: str, processor_class: str, tiny_config: Callable[[int], dict]) -> FamilyKit:
    """Qwen2-VL and Qwen2.5-VL share tokens, template and image/video processors."""
    return FamilyKit(
        name=name,
        model_class=model_class,
        special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        named_tokens=MappingProxyType({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        token_id_fields=MappingProxyType(
            {
                "image_token_id": "<|image_pad|>",
                "video_token_id": "<|video_pad|>",
                "vision_start_token_id": "<|vision_start|>",
                "vision_end_token_id": "<|vision_end|>",
                **QWEN_TEXT_TOKEN_FIELDS,
            }
        ),
        chat_template=QWEN_CHAT_TEMPLATE,
        processor_classes=(processor_class, "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(_tiny_qwen_processor()),
    )


def qwen2_vl_kit() -> FamilyKit:
    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "qwen2_vl",
            "text_config": _tiny_qwen_text_config(num_hidden_layers, "qwen2_vl_text", TINY_QWEN_ROPE),
            "vision_config": {
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": TINY_TEXT_DIMS["hidden_size"],  # the merger projects into the LLM width
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": TINY_PATCH_SIZE,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        }

    return _qwen_vl_kit("qwen2-vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", tiny_config)


def qwen2_5_vl_kit() -> FamilyKit:
    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "qwen2_5_vl",
            "text_config": _tiny_qwen_text_config(num_hidden_layers, "qwen2_5_vl_text", TINY_QWEN_ROPE),
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "out_hidden_size": TINY_TEXT_DIMS["hidden_size"],
                "num_heads": 2,
                "patch_size": TINY_PATCH_SIZE,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": TINY_FRAME_SIDE,
                "fullatt_block_indexes": [1],  # like the real model: windowed blocks, then a full one
                "tokens_per_second": 2,
            },
        }

    return _qwen_vl_kit("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", tiny_config)


def llava_onevision_kit() -> FamilyKit:
    """LLaVA-OneVision (SigLIP + Qwen2); the same class loads the LLaVA-Video-*-Qwen2-hf conversions."""
    # anyres tiles of the tiny 112-pixel image size (the real model uses multiples of 384).
    grid_pinpoints = [[112, 112], [112, 224], [224, 112], [224, 224]]
    siglip_mean_std = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "llava_onevision",
            "text_config": _tiny_qwen_text_config(
                num_hidden_layers, "qwen2", {"rope_type": "default", "rope_theta": 1_000_000.0}
            ),
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


# Qwen3-VL: the template emits a bare <|video_pad|>; the processor expands it to one
# "<t seconds><|vision_start|><|video_pad|>...<|vision_end|>" block per temporal group.
QWEN3_VL_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "'<|vision_start|><|video_pad|><|vision_end|>'", "'<|video_pad|>'"
)

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

# InternVL (Qwen2 chat format): an image is <IMG_CONTEXT>, a video <video>, each on its own line before the text;
# the processor expands a video to "Frame1: <img><IMG_CONTEXT>...</img>\nFrame2: ...".
INTERNVL_CHAT_TEMPLATE = LLAVA_QWEN_CHAT_TEMPLATE.replace("'<image>\\n'", "'<IMG_CONTEXT>\\n'")

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

# Token ids of a Llama language model's config (LLaVA-NeXT-Video's Vicuna, SmolVLM's SmolLM2).
LLAMA_TEXT_TOKEN_FIELDS = {
    "text_config.bos_token_id": "<s>",
    "text_config.eos_token_id": "</s>",
    "text_config.pad_token_id": "<unk>",
}


def _tiny_llama_text_config(num_hidden_layers: int) -> dict:
    return {
        "model_type": "llama",
        "num_hidden_layers": num_hidden_layers,
        **TINY_TEXT_DIMS,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
    }


def qwen3_vl_kit() -> FamilyKit:
    """Qwen3-VL: Qwen3 language model (q/k norms, interleaved M-RoPE) and DeepStack visual features."""

    def tiny_config(num_hidden_layers: int) -> dict:
        rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        return {
            "model_type": "qwen3_vl",
            "text_config": {
                "model_type": "qwen3_vl_text",
                "num_hidden_layers": num_hidden_layers,
                "head_dim": TINY_TEXT_DIMS["hidden_size"] // TINY_TEXT_DIMS["num_attention_heads"],
                **TINY_TEXT_DIMS,
                "rope_parameters": rope,
            },
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": TINY_TEXT_DIMS["hidden_size"],
                "patch_size": TINY_PATCH_SIZE,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "num_position_embeddings": 64,  # an 8x8 grid, interpolated to each frame's size
                "deepstack_visual_indexes": [0, 1],  # DeepStack adds to the first two decoder layers
            },
        }

    kit = _qwen_vl_kit("qwen3-vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", tiny_config)
    size = {"shortest_edge": 56 * 56, "longest_edge": TINY_FRAME_SIDE * TINY_FRAME_SIDE * 64}
    geometry = {"patch_size": TINY_PATCH_SIZE, "merge_size": 2, "temporal_patch_size": 2}
    return replace(
        kit,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
        processor_classes=("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLVideoProcessor"),
        tiny_processor=MappingProxyType(
            {
                "image_processor": {"size": size, **geometry},
                # Frames already sampled by framefusion keep their count; 112x112 stays 112x112 (factor 28).
                "video_processor": {"size": size, "do_sample_frames": False, "max_video_tokens": 16 * 64,
                                    "min_video_tokens": 4, "cap_pixels_per_frame": True, **geometry},
            }
        ),
    )


def llava_next_video_kit() -> FamilyKit:
    """LLaVA-NeXT-Video (CLIP + Llama/Vicuna): frames average-pooled 2x2 to (side/2)^2 tokens, no separators."""
    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    grid_pinpoints = [[112, 112], [112, 224], [224, 112], [224, 224]]

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "llava_next_video",
            "text_config": _tiny_llama_text_config(num_hidden_layers),
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


def internvl_kit() -> FamilyKit:
    """InternVL (HF-native; InternViT + Qwen2): every frame is an image of 16 tokens after pixel shuffle."""
    frame_size = {"height": TINY_FRAME_SIDE, "width": TINY_FRAME_SIDE}
    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "internvl",
            "text_config": _tiny_qwen_text_config(
                num_hidden_layers, "qwen2", {"rope_type": "default", "rope_theta": 1_000_000.0}
            ),
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
        chat_template=INTERNVL_CHAT_TEMPLATE,
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


def smolvlm_kit() -> FamilyKit:
    """SmolVLM / SmolVLM2 (SigLIP + SmolLM2): every frame is one 16-token image after pixel shuffle."""
    patches_per_side = TINY_FRAME_SIDE // TINY_PATCH_SIZE
    side = {"longest_edge": TINY_FRAME_SIDE}

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "smolvlm",
            "text_config": _tiny_llama_text_config(num_hidden_layers),
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


FAMILY_KITS: Mapping[str, Callable[[], FamilyKit]] = MappingProxyType(
    {
        "qwen2-vl": qwen2_vl_kit,
        "qwen2.5-vl": qwen2_5_vl_kit,
        "llava-onevision": llava_onevision_kit,
        "qwen3-vl": qwen3_vl_kit,
        "llava-next-video": llava_next_video_kit,
        "internvl": internvl_kit,
        "smolvlm": smolvlm_kit,
    }
)

TINY_FAMILIES: tuple[str, ...] = tuple(FAMILY_KITS)


def family_kit(name: str) -> FamilyKit:
    """The kit of family `name` (e.g. "qwen2-vl"); InputError listing the known families otherwise."""
    try:
        return FAMILY_KITS[name]()
    except KeyError:
        raise InputError(f"unknown model family {name!r}: use one of {', '.join(TINY_FAMILIES)}") from None
