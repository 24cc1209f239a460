"""Running the vision encoder under a profile's encoding stages: frame dedup (framefusion.methods.frame_dedup),
EarlyTom's frame merging (framefusion.runtime.vision_merge), or the capture of the signals HoliTom and FastVID read from
the tower (framefusion.runtime.tower_signals). VideoQA.prepare_video, the one path every application prepares its
videos through, calls `encode_video`.

The stages come from the profile the video is prepared for, which need not be the one applied to the model (the
benchmark prepares for each profile in turn): what the applied profile installed in the tower is set aside meanwhile.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from framefusion.api import framefusion_handle
from framefusion.errors import InputError, ProfileError
from framefusion.profiles.catalog import TOWER_READING_KINDS, stage_method
from framefusion.runtime.before_llm import tower_capture
from framefusion.runtime.tower_signals import PackedTowerSignalCapture, TowerSignalCapture, TowerSignals
from framefusion.runtime.vision_merge import FrameMergingTower, VisionPlan, encoding_with

if TYPE_CHECKING:
    from framefusion.pipeline.video_qa import VideoQA
    from framefusion.video import VideoClip


def encode_video(qa: VideoQA, clip: VideoClip, video_inputs: dict[str, torch.Tensor], stages: list[dict[str, Any]]
                 ) -> tuple[str, Any, Any, VisionPlan | TowerSignals | None]:
    """(modality, features, the frame-dedup plan or None, what the tower gave or None): every frame encoded, with
    frame dedup only those that differ, or with EarlyTom fewer frames after its prune layers (its VisionPlan); with
    HoliTom or FastVID the tower's signals (TowerSignals) where its family's tower gives them."""
    from framefusion.methods.frame_dedup import plan_frame_dedup

    plan, reading = None, None
    for stage in stages:
        if stage["kind"] == "earlytom":
            return _encode_merging_frames(qa, video_inputs, stage)
        if stage["kind"] in TOWER_READING_KINDS:
            reading = stage
        elif stage["kind"] != "frame-dedup":
            raise ProfileError(f"no stage {stage['kind']!r} runs in the vision encoder", setting="profile")
        elif qa.adapter is not None:  # a model of no known family: its layout is unknown, every frame encoded
            settings = {key: value for key, value in stage.items() if key != "kind"}
            plan = plan_frame_dedup(clip.frames, unit_frames=qa.adapter.frame_multiple, **settings)
    capture = _signal_capture(qa, reading)
    with encoding_with(None, None, _installed_capture(qa)), capture or contextlib.nullcontext():
        if plan is None:
            modality, features = qa.video_encoding.encode_video(qa.model, video_inputs)
        elif plan.encodes_every_unit:
            modality, features = qa.adapter.encode_video(qa.model, video_inputs)
        else:
            modality, features = qa.adapter.encode_frames(qa.model, video_inputs, plan.encoded, plan.sources)
    signals = capture.plan if capture is not None else None
    if signals is not None and plan is not None and not plan.encodes_every_unit:
        signals = _signals_of_every_frame(signals, plan)
    return modality, features, plan, signals


def _signal_capture(qa: VideoQA, stage: dict[str, Any] | None
                    ) -> TowerSignalCapture | PackedTowerSignalCapture | None:
    """The capture of the tower's signals a HoliTom or FastVID stage reads, where the family's tower gives them."""
    if stage is None or qa.adapter is None:
        return None
    try:
        return tower_capture(stage_method(stage).resolved(qa.adapter), qa.adapter, qa.model)
    except ValueError as error:
        raise InputError(str(error), setting="profile", value=qa.profile.name) from error


def _signals_of_every_frame(signals: TowerSignals, plan: Any) -> TowerSignals:
    """Frame dedup encoded only some units: each unit takes the signals of the unit whose features it reuses, as its
    features do (families/frame_features.py)."""
    from framefusion.families.frame_features import FrameAxis, gather_units, positions_in

    take = positions_in(plan.encoded, plan.sources)

    def spread(rows: torch.Tensor) -> torch.Tensor:
        return gather_units(rows, take, len(plan.encoded), FrameAxis(dim=0))

    vectors = None if signals.frame_vectors is None else spread(signals.frame_vectors)
    return TowerSignals(spread(signals.attention), vectors, signals.source)


def _encode_merging_frames(qa: VideoQA, video_inputs: dict[str, torch.Tensor], stage: dict[str, Any]
                           ) -> tuple[str, Any, None, VisionPlan | None]:
    family = qa.adapter
    parts = family.batch_tower(qa.model) if family is not None else None
    if parts is None:
        raise InputError("EarlyTom merges frames inside a vision tower that encodes them as a batch of images; this "
                         "model's does not: use holitom, fastvid or vidcom2", setting="profile", value=qa.profile.name)
    try:
        settings = stage_method(stage).resolved(family)
    except ValueError as error:
        raise InputError(str(error), setting="profile", value=qa.profile.name) from error
    with encoding_with(parts, settings, _installed_capture(qa)) as merging:
        modality, features = family.encode_video(qa.model, video_inputs)
    return modality, features, None, merging.plan


def _installed_capture(qa: VideoQA) -> FrameMergingTower | TowerSignalCapture | PackedTowerSignalCapture | None:
    handle = framefusion_handle(qa.model)
    return handle.runtime.tower_capture if handle is not None else None
