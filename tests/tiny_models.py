"""Tiny random models built straight from configs, with hand-made video inputs whose frames really repeat.

The runtime tests need control the processor path does not give: any depth, any attention backend, and pixel values
that make some tokens identical from frame to frame (they merge) and others noisy (they stay for pruning).
The processor -> generate path on real video files is covered through the model zoo's checkpoints.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

VOCAB = 300
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 290, 291, 292, 293
TEXT_BEFORE = [1, 17, 23, 40, 41]
TEXT_AFTER = [50, 61, 72, 83, 94, 105]

# The text stack every tiny model here shares (head_dim 16), and Qwen-VL's rotary split of it over (t, h, w).
TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
QWEN_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}


def qwen2_vl(num_layers: int = 8, attn: str = "sdpa", version: str = "2", seed: int = 0,
             tokens_per_second: int = 4) -> torch.nn.Module:
    """A tiny random Qwen2-VL (version "2") or Qwen2.5-VL ("2.5"); tokens_per_second: Qwen2.5-VL's temporal position
    scale (positions per second of video)."""
    torch.manual_seed(seed)
    text = dict(TEXT, num_hidden_layers=num_layers, rope_parameters=copy.deepcopy(QWEN_ROPE))
    vision = dict(depth=1, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_chans=3, in_channels=3)
    tokens = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
                  vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    if version == "2":
        config = Qwen2VLConfig(text_config=text, vision_config=dict(vision, embed_dim=32), **tokens)
        model_class = Qwen2VLForConditionalGeneration
    else:
        vision = dict(vision, intermediate_size=64, out_hidden_size=64, window_size=56, fullatt_block_indexes=[0],
                      tokens_per_second=tokens_per_second)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class = Qwen2_5_VLForConditionalGeneration
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    return model_class(config).eval()


def llava_onevision(num_layers: int = 8, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config=dict(TEXT, model_type="qwen2", num_hidden_layers=num_layers),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=112, patch_size=14,
                           vision_use_head=False),
        image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    return LlavaOnevisionForConditionalGeneration(config).eval()


def _frames_with_static_and_changing_parts(num_frames: int, tiles: int, tile_size: int, seed: int) -> torch.Tensor:
    """[num_frames, tiles, tile_size] values: half the tiles never change, a quarter drift, a quarter are noise."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(tiles, tile_size, generator=generator)
    frames = first.repeat(num_frames, 1, 1)
    drifting = slice(tiles // 2, 3 * tiles // 4)
    noisy = slice(3 * tiles // 4, tiles)
    for frame in range(1, num_frames):
        frames[frame, drifting] = frames[frame - 1, drifting] + 0.3 * torch.randn(
            frames[frame, drifting].shape, generator=generator
        )
        frames[frame, noisy] = torch.randn(frames[frame, noisy].shape, generator=generator)
    return frames


def qwen_video_inputs(grids: list[tuple[int, int, int]], seed: int = 0, between: list[int] | None = None) -> dict:
    """Inputs for Qwen2-VL-style models: text, then each video (vision_start, tokens, vision_end), then text.

    grids: (t, h, w) patch grids of the videos (t temporal groups of 2 frames, h x w patches of 14 px).
    """
    ids: list[int] = list(TEXT_BEFORE)
    pixels = []
    for index, (t, h, w) in enumerate(grids):
        ids += [VISION_START] + [VIDEO_TOKEN] * (t * h * w // 4) + [VISION_END]
        if between and index < len(grids) - 1:
            ids += between
        # Rows are ordered (t, h/2, w/2, 2, 2): one temporal group's rows are contiguous, so repeating a group's rows
        # repeats that frame group's tokens exactly.
        pixels.append(_frames_with_static_and_changing_parts(t, h * w, 3 * 2 * 14 * 14, seed + index).reshape(t * h * w, -1))
    ids += TEXT_AFTER
    input_ids = torch.tensor([ids])
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == VIDEO_TOKEN).int() * 2,
        pixel_values_videos=torch.cat(pixels),
        video_grid_thw=torch.tensor(grids),
    )


def llava_video_inputs(num_frames: int = 8, seed: int = 0) -> dict:
    """Inputs for the tiny LLaVA-OneVision: 112x112 frames -> 8x8 patches -> 4x4 = 16 tokens a frame, + newline."""
    tiles = _frames_with_static_and_changing_parts(num_frames, 16, 3 * 28 * 28, seed)  # 4x4 tiles of 28x28 px
    frames = tiles.reshape(num_frames, 4, 4, 3, 28, 28).permute(0, 3, 1, 4, 2, 5).reshape(num_frames, 3, 112, 112)
    ids = TEXT_BEFORE + [VIDEO_TOKEN] * (num_frames * 16 + 1) + TEXT_AFTER
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=frames[None])


def text_only_inputs() -> dict:
    input_ids = torch.tensor([TEXT_BEFORE + TEXT_AFTER])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))


FAMILIES = {
    "qwen2-vl": (lambda **kw: qwen2_vl(version="2", **kw), lambda: qwen_video_inputs([(8, 8, 8)])),
    "qwen2.5-vl": (lambda **kw: qwen2_vl(version="2.5", **kw), lambda: qwen_video_inputs([(8, 8, 8)])),
    "llava-onevision": (llava_onevision, lambda: llava_video_inputs(8)),
}
