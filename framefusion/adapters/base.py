"""What a model family adapter says: where the video tokens are, how a frame is laid out, how its video is encoded.

The runtime (framefusion/runtime.py) does all the hooking; an adapter only answers questions about one family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from framefusion import transformers_compat as compat


@dataclass(frozen=True)
class VideoInputs:
    """What the runtime saw of the video for one forward of the multimodal model.

    video_grid_thw: [num_videos, 3] (Qwen-style grids) when the family has one, captured from the forward's arguments
    or from the last call of the model's `get_video_features` (generate() encodes the video before the forward and
    does not pass the grid on).
    """

    video_grid_thw: torch.Tensor | None = None


class FamilyAdapter:
    """Base class: subclasses set the class attributes and implement `tokens_per_frame`."""

    family: str = ""
    # config.model_type values this adapter handles (detection is by class/config, never by checkpoint name).
    model_types: tuple[str, ...] = ()
    # Similarity threshold S_th used when the caller gives none, and where it comes from.
    default_similarity_lower_bound: float = 0.5
    similarity_source: str = "FrameFusion authors' example"
    # How many of the last queries rate token importance for the prune step (the official adapters: 4 for Qwen-VL).
    importance_queries: int = 1
    # Video tokens that follow the frames and belong to no spatial position (LLaVA-OneVision's newline).
    trailing_tokens_per_video: int = 0
    # Whether text after a video gets wrong rotary positions on transformers 5.x (see framefusion/positions.py).
    needs_reference_positions: bool = False
    # The modality a video's features travel under in generate(): families whose processor writes each frame as an
    # image (pixel_values, no video encoder) are encoded and consumed as "image".
    video_modality: str = "video"
    # Video inputs that still travel with the prompt when the features are pre-encoded: rotary positions are
    # computed from the grid (Qwen-VL families).
    prompt_video_keys: tuple[str, ...] = ("video_grid_thw", "second_per_grid_ts")

    def matches(self, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    def multimodal_model(self, model: nn.Module) -> nn.Module:
        """The module whose forward receives input_ids and the video inputs (e.g. Qwen2VLModel)."""
        return model.model if hasattr(model, "lm_head") else model

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack: a module with `.layers`."""
        return self.multimodal_model(model).language_model

    def video_token_id(self, model: nn.Module) -> int:
        return int(model.config.video_token_id)

    def encode_video(self, model: nn.Module, video_inputs: dict[str, Any]) -> tuple[str, Any | None]:
        """Run the vision encoder once on the processor's video inputs (pixel values and grids, no text).

        Returns (modality, features) for `compat.encoder_outputs_kwargs`; features is None when the model cannot take
        pre-encoded features, and generate() then encodes the video from the pixel inputs itself.
        """
        encoder = compat.vision_encoder(model, self.video_modality)
        if encoder is None:
            return self.video_modality, None
        accepted = compat.accepted_keywords(encoder)
        return self.video_modality, encoder(
            **{key: value for key, value in video_inputs.items() if key in accepted}, return_dict=True
        )

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        """P: spatial positions per frame of the `video_index`-th video, which has `num_tokens` video tokens."""
        raise NotImplementedError

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        """[L] long patch types for one prompt (input_ids [L]), or None when it holds no video token.

        Each maximal run of video tokens is one video; its frames follow each other, P tokens each, then
        `trailing_tokens_per_video` tokens that are not patches. Videos get disjoint type ranges so that a frame is
        never compared with another video's frame.
        """
        is_video = input_ids == self.video_token_id(model)
        if not bool(is_video.any()):
            return None
        patch_types = torch.full_like(input_ids, -1)
        next_type = 0
        for index, (start, end) in enumerate(video_token_runs(is_video)):
            num_patches = end - start - self.trailing_tokens_per_video
            per_frame = self.tokens_per_frame(model, index, end - start, video)
            if per_frame <= 0 or num_patches <= 0 or num_patches % per_frame:
                raise ValueError(
                    f"cannot lay out video {index + 1} of the prompt: {end - start} video tokens do not split into "
                    f"frames of {per_frame} tokens ({self.family}); the prompt and the video inputs do not match"
                )
            patch_types[start : start + num_patches] = (
                torch.arange(num_patches, device=input_ids.device) % per_frame + next_type
            )
            next_type += per_frame
        return patch_types


def video_token_runs(is_video: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in is_video [L] as (start, end) pairs, end exclusive."""
    flags = is_video.to(torch.int8)
    padded = torch.cat([flags.new_zeros(1), flags, flags.new_zeros(1)])
    edges = torch.nonzero(padded[1:] != padded[:-1]).squeeze(-1).tolist()
    return list(zip(edges[0::2], edges[1::2]))
