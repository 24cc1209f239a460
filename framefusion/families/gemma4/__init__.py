"""Gemma 4 (E2B, E4B, 26B-A4B, 31B): each frame is its own image-like block, on a hybrid language model.

Video layout (Gemma4Processor.replace_video_token): per frame "MM:SS <|image>" then the frame's video tokens then
"<image|>", frames joined by spaces. So a video is several runs of video tokens, one per frame, all of the same
length P (every frame is resized alike: the processor keeps the aspect ratio within a budget of soft tokens, 70 per
frame by default) with a short timestamp label between them. Each frame is encoded on its own (frame multiple 1).

The language model (docs/adding-a-model.md, "Gemma 4"): sliding-window and global attention layers, per-layer inputs
added in every layer, and on E2B/E4B the last layers reuse keys and values stored by an earlier layer of their type.
The family gives the runtime its own anatomy (layers.py): the per-layer inputs follow the kept tokens, only global
layers rate tokens for the prune step, and no step changes the sequence from the first layer that stores or reuses
shared keys and values on. While decoding after a reduced prefill, every layer that lost tokens gets a mask built
from its keys' original positions (decoding.py), so a sliding layer sees the window the model intends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framefusion.families.base import Family, VideoInputs, video_token_runs
from framefusion.families.gemma4 import memory

if TYPE_CHECKING:
    import torch
    from torch import nn

    from framefusion.families.kit import FamilyKit
    from framefusion.runtime.hooks import FrameFusionRuntime

# Longest label between two frames of one video, in tokens ("<image|> 00:01 <|image>" is a handful).
MAX_FRAME_GAP = 32


class Gemma4(Family):
    name = "gemma4"
    model_types = ("gemma4",)
    rank = 48
    default_similarity_lower_bound = 0.5
    similarity_source = "FrameFusion's default (none published for Gemma 4)"
    # Nothing of the video travels with the prompt once its features are encoded: positions are plain 1-D ones.
    prompt_video_keys = ()
    aliases = MappingProxyType(
        {
            "gemma-4-e2b": "google/gemma-4-E2B-it",
            "gemma-4-e4b": "google/gemma-4-E4B-it",
            "gemma-4-26b-a4b": "google/gemma-4-26B-A4B-it",
            "gemma-4-31b": "google/gemma-4-31B-it",
        }
    )
    shape_names = ("gemma-4-e2b", "gemma-4-e4b")

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        """Every run of video tokens is one frame (the processor frames each with its own markers)."""
        return num_tokens

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        """[L] patch types: consecutive frame runs of equal length, at most MAX_FRAME_GAP tokens apart, are one video.

        Limitation: two videos of the same frame size separated by a short text read as one video.
        """
        import torch

        runs = video_token_runs(input_ids == self.video_token_id(model))
        if not runs:
            return None
        patch_types = torch.full_like(input_ids, -1)
        next_type = previous_end = 0
        per_frame = None
        for start, end in runs:
            if per_frame is not None and (end - start != per_frame or start - previous_end > MAX_FRAME_GAP):
                next_type += per_frame  # a new video
            per_frame, previous_end = end - start, end
            patch_types[start:end] = torch.arange(per_frame, device=input_ids.device) + next_type
        return patch_types

    def frame_inputs(self, video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
        """The frames listed: pixel_values_videos and video_position_ids hold them along dimension 0 ([T, patches, ...],
        transformers 5.25) or 1 ([videos, T, patches, ...], 5.18); num_frames_per_video follows."""
        import torch

        from framefusion.families.frame_features import FrameAxis, select_unit_inputs

        axis = FrameAxis(dim=video_inputs["pixel_values_videos"].dim() - 3)
        selected = select_unit_inputs(video_inputs, {"pixel_values_videos": axis, "video_position_ids": axis},
                                      units, num_units)
        counts = selected.get("num_frames_per_video")
        if isinstance(counts, torch.Tensor):
            selected["num_frames_per_video"] = torch.full_like(counts, len(units))
        elif counts is not None:
            selected["num_frames_per_video"] = [len(units)]
        return selected

    def spread_frame_features(self, features: Any, take: Sequence[int], num_encoded: int) -> Any:
        """pooler_output: per video [T * P, d]; last_hidden_state [T * P, d_vision]; hidden_states [T, patches, d]."""
        from framefusion.families.frame_features import FrameAxis, spread_output

        per_frame = FrameAxis(dim=0)
        layout = dict.fromkeys(("pooler_output", "last_hidden_state", "hidden_states"), per_frame)
        return spread_output(features, take, num_encoded, layout)

    def install(self, runtime: FrameFusionRuntime) -> None:
        """Gemma 4's layer anatomy, and positional masks for decoding after a reduced prefill."""
        from framefusion.families.gemma4.decoding import install_decoding_masks
        from framefusion.families.gemma4.layers import Gemma4Layers

        runtime.anatomy = Gemma4Layers(runtime.layers, self.language_model(runtime.model).config)
        install_decoding_masks(runtime, runtime.anatomy)

    def tiny_kit(self) -> FamilyKit:
        from framefusion.families.gemma4.kit import gemma4_kit

        return gemma4_kit()

    # --- memory figures ---------------------------------------------------------------------------------------
    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int:
        return memory.tokens_per_frame(processor, frame_size)

    def vision_parameters(self, vision: Mapping[str, Any], text_hidden: int) -> int:
        return memory.vision_parameters(vision, text_hidden)

    def language_parameters(self, text: Mapping[str, Any]) -> int:
        return memory.decoder_parameters(text)

    def cache_layers(self, text: Mapping[str, Any]) -> int:
        return memory.cache_layers(text)


# What the `framefusion.families` entry point names.
gemma4 = Gemma4()
