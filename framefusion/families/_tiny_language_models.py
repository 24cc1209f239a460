"""The language models under the tiny checkpoints of several families: Qwen2 (Qwen-VL, LLaVA-OneVision, InternVL)
and Llama (LLaVA-NeXT-Video's Vicuna, SmolVLM's SmolLM2), with the token ids their configs refer to."""

from __future__ import annotations

from framefusion.families.kit import TINY_TEXT_DIMS

# Token ids a Qwen2 language model's config refers to (Qwen has no BOS in prompts; <|endoftext|> pads).
QWEN_TEXT_TOKEN_FIELDS = {
    "text_config.bos_token_id": "<|endoftext|>",
    "text_config.eos_token_id": "<|im_end|>",
    "text_config.pad_token_id": "<|endoftext|>",
}

# Token ids of a Llama language model's config.
LLAMA_TEXT_TOKEN_FIELDS = {
    "text_config.bos_token_id": "<s>",
    "text_config.eos_token_id": "</s>",
    "text_config.pad_token_id": "<unk>",
}

# Plain 1D rotary positions of a Qwen2 language model.
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0}


def tiny_qwen_text_config(num_hidden_layers: int, model_type: str, rope: dict) -> dict:
    return {
        "model_type": model_type,
        "num_hidden_layers": num_hidden_layers,
        **TINY_TEXT_DIMS,
        "rope_parameters": dict(rope),
    }


def tiny_llama_text_config(num_hidden_layers: int) -> dict:
    return {
        "model_type": "llama",
        "num_hidden_layers": num_hidden_layers,
        **TINY_TEXT_DIMS,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
    }
