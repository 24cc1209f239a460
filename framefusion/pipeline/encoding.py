"""Running the vision encoder under a profile's stages before and inside it: frame dedup
(framefusion.methods.frame_dedup) or EarlyTom's frame merging (framefusion.runtime.vision_merge).
VideoQA.prepare_video, the one path every application prepares its videos through, calls `encode_video`.

The stages come from the profile the video is prepared for, which need not be the one applied to the model (the
benchmark prepares for each profile in turn): a frame merging the applied profile installed is set aside meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from framefusion.api import framefusion_handle
from framefusion.errors import InputError, ProfileError
from framefusion.profiles.catalog import stage_method
from framefusion.runtime.vision_merge import FrameMergingTower, VisionPlan, encoding_with

if TYPE_CHECKING:
    from framefusion.pipeline.video_qa import VideoQA
    from framefusion.video import VideoClip


def encode_video(qa: VideoQA, clip: VideoClip, video_inputs: dict[str, torch.Tensor], stages: list[dict[str, Any]]
                 ) -> tuple[str, Any, Any, VisionPlan | None]:
    """(modality, features, the frame-dedup plan or None, EarlyTom's VisionPlan or None): every frame encoded, with
    frame dedup only those that differ, or with EarlyTom fewer frames after its prune layers."""
    from framefusion.methods.frame_dedup import plan_frame_dedup

    plan = None
    for stage in stages:
        if stage["kind"] == "earlytom":
            return _encode_merging_frames(qa, video_inputs, stage)
        if stage["kind"] != "frame-dedup":
            raise ProfileError(f"no stage {stage['kind']!r} runs before the vision encoder", setting="profile")
        if qa.adapter is not None:  # a model of no known family: its layout is unknown, every frame encoded
            settings = {key: value for key, value in stage.items() if key != "kind"}
            plan = plan_frame_dedup(clip.frames, unit_frames=qa.adapter.frame_multiple, **settings)
    with encoding_with(None, None, _installed_merging(qa)):
        if plan is None:
            return (*qa.video_encoding.encode_video(qa.model, video_inputs), None, None)
        if plan.encodes_every_unit:
            return (*qa.adapter.encode_video(qa.model, video_inputs), plan, None)
        modality, features = qa.adapter.encode_frames(qa.model, video_inputs, plan.encoded, plan.sources)
    return modality, features, plan, None


def _encode_merging_frames(qa: VideoQA, video_inputs: dict[str, torch.Tensor], stage: dict[str, Any]
                           ) -> tuple[str, Any, None, VisionPlan | None]:
    family = qa.adapter
    parts = family.earlytom_tower(qa.model) if family is not None else None
    if parts is None:
        raise InputError("EarlyTom merges frames inside a vision tower that encodes them as a batch of images; this "
                         "model's does not: use holitom, fastvid or vidcom2", setting="profile", value=qa.profile.name)
    try:
        settings = stage_method(stage).resolved(family)
    except ValueError as error:
        raise InputError(str(error), setting="profile", value=qa.profile.name) from error
    with encoding_with(parts, settings, _installed_merging(qa)) as merging:
        modality, features = family.encode_video(qa.model, video_inputs)
    return modality, features, None, merging.plan


def _installed_merging(qa: VideoQA) -> FrameMergingTower | None:
    handle = framefusion_handle(qa.model)
    return handle.runtime.frame_merging if handle is not None else None
