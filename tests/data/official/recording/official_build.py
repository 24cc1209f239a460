"""Build the tiny 28-layer Qwen2-VL checkpoint and hand-made inputs, in the transformers 4.51.3 venv.

Run: <venv with transformers 4.51.3>/bin/python official_build.py OUT_DIR [init_range=0.02] [seed=0] [lm_head_scale=10]
The recorded checkpoint is `official_build.py tests/data/official/tiny-qwen2-vl-28 0.02 0 10`.
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

assert transformers.__version__ == "4.51.3", transformers.__version__

OUT = Path(sys.argv[1])
INIT_RANGE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 0

VOCAB = 320
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, EOS = 300, 301, 302, 303, 304
PATCH, MERGE, TEMPORAL = 14, 2, 2
LM_HEAD_SCALE = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0


def build_model() -> Qwen2VLForConditionalGeneration:
    config = Qwen2VLConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=48,
        num_hidden_layers=28,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        initializer_range=INIT_RANGE,
        tie_word_embeddings=False,
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "in_channels": 3,
            "initializer_range": INIT_RANGE,
        },
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        attn_implementation="sdpa",
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Wider logit gaps so that greedy decoding is decided by a safe margin; lm_head takes no part in FrameFusion.
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    return model


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    # No end-of-sequence token: greedy decoding always runs the requested number of steps on both sides.
    model.generation_config.eos_token_id = None
    # The vision placeholders are never a sensible output; suppressing them keeps decoding on text tokens.
    model.generation_config.suppress_tokens = [IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END]
    model.save_pretrained(OUT, safe_serialization=True)
    print("params", sum(p.numel() for p in model.parameters()))
    print(sorted(p.name for p in OUT.iterdir()), sum(p.stat().st_size for p in OUT.iterdir()))
