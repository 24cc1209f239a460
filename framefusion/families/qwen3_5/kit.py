"""The tiny Qwen3.5 checkpoint: Qwen3-VL's tokens, template and processors on a tiny hybrid language model that
keeps the published layout (three Gated DeltaNet layers, then one gated softmax-attention layer, repeated; the last
layer is always full attention) and its partial rotary embedding (interleaved M-RoPE on part of each head)."""

from __future__ import annotations

from dataclasses import replace

from framefusion.families.kit import TINY_TEXT_DIMS, FamilyKit

# The published models make every fourth layer full attention (layer_types, "full_attention_interval": 4).
FULL_ATTENTION_INTERVAL = 4
TINY_HEAD_DIM = TINY_TEXT_DIMS["hidden_size"] // TINY_TEXT_DIMS["num_attention_heads"]


def tiny_layer_types(num_hidden_layers: int) -> list[str]:
    """Linear attention but every fourth layer and the last, which are full attention."""
    return ["full_attention" if (index + 1) % FULL_ATTENTION_INTERVAL == 0 or index == num_hidden_layers - 1
            else "linear_attention" for index in range(num_hidden_layers)]


def qwen3_5_kit() -> FamilyKit:
    from framefusion.families.qwen3_vl import qwen3_vl_kit

    def tiny_config(num_hidden_layers: int) -> dict:
        qwen3_vl_vision = qwen3_vl_kit().tiny_config(num_hidden_layers)["vision_config"]
        # Half of each 16-wide head rotates (the real models: a quarter of 256): 4 frequencies, split into temporal,
        # height and width sections and interleaved as the real [11, 11, 10].
        rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.5,
                "mrope_section": [2, 1, 1], "mrope_interleaved": True}
        return {
            "model_type": "qwen3_5",
            "text_config": {
                "model_type": "qwen3_5_text",
                "num_hidden_layers": num_hidden_layers,
                "layer_types": tiny_layer_types(num_hidden_layers),
                "head_dim": TINY_HEAD_DIM,
                **TINY_TEXT_DIMS,
                "linear_num_key_heads": 2,
                "linear_num_value_heads": 4,
                "linear_key_head_dim": 16,
                "linear_value_head_dim": 16,
                "linear_conv_kernel_dim": 4,
                "rope_parameters": rope,
            },
            # Qwen3-VL's tiny vision tower, without DeepStack (Qwen3.5 has none).
            "vision_config": {key: value for key, value in qwen3_vl_vision.items()
                              if key != "deepstack_visual_indexes"},
        }

    return replace(qwen3_vl_kit(), name="qwen3.5", model_class="Qwen3_5ForConditionalGeneration",
                   tiny_config=tiny_config)
