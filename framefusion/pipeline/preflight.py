"""The settings of a run on videos, checked in one place before any model is loaded, then the model opened.

Every command (ask, chat, caption, bench, calibrate) and the lmms-eval model make their settings with `run_settings`
and go through `check_run`, so that a bad setting or an unreadable video is refused the same way, in seconds, before
minutes of loading; errors name the setting (the CLI turns it into its flag).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from framefusion.errors import InputError
from framefusion.profiles.catalog import Profile, get_profile

ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
# The package each flash-attention backend imports (transformers fails on it only after loading the weights).
FLASH_ATTENTION_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


@dataclass(frozen=True)
class RunSettings:
    """What a user chooses for a run: the model, the profile, the sampling, the device."""

    model: str
    profile: str = "framefusion"
    profiles_file: Path | None = None
    revision: str | None = None
    frames: int | None = None
    fps: float | None = None
    max_frames: int = 64
    start: float | None = None
    end: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    backend: str = "auto"
    trust_remote_code: bool = False
    hub_kernels: bool = False
    reference_positions: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None
    feature_cache: bool = True  # read and write the vision-feature cache

    @property
    def frame_count(self) -> int | None:
        """Frames to sample uniformly (None: sample at `fps`, up to max_frames)."""
        from framefusion.pipeline.video_qa import DEFAULT_FRAMES

        return self.frames if self.frames is not None or self.fps is not None else DEFAULT_FRAMES

    @property
    def most_frames(self) -> int:
        """The most frames a video can give under these settings (what the memory estimate must allow for)."""
        return self.frame_count if self.frame_count is not None else self.max_frames

    def sampling(self) -> dict[str, Any]:
        return {"frames": self.frame_count, "fps": self.fps, "max_frames": self.max_frames, "start": self.start,
                "end": self.end}

    def generation(self) -> dict[str, Any]:
        """Keyword arguments of pipeline.video_qa.ask_video (and the chat session)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed,
                "system": self.system}

    def cache(self) -> Any:
        """The vision-feature cache this run reads and writes (a FeatureCache), or None when it is off."""
        from framefusion.pipeline.feature_cache import FeatureCache

        return FeatureCache() if self.feature_cache else None


def run_settings(model: str, **options: Any) -> RunSettings:
    """The settings of a run, checked as far as they can be without files or the model (the attention backend, the
    sampling, the generation numbers, hub kernels): the one place that makes RunSettings."""
    from framefusion.model_zoo import check_hub_kernels
    from framefusion.pipeline.video_qa import resolve_device, resolve_dtype
    from framefusion.video import check_sampling_arguments

    settings = RunSettings(model=model, **options)
    if settings.attn_implementation not in ATTENTION_BACKENDS:
        raise InputError(f"unknown attention backend: use {', '.join(ATTENTION_BACKENDS[:3])}",
                         setting="attn_implementation", value=settings.attn_implementation)
    package = FLASH_ATTENTION_PACKAGES.get(settings.attn_implementation)
    if package is not None and importlib.util.find_spec(package) is None:
        raise InputError(f"needs the {package} package, which is not installed: install it, or use sdpa",
                         setting="attn_implementation", value=settings.attn_implementation)
    resolve_dtype(settings.dtype, resolve_device(settings.device))  # an unknown or absent device, a bad dtype
    check_sampling_arguments(num_frames=settings.frame_count, fps=settings.fps, max_frames=settings.max_frames,
                             start=settings.start, end=settings.end, backend=settings.backend)
    if settings.max_new_tokens < 1:
        raise InputError("must be at least 1", setting="max_new_tokens", value=settings.max_new_tokens)
    if not settings.temperature >= 0:
        raise InputError("must be 0 (greedy) or more", setting="temperature", value=settings.temperature)
    if settings.hub_kernels:
        check_hub_kernels()
    return settings


@dataclass(frozen=True)
class CheckedRun:
    """Settings that passed every check that needs no model; `videos` holds what probing each video found."""

    settings: RunSettings
    profile: Profile
    videos: tuple[Any, ...]

    @property
    def largest_frame(self) -> tuple[int, int] | None:
        sizes = [(info.width, info.height) for info in self.videos]
        return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


def check_run(settings: RunSettings, videos: Sequence[str | Path] = (), *, extra_profiles: Sequence[str] = ()
              ) -> CheckedRun:
    """Check, after `run_settings`, everything else that can be checked without the model: the profile(s), the model
    name and its frame multiple when the name tells the family, and each video (opened and probed)."""
    from framefusion.model_zoo import parse_model_spec
    from framefusion.pipeline.video_qa import check_frame_count
    from framefusion.video import check_frame_shape_for_model, probe_video
    from framefusion.video.sampling import resolve_time_span

    profile = get_profile(settings.profile, settings.profiles_file)
    others = [get_profile(name, settings.profiles_file) for name in extra_profiles]
    spec = parse_model_spec(settings.model)
    family = getattr(spec, "family", None)
    check_frame_count(family, settings.frame_count)
    for each in (profile, *others):
        check_profile_fits(family, each)
    infos = []
    for video in videos:
        info = probe_video(video)
        check_frame_shape_for_model(info.width, info.height, str(video))
        resolve_time_span(settings.start, settings.end, info.duration)  # a start at or past the video's end
        infos.append(info)
    return CheckedRun(settings, profile, tuple(infos))


def check_profile_fits(family_name: str | None, profile: Profile) -> None:
    """Refuse, before loading, a profile whose stage the family called `family_name` cannot run (FastVID where it was
    not measured; None or an unknown name: checked once the model is loaded), or whose FastVID pooling head cannot
    load."""
    from framefusion.families import family_named

    kwargs = profile.reduction_kwargs() or {}
    family = family_named(family_name)
    if family is not None and kwargs.get("before_llm") is not None:
        try:
            kwargs["before_llm"].resolved(family)
        except ValueError as error:
            raise InputError(str(error), setting="profile", value=profile.name) from error
    _check_pooling_head(getattr(kwargs.get("before_llm"), "pooling_head", None), profile.name)


def _check_pooling_head(name: str | None, profile: str) -> None:
    """A FastVID pooling head that cannot load is refused before the model: a path to no folder, or a hub id that is
    not in the local cache while HF_HUB_OFFLINE is set."""
    if name is None or Path(name).expanduser().is_dir():
        return
    if name.startswith(("/", "./", "../", "~")):
        raise InputError("FastVID's pooling_head names no folder: give a SigLIP checkpoint's folder or hub id",
                         setting="profile", value=profile)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import validate_repo_id

    from framefusion.model_zoo.hub import hub_offline

    try:
        validate_repo_id(name)
    except ValueError:
        raise InputError("FastVID's pooling_head is neither a folder nor a hub id: give a SigLIP checkpoint's folder "
                         "or hub id", setting="profile", value=profile) from None
    if hub_offline() and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise InputError(f"FastVID's pooling_head {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                         "set: download it where the hub is reachable (`hf download`), or name its folder",
                         setting="profile", value=profile)


def open_run(checked: CheckedRun) -> Any:
    """Load the model (after the memory estimate) under the run's profile; the frame multiple is checked again
    against the loaded model's family. Returns a pipeline.VideoQA."""
    from framefusion.pipeline.video_qa import check_frame_count, open_video_qa

    settings = checked.settings
    qa = open_video_qa(
        settings.model, checked.profile, device=settings.device, dtype=settings.dtype,
        attn_implementation=settings.attn_implementation, revision=settings.revision,
        trust_remote_code=settings.trust_remote_code, hub_kernels=settings.hub_kernels,
        reference_positions=settings.reference_positions,
        frames=settings.most_frames, frame_size=checked.largest_frame,
    )
    check_frame_count(qa.family, settings.frame_count)
    return qa


def read_clip(settings: RunSettings, video: str | Path) -> tuple[Any, float]:
    """Sample the run's frames from a video: (VideoClip, seconds spent decoding)."""
    from framefusion.video import read_video

    started = time.perf_counter()
    clip = read_video(video, num_frames=settings.frame_count, fps=settings.fps, max_frames=settings.max_frames,
                      start=settings.start, end=settings.end, backend=settings.backend)
    return clip, time.perf_counter() - started


def prepare_video_file(qa: Any, settings: RunSettings, video: str | Path, cache: Any = None) -> Any:
    """Decode, preprocess and encode a video for `qa` (a pipeline.VideoQA) under its profile's stages before the
    vision encoder (frame dedup), or take its features from `cache` (a feature_cache.FeatureCache; None: off). A hit
    skips decoding and the vision encoder: the clip comes back as blank frames of the sampled size with the sampled
    timestamps, which is all a prompt needs. Returns a PreparedVideo."""
    key = feature_key(qa, settings.sampling(), video) if cache is not None else None
    hit = cached_video(qa, cache, key, video)
    if hit is not None:
        return hit
    clip, decode_seconds = read_clip(settings, video)
    return keep_features(qa, cache, key, qa.prepare_video(clip, decode_seconds))


def feature_key(qa: Any, sampling: dict[str, Any], video: str | Path) -> str:
    """The feature-cache key of `video` sampled as `sampling` (RunSettings.sampling()) for `qa`'s model and profile."""
    from framefusion.pipeline.feature_cache import cache_key, video_fingerprint

    # Stages before the vision encoder change the features; without any the key is what it always was.
    return cache_key(video=video_fingerprint(video), sampling=sampling, stages=qa.profile.encoding_stages(),
                     model=qa.identity, dtype=str(qa.model.dtype), device_type=qa.device.type)


def cached_video(qa: Any, cache: Any, key: str | None, video: str | Path) -> Any:
    """The PreparedVideo of a feature-cache hit (decoding and vision: 0 s), or None (a miss, or no cache)."""
    from framefusion.pipeline.results import PreparedVideo

    entry = cache.load(key, qa.device) if cache is not None else None
    if entry is None:
        return None
    clip = _blank_clip(entry.clip, str(video))
    video_inputs = dict.fromkeys(entry.details.get("video_input_keys", ()))
    return PreparedVideo(clip, video_inputs, entry.modality, entry.features, 0.0, 0.0, 0.0, cache="hit",
                         frames_encoded=entry.details.get("frames_encoded"),
                         frame_dedup=entry.details.get("frame_dedup"),
                         vision_plan=_plan_from_details(entry.details.get("vision_plan"), qa.device))


def keep_features(qa: Any, cache: Any, key: str | None, prepared: Any) -> Any:
    """Store a freshly prepared video's features under `key` (a miss); the PreparedVideo, marked, comes back."""
    from framefusion.pipeline.feature_cache import CachedVideo

    if cache is None or prepared.vision_features is None:
        return prepared  # no cache, or the model encodes inside generate(): nothing to keep
    stored = CachedVideo(prepared.vision_modality, prepared.vision_features, _clip_description(prepared.clip),
                         {"model": qa.model_name, "video_input_keys": sorted(prepared.video_inputs),
                          "frames_encoded": prepared.frames_encoded, "frame_dedup": prepared.frame_dedup,
                          "vision_plan": _plan_details(prepared.vision_plan)})
    cache.store(key, stored)  # a failed write warns once; the run goes on
    prepared.cache = "miss"
    return prepared


def _clip_description(clip: Any) -> dict[str, Any]:
    return {"frame_shape": list(clip.frames.shape), "timestamps": list(clip.timestamps),
            "sampled_fps": clip.sampled_fps, "source_fps": clip.source_fps, "duration": clip.duration,
            "backend": clip.backend, "start": clip.start, "end": clip.end}


def _blank_clip(description: dict[str, Any], path: str) -> Any:
    import numpy as np

    from framefusion.video import VideoClip

    fields = dict(description)
    frames = np.zeros(fields.pop("frame_shape"), dtype=np.uint8)
    return VideoClip(frames=frames, timestamps=tuple(fields.pop("timestamps")), path=path, **fields)


def _plan_details(plan: Any) -> dict[str, Any] | None:
    """What the vision tower gave (EarlyTom's Stage I result, or HoliTom's and FastVID's signals) as JSON, a few numbers
    a frame: it travels with the features it belongs to."""
    return None if plan is None else plan.details()


def _plan_from_details(details: dict[str, Any] | None, device: Any) -> Any:
    if details is None:
        return None
    from framefusion.runtime.tower_signals import TowerSignals
    from framefusion.runtime.vision_merge import VisionPlan

    if details.get("kind") == "tower-signals":
        return TowerSignals.from_details(details, device)
    return VisionPlan.from_details(details, device)
