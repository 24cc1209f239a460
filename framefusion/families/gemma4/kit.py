"""The tiny Gemma 4 checkpoint: the published small models' hybrid layout at toy size.

Kept from E2B/E4B: sliding-window and global attention layers (global layers with wider heads and proportional
partial rotary embeddings), per-layer inputs, KV sharing over the last layers (a storing layer of each type before
them), the double-wide MLP of the KV-reusing layers, the final logit soft-capping, and Gemma 4's vision tower (learned
2-D position table, pooled patches). With 8 layers: global attention at 1, 4 and 7; layers 3 (sliding) and 4 (global)
store keys and values that 5, 6 and 7 reuse, so FrameFusion's steps end before layer 3. The sliding window (48) is
shorter than a prompt about a video, so sliding layers do mask distant tokens.

Frames: 112x112 pixels are 16x16 patches of 7 pixels, pooled 2x2 to 8x8 = 64 tokens per frame (the processor's
smallest budget, 70 soft tokens, as the published models use for video frames).
"""

from __future__ import annotations

from types import MappingProxyType

from framefusion.families.kit import TINY_TEXT_DIMS, FamilyKit

TINY_HEAD_DIM = TINY_TEXT_DIMS["hidden_size"] // TINY_TEXT_DIMS["num_attention_heads"]
TINY_SLIDING_WINDOW = 48
# Layers that are not KV-sharing ones: the rest of the stack reuses keys and values (none below 6 layers).
TINY_OWN_KV_LAYERS = 5
# Bigger than any tiny tokenizer (byte-level BPE of at most 512 entries plus the special tokens), so every id has a
# per-layer input row, while the table stays small.
TINY_PER_LAYER_VOCABULARY = 1024

# The published template reduced to one conversation about media: turns in <|turn>role ... <turn|>, a video as one
# <|video|> that the processor expands to "MM:SS <|image>" + video tokens + "<image|>" per frame.
GEMMA4_CHAT_TEMPLATE = r"""
{%- for message in messages -%}
  {{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- else -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'image' -%}
        {{- '<|image|>' -}}
      {%- elif part['type'] == 'video' -%}
        {{- '<|video|>' -}}
      {%- elif part['type'] == 'text' -%}
        {{- part['text'] -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|turn>model\n' -}}
{%- endif -%}
""".strip()


def tiny_layer_types(num_hidden_layers: int) -> list[str]:
    """Global attention at every third layer from layer 1, and at the last (as transformers requires)."""
    return ["full_attention" if index % 3 == 1 or index == num_hidden_layers - 1 else "sliding_attention"
            for index in range(num_hidden_layers)]


def gemma4_kit() -> FamilyKit:
    from framefusion.families.kit import TINY_FRAME_SIDE

    patch = 7
    pooling = 2  # 16 x 16 patches of a 112-pixel frame pool to 8 x 8 tokens

    def tiny_config(num_hidden_layers: int) -> dict:
        return {
            "model_type": "gemma4",
            "text_config": {
                "model_type": "gemma4_text",
                "num_hidden_layers": num_hidden_layers,
                "layer_types": tiny_layer_types(num_hidden_layers),
                "head_dim": TINY_HEAD_DIM,
                "global_head_dim": 2 * TINY_HEAD_DIM,  # as 512 against 256 in the published models
                **TINY_TEXT_DIMS,
                "tie_word_embeddings": True,
                "sliding_window": TINY_SLIDING_WINDOW,
                "num_kv_shared_layers": max(0, num_hidden_layers - TINY_OWN_KV_LAYERS),
                "use_double_wide_mlp": True,
                "hidden_size_per_layer_input": 8,
                "vocab_size_per_layer_input": TINY_PER_LAYER_VOCABULARY,
                "final_logit_softcapping": 30.0,
            },
            "vision_config": {
                "model_type": "gemma4_vision",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "patch_size": patch,
                "pooling_kernel_size": pooling,
                "position_embedding_size": TINY_FRAME_SIDE // patch * 2,
            },
            "tie_word_embeddings": True,
        }

    geometry = {"patch_size": patch, "pooling_kernel_size": pooling, "max_soft_tokens": 70}
    return FamilyKit(
        name="gemma4",
        model_class="Gemma4ForConditionalGeneration",
        special_tokens=("<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|image|>", "<|image>", "<image|>",
                        "<|audio|>", "<|audio>", "<audio|>", "<|video|>"),
        named_tokens=MappingProxyType({"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                                       "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}),
        eos_token="<eos>",
        pad_token="<pad>",
        token_id_fields=MappingProxyType(
            {
                "image_token_id": "<|image|>",
                "video_token_id": "<|video|>",
                "audio_token_id": "<|audio|>",
                "boi_token_id": "<|image>",
                "eoi_token_id": "<image|>",
                "boa_token_id": "<|audio>",
                "eoa_token_index": "<audio|>",
                "text_config.pad_token_id": "<pad>",
                "text_config.eos_token_id": "<eos>",
                "text_config.bos_token_id": "<bos>",
            }
        ),
        chat_template=GEMMA4_CHAT_TEMPLATE,
        processor_classes=("Gemma4Processor", "Gemma4ImageProcessor", "Gemma4VideoProcessor"),
        feature_extractor_class="Gemma4AudioFeatureExtractor",
        tiny_config=tiny_config,
        tiny_processor=MappingProxyType(
            {
                "image_processor": dict(geometry),
                # Frames already sampled by framefusion keep their count.
                "video_processor": {**geometry, "do_sample_frames": False},
                "processor": {"image_seq_length": 70},
            }
        ),
    )
