"""What a model family says about itself: where its video tokens are, how a frame is laid out, how its video is
encoded, its published checkpoints, its tiny checkpoint recipe, its memory figures and its position rules.

The runtime (framefusion/runtime/hooks.py) does all the hooking and the model zoo does all the building; a `Family` only
answers questions about one family. Every family lives in its own module or package under framefusion/families/
and is registered through the `framefusion.families` entry-point group (see framefusion/families/__init__.py).

Nothing here imports torch or transformers at import time: listing families and parsing model names stay cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.abc import Traversable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framefusion.runtime.video_inputs import VideoInputs
from framefusion.families.config_numbers import mlp_projector_parameters, positive_int, vision_tower_parameters

if TYPE_CHECKING:
    import torch
    from torch import nn

    from framefusion.families.kit import FamilyKit
    from framefusion.runtime.hooks import FrameFusionRuntime
    from framefusion.runtime.vision_merge import TowerParts


class Family:
    """Base class: subclasses set the class attributes and implement `tokens_per_frame`.

    Used as is (`Family()`), it describes a model FrameFusion knows nothing about: the default video encoding, the
    generic memory figures, no position rules.
    """

    # The name users see ("qwen3-vl"), also the `random:tiny-<name>` model and the entry-point name.
    name: str = ""
    # config.model_type values this family handles (detection is by class/config, never by checkpoint name).
    model_types: tuple[str, ...] = ()
    # Where the family comes in listings and detection among the built-in families (lower first). Entry points carry
    # no order of their own (setuptools sorts them by name); third-party families follow the built-ins, by name.
    rank: int = 1000
    # Similarity threshold S_th used when the caller gives none, and where it comes from.
    default_similarity_lower_bound: float = 0.5
    similarity_source: str = "FrameFusion authors' example"
    # How many of the last queries rate token importance for the prune step (the official adapters: 4 for Qwen-VL).
    importance_queries: int = 1
    # Video tokens that follow the frames and belong to no spatial position (LLaVA-OneVision's newline).
    trailing_tokens_per_video: int = 0
    # Frames must be a multiple of this (2 where the processor pairs frames into temporal patches and would repeat
    # the last frame of an odd count).
    frame_multiple: int = 1
    # The modality a video's features travel under in generate(): families whose processor writes each frame as an
    # image (pixel_values, no video encoder) are encoded and consumed as "image".
    video_modality: str = "video"
    # Video inputs that still travel with the prompt when the features are pre-encoded: rotary positions are
    # computed from the grid (Qwen-VL families).
    prompt_video_keys: tuple[str, ...] = ("video_grid_thw", "second_per_grid_ts")
    # Short names of published checkpoints: alias -> hub id (each checked on the hub).
    aliases: Mapping[str, str] = MappingProxyType({})
    # The alias `framefusion` uses when no model is named; exactly one built-in family sets it.
    default_alias: str | None = None
    # The real shape `framefusion bench` measures when no model is named; exactly one built-in family sets it.
    default_benchmark_shape: str | None = None
    # Real shapes of published models (shapes/<name>.json in the family's own package; see shape_files()).
    shape_names: tuple[str, ...] = ()
    # True for a family that is registered only to refuse its models with the reason (see refuse()).
    refuses: bool = False
    # The FastVID implementation measured on this family's models ("parallel": LLaVA, "segmentwise": Qwen-VL); None:
    # FastVID was not measured on it and is refused (runtime/before_llm.py).
    fastvid_variant: str | None = None
    # Whether the vision tower encodes a video's frames as a batch of images, so that EarlyTom can merge frames inside
    # it (batch_tower gives its parts); towers that pack the frames into one sequence (Qwen-VL) cannot.
    merges_frames_in_tower: bool = False
    # Whether that tower is SigLIP, whose attention-pooling head FastVID's LLaVA-OneVision code reads (its
    # pooling_head setting).
    siglip_tower: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # --- detection ----------------------------------------------------------------------------------------------
    def matches(self, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    def refuse(self, model: nn.Module) -> None:
        """Raise an InputError saying why FrameFusion cannot run on `model` (families with `refuses` set)."""

    # --- where things are ---------------------------------------------------------------------------------------
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
        from framefusion.runtime import transformers_compat as compat

        encoder = compat.vision_encoder(model, self.video_modality)
        if encoder is None:
            return self.video_modality, None
        accepted = compat.accepted_keywords(encoder)
        return self.video_modality, encoder(
            **{key: value for key, value in video_inputs.items() if key in accepted}, return_dict=True
        )

    # --- frame dedup (framefusion/methods/frame_dedup.py) --------------------------------------------------------------
    def encode_frames(self, model: nn.Module, video_inputs: dict[str, Any], encoded: Sequence[int],
                      sources: Sequence[int]) -> tuple[str, Any | None]:
        """Run the vision encoder on some frames only, and lay the features out as `encode_video` does for all.

        Frames are counted in units of `frame_multiple` frames (what the encoder takes as one frame). encoded: the
        units to encode, ascending; sources: for every unit, the encoded unit whose features it takes (itself when
        encoded). Features of a unit depend on that unit's pixels alone, so a unit whose pixels repeat an encoded
        one's gets exactly the features it would have had. Returns (modality, features) as `encode_video` does.
        """
        from framefusion.families.frame_features import positions_in

        take = positions_in(encoded, sources)
        modality, features = self.encode_video(model, self.frame_inputs(video_inputs, encoded, len(sources)))
        if features is None:
            return modality, None
        return modality, self.spread_frame_features(features, take, len(encoded))

    def frame_inputs(self, video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
        """The processor's video inputs for the listed units only (of num_units). Default: LLaVA-style
        pixel_values_videos [1, T, 3, H, W]."""
        from framefusion.families.frame_features import FrameAxis, select_unit_inputs

        return select_unit_inputs(video_inputs, {"pixel_values_videos": FrameAxis(dim=1)}, units, num_units)

    def spread_frame_features(self, features: Any, take: Sequence[int], num_encoded: int) -> Any:
        """The encoder output of num_encoded units laid out for len(take) units (unit i: encoded unit take[i]).
        Default: LLaVA-style, pooler_output [1, T*P + trailing_tokens_per_video, d] (or a tuple per video of
        [T, P, d], as transformers 5.18 gives LLaVA-NeXT-Video's); the tower's own outputs (last_hidden_state,
        hidden_states) [T, patches, d_vit]."""
        from framefusion.families.frame_features import FrameAxis, spread_output

        per_frame = FrameAxis(dim=0)
        return spread_output(features, take, num_encoded, {
            "pooler_output": FrameAxis(dim=1, trailing=self.trailing_tokens_per_video, dim_in_sequence=0),
            "last_hidden_state": per_frame, "hidden_states": per_frame,
        })

    # --- frame layout -------------------------------------------------------------------------------------------
    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        """P: spatial positions per frame of the `video_index`-th video, which has `num_tokens` video tokens."""
        raise NotImplementedError

    def patch_types(self, model: nn.Module, input_ids: torch.Tensor, video: VideoInputs) -> torch.Tensor | None:
        """[L] long patch types for one prompt (input_ids [L]), or None when it holds no video token.

        Each maximal run of video tokens is one video; its frames follow each other, P tokens each, then
        `trailing_tokens_per_video` tokens that are not patches. Videos get disjoint type ranges so that a frame is
        never compared with another video's frame.
        """
        import torch

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
                    f"frames of {per_frame} tokens ({self.name}); the prompt and the video inputs do not match"
                )
            patch_types[start : start + num_patches] = (
                torch.arange(num_patches, device=input_ids.device) % per_frame + next_type
            )
            next_type += per_frame
        return patch_types

    # --- runtime extras -----------------------------------------------------------------------------------------
    def install(self, runtime: FrameFusionRuntime) -> None:
        """Install what this family needs beyond the generic hooks (called at the end of runtime.install(); whatever
        it replaces through runtime.replace_attribute is put back by runtime.remove()). Default: nothing."""

    def batch_tower(self, model: nn.Module) -> TowerParts | None:
        """The parts of a vision tower that encodes the frames as a batch of images (families with
        merges_frames_in_tower): where EarlyTom merges frames and HoliTom and FastVID read the tower's signals. Else
        None."""
        return None

    def packed_tower(self, model: nn.Module) -> nn.Module | None:
        """The vision tower, where it packs a video's frames into one sequence of blocks (Qwen-VL): FastVID and HoliTom
        read its last block's attention there. Else None."""
        return None

    # --- rotary positions ---------------------------------------------------------------------------------------
    def restore_reference_positions(self, model: nn.Module) -> bool:
        """Make the model place rotary positions as the family's reference code does, where transformers differs.
        Returns True when it changed something (see docs/positions.md). Default: nothing to do, False."""
        return False

    def remove_reference_positions(self, model: nn.Module) -> bool:
        """Undo restore_reference_positions; returns the answer restore_reference_positions gives. Default: False."""
        return False

    def has_reference_positions(self, model: nn.Module) -> bool:
        """Whether restore_reference_positions is in effect on this model. Default: False."""
        return False

    # --- building -----------------------------------------------------------------------------------------------
    def tiny_kit(self) -> FamilyKit | None:
        """The recipe of the family's tiny random checkpoint (`random:tiny-<name>`), or None when it has none."""
        return None

    def shape_files(self) -> tuple[Traversable, ...]:
        """The JSON files of the family's real shapes: shapes/<name>.json beside the module that defines it."""
        if not self.shape_names:
            return ()
        folder = resources.files(type(self).__module__) / "shapes"
        return tuple(folder / f"{name}.json" for name in self.shape_names)

    # --- memory figures (from config.json dicts, before anything is loaded) -------------------------------------
    def tokens_per_frame_from_config(self, config: Mapping[str, Any], processor: Mapping[str, Any] | None,
                                     frame_size: tuple[int, int] | None) -> int | None:
        """Visual tokens one frame becomes in the prompt, at most; None when the configs do not tell.

        processor: the (video) processor settings; frame_size: (width, height) of the video when known. Default: one
        token per patch of a ViT that sees the whole frame. Raises on a config with bad numbers.
        """
        side = patches_per_side(config)
        return None if side is None else max(1, side * side)

    def language_parameters(self, text: Mapping[str, Any]) -> int | None:
        """Parameters of the decoder layers (no embeddings, final norm or head) from the text config; None for the
        generic count of a standard attention stack (attention with biases, gated MLP, two norms per layer)."""
        return None

    def cache_layers(self, text: Mapping[str, Any]) -> int:
        """Decoder layers whose KV cache grows with the prompt (hybrid stacks: only the softmax-attention ones)."""
        return positive_int(text, "num_hidden_layers")

    def vision_parameters(self, vision: Mapping[str, Any], text_hidden: int) -> int:
        """Parameters of the vision tower and of the projector into a language model `text_hidden` wide.

        Default: a ViT (`hidden_size` wide) and LLaVA's two-layer MLP projector.
        """
        width = positive_int(vision, "hidden_size")
        output = positive_int(vision, "out_hidden_size", default=text_hidden)
        return vision_tower_parameters(vision, width) + mlp_projector_parameters(width, output)


def patches_per_side(config: Mapping[str, Any]) -> int | None:
    """Patches along one side of the vision tower's square input (image_size // patch_size), None if not given."""
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), Mapping) else {}
    if "image_size" in vision and "patch_size" in vision:
        return positive_int(vision, "image_size") // positive_int(vision, "patch_size")
    return None


def video_token_runs(is_video: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in is_video [L] as (start, end) pairs, end exclusive."""
    import torch

    flags = is_video.to(torch.int8)
    padded = torch.cat([flags.new_zeros(1), flags, flags.new_zeros(1)])
    edges = torch.nonzero(padded[1:] != padded[:-1]).squeeze(-1).tolist()
    return list(zip(edges[0::2], edges[1::2]))
