"""Qwen3-VL: one frame is one temporal patch (2 video frames) of (h/merge) x (w/merge) tokens, and the processor
writes each frame group as its own block, "<t seconds><|vision_start|> tokens <|vision_end|>".

So one video is many runs of video tokens with timestamp text between them: the patch types run on across those
separators, and a token is compared with the same spatial position of the previous frame group.

DeepStack: the text model adds visual features to the outputs of its first decoder layers at the visual positions
(`_deepstack_process`). `install` replaces that method: before any reduction it calls the original (so cost 1.0
stays bit-identical); after one, every token still present gets the features of the positions it stands for,
averaged exactly as its hidden state was (the runtime's MergedRows); a pruned token's features are dropped.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable

from framefusion.families.base import Family, VideoInputs
from framefusion.families.qwen_vl import memory

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from torch import nn

    from framefusion.families.kit import FamilyKit
    from framefusion.runtime.hooks import FrameFusionRuntime


class Qwen3VL(Family):
    name = "qwen3-vl"
    model_types = ("qwen3_vl",)
    rank = 40
    default_similarity_lower_bound = 0.5
    fastvid_variant = "segmentwise"
    similarity_source = "FrameFusion authors' Qwen2-VL example (same family)"
    importance_queries = 4  # as the official Qwen2-VL adapter, for every Qwen-VL family
    # The processor pairs frames into temporal patches (and repeats the last frame of an odd count), as Qwen2-VL's.
    frame_multiple = 2
    aliases = MappingProxyType(
        {
            "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
            "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
            "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
        }
    )

    def packed_tower(self, model: nn.Module) -> nn.Module | None:
        return self.multimodal_model(model).visual

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        grid = self._grid(video, video_index)
        merge = model.config.vision_config.spatial_merge_size
        return (int(grid[1]) // merge) * (int(grid[2]) // merge)

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        """[L] patch types: the i-th video owns the next t * P video tokens (wherever the separators fall)."""
        import torch

        video_positions = torch.nonzero(input_ids == self.video_token_id(model)).squeeze(-1)
        if video_positions.numel() == 0:
            return None
        grids = video.video_grid_thw
        if grids is None:
            self._grid(video, 0)  # raises the explanation
        patch_types = torch.full_like(input_ids, -1)
        used = next_type = 0
        for index in range(len(grids)):
            frames = int(grids[index][0])
            per_frame = self.tokens_per_frame(model, index, 0, video)
            owned = video_positions[used : used + frames * per_frame]
            if owned.numel() != frames * per_frame:
                break
            patch_types[owned] = torch.arange(owned.numel(), device=input_ids.device) % per_frame + next_type
            used += owned.numel()
            next_type += per_frame
        if used != video_positions.numel():
            raise ValueError(
                f"the prompt holds {video_positions.numel()} video tokens but the video grids {grids.tolist()} give "
                f"{used if used < video_positions.numel() else 'more'}: the prompt and the video inputs do not match"
            )
        return patch_types

    @staticmethod
    def _grid(video: VideoInputs, video_index: int) -> torch.Tensor:
        grids = video.video_grid_thw
        if grids is None or video_index >= len(grids):
            raise ValueError(
                f"the prompt holds video tokens but the video's grid (video_grid_thw) is unknown for video "
                f"{video_index + 1}: pass pixel_values_videos with video_grid_thw, or call generate()/the model with them"
            )
        return grids[video_index]

    def frame_inputs(self, video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
        from framefusion.families.qwen_vl.frames import temporal_patch_inputs

        return temporal_patch_inputs(video_inputs, units, num_units)

    def spread_frame_features(self, features: Any, take: Sequence[int], num_encoded: int) -> Any:
        from framefusion.families.qwen_vl.frames import spread_temporal_patch_features

        return spread_temporal_patch_features(features, take, num_encoded)

    def install(self, runtime: FrameFusionRuntime) -> None:
        """Replace the text model's DeepStack addition with one that follows the tokens still present."""
        from framefusion.runtime import transformers_compat as compat

        original = getattr(runtime.language_model, compat.DEEPSTACK_METHOD, None)
        if original is None:
            return
        runtime.track_merged_rows = True
        runtime.replace_attribute(runtime.language_model, compat.DEEPSTACK_METHOD,
                                  _deepstack_for_present_tokens(runtime, original))

    def tiny_kit(self) -> FamilyKit:
        return qwen3_vl_kit()

    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int:
        return memory.tokens_per_frame(config, processor, frame_size)

    def vision_parameters(self, vision: Mapping[str, Any], text_hidden: int) -> int:
        return memory.vision_parameters(vision, text_hidden)


def _deepstack_for_present_tokens(runtime: FrameFusionRuntime, original: Callable) -> Callable:
    """DeepStack adds one visual row per visual position; after a reduction, add to each token still present the
    rows of the positions it stands for, averaged as its hidden state was (see runtime.MergedRows)."""

    def deepstack_process(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                          visual_embeds: torch.Tensor) -> torch.Tensor:
        state = runtime.prefill
        if state is None or state.merged_rows is None or state.length == state.original_length:
            return original(hidden_states, visual_pos_masks, visual_embeds)
        rows = visual_embeds.to(hidden_states.device, hidden_states.dtype)
        addition = state.merged_rows.combine(state.length, visual_pos_masks[0].to(hidden_states.device), rows)
        return hidden_states + addition.unsqueeze(0)

    return deepstack_process


def qwen3_vl_kit() -> FamilyKit:
    """Qwen3-VL: Qwen3 language model (q/k norms, interleaved M-RoPE) and DeepStack visual features."""
    from framefusion.families._templates import QWEN_CHAT_TEMPLATE
    from framefusion.families.qwen_vl.kits import qwen_vl_kit
    from framefusion.families.kit import TINY_FRAME_SIDE, TINY_PATCH_SIZE, TINY_TEXT_DIMS

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

    kit = qwen_vl_kit("qwen3-vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", tiny_config)
    size = {"shortest_edge": 56 * 56, "longest_edge": TINY_FRAME_SIDE * TINY_FRAME_SIDE * 64}
    geometry = {"patch_size": TINY_PATCH_SIZE, "merge_size": 2, "temporal_patch_size": 2}
    return replace(
        kit,
        # The template emits a bare <|video_pad|>; the processor expands it to one
        # "<t seconds><|vision_start|><|video_pad|>...<|vision_end|>" block per temporal group.
        chat_template=QWEN_CHAT_TEMPLATE.replace("'<|vision_start|><|video_pad|><|vision_end|>'", "'<|video_pad|>'"),
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


# What the `framefusion.families` entry point names.
qwen3_vl = Qwen3VL()
