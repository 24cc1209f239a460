"""Calibrate FrameFusion's similarity threshold S_th on your own videos.

FrameFusion merges a video token into the token at the same spatial position of the previous frame when their
cosine similarity is at least S_th. Its authors set S_th per model to the median similarity at the first merge,
measured on samples of a benchmark. This module measures the same thing on the videos a user actually has:

- the model runs unreduced (no FrameFusion), through the same pipeline as `ask`;
- during the prefill, the hidden state entering every decoder layer is read (a forward pre-hook per layer), and for
  each video token that has a predecessor (same spatial position, earlier frame) its cosine similarity to that
  predecessor is taken (`core.similarity_to_previous_frame`; the first frame has none and is left out);
- the proposed S_th is the mean over videos of the median similarity at layer 0's input, i.e. the input embeddings:
  FrameFusion's first merge step runs there, before layer 0's attention (docs/algorithm.md).

Every per-layer figure is, like the proposal, a mean over videos of that video's own statistic, so that a long video
does not outweigh a short one. `similarity_lower_bound == layers[0].median` always holds.

Each video also gets the noise-aware frame dedup's view of its frames at the default sensitivity
(`methods.frame_dedup.plan_frame_dedup`): the noise floor, the threshold and every frame's change score against the
last encoded frame, so that a user can choose a frame-dedup `sensitivity` (a frame is encoded when its score exceeds
the threshold; the threshold divides by the sensitivity).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from framefusion.methods import framefusion as core
from framefusion.methods.frame_dedup import FramePlan, plan_frame_dedup
from framefusion.runtime import transformers_compat as compat
from framefusion.families import VideoInputs, supported_families
from framefusion.errors import FrameFusionError, InputError, Suggestion, VideoError, one_line
from framefusion.profiles.catalog import get_profile
from framefusion.video import VideoClip, read_video

# What the model is asked while its hidden states are read. Video tokens come before the question in every
# supported chat template, and attention is causal, so the question cannot change what is measured.
CALIBRATION_QUESTION = "Describe this video."
QUANTILES = {"p10": 0.10, "p25": 0.25, "median": 0.50, "p75": 0.75, "p90": 0.90}
RULE = ("mean over the videos of the median cosine similarity of each video token to the same spatial position in "
        "the previous frame, at the input embeddings (layer 0, where FrameFusion's first merge happens)")
# Saved profiles carry S_th to this many decimals: finer digits are noise between runs and videos.
SAVED_DECIMALS = 4
# The profile a calibrated one is made from: its stages, with the calibrated S_th in its FrameFusion stage.
DEFAULT_PROFILE = "framefusion"
# An S_th this high leaves nearly nothing to merge (cosine similarities of distinct tokens rarely reach it).
MERGING_STOPS_AT = 0.99


@dataclass(frozen=True)
class SimilarityStats:
    """The distribution of the similarities of one layer (of one video, or averaged over videos)."""

    mean: float
    p10: float
    p25: float
    median: float
    p75: float
    p90: float

    @classmethod
    def of(cls, similarity: torch.Tensor) -> "SimilarityStats":
        """similarity: [n] float, n >= 1. Quantiles interpolate linearly (the median of an even count is the mean
        of the middle two, as numpy.median)."""
        values = similarity.double()
        quantiles = torch.quantile(values, torch.tensor(list(QUANTILES.values()), dtype=values.dtype))
        return cls(mean=float(values.mean()), **dict(zip(QUANTILES, (float(q) for q in quantiles))))

    @classmethod
    def averaged(cls, items: Sequence["SimilarityStats"]) -> "SimilarityStats":
        fields = asdict(items[0])
        return cls(**{key: sum(getattr(item, key) for item in items) / len(items) for key in fields})


@dataclass(frozen=True)
class VideoSimilarity:
    """What one video showed. layers[l]: the similarities at the input of decoder layer l."""

    video: str
    frames: int
    video_tokens: int
    compared_tokens: int  # video tokens with a predecessor: all but the first frame's
    layers: tuple[SimilarityStats, ...]
    # Noise-aware frame dedup on the sampled frames, at the default sensitivity: per-frame change scores for tuning.
    frame_changes: FramePlan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "frames": self.frames, "video_tokens": self.video_tokens,
                "compared_tokens": self.compared_tokens, "per_layer_medians": [s.median for s in self.layers],
                "frame_dedup": self.frame_changes.to_dict() if self.frame_changes is not None else None}


@dataclass(frozen=True)
class CalibrationResult:
    """The proposed S_th, the per-layer distribution it comes from (averaged over videos), and each video's part."""

    model: str
    family: str
    family_default: float
    similarity_lower_bound: float
    layers: tuple[SimilarityStats, ...]
    videos: tuple[VideoSimilarity, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (video, why) of the videos that could not be read

    @property
    def saved_similarity_lower_bound(self) -> float:
        return round(self.similarity_lower_bound, SAVED_DECIMALS)

    @property
    def stops_merging(self) -> bool:
        """Whether the proposed S_th is so high that FrameFusion would merge next to nothing (only the prune runs)."""
        return self.similarity_lower_bound >= MERGING_STOPS_AT

    def profile_settings(self, cost: float = 0.3) -> dict[str, Any]:
        """The default profile with the calibrated S_th and `cost` in its FrameFusion stage, its other stages (frame
        dedup) kept, as a profiles file spells it (see profiles.save_profile)."""
        stages = [dict(stage, cost=cost, similarity_lower_bound=self.saved_similarity_lower_bound)
                  if stage["kind"] == "framefusion" else stage for stage in get_profile(DEFAULT_PROFILE).stages()]
        return {
            "description": (f"{DEFAULT_PROFILE} with S_th {self.saved_similarity_lower_bound} calibrated on "
                            f"{len(self.videos)} video(s) with {self.model}"),
            "stages": stages,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity_lower_bound": self.similarity_lower_bound,
            "rule": RULE,
            "model": self.model,
            "family": self.family,
            "family_default": self.family_default,
            "per_layer_medians": [stats.median for stats in self.layers],
            "layers": [dict(layer=index, **asdict(stats)) for index, stats in enumerate(self.layers)],
            "videos": [video.to_dict() for video in self.videos],
            "skipped_videos": [{"video": video, "error": why} for video, why in self.skipped],
            "stops_merging": self.stops_merging,
        }


def proposed_threshold(videos: Sequence[VideoSimilarity]) -> float:
    """The official rule: the mean over videos of the median similarity at layer 0 (the input embeddings)."""
    return sum(video.layers[0].median for video in videos) / len(videos)


class _LayerInputSimilarity:
    """Hooks that compute, during one prefill, each decoder layer's input similarity to the previous frame.

    A pre-hook on the multimodal model reads input_ids and asks the family adapter where the video tokens are (patch
    types); a pre-hook on every decoder layer takes the hidden states it receives. Only full-length prefills count.
    """

    def __init__(self, model: torch.nn.Module, adapter: Any, video: VideoInputs):
        self.model = model
        self.adapter = adapter
        self.video = video
        self.patch_types: torch.Tensor | None = None
        layers = adapter.language_model(model).layers
        self.per_layer: list[torch.Tensor | None] = [None] * len(layers)
        multimodal_model = adapter.multimodal_model(model)
        self._handles = [multimodal_model.register_forward_pre_hook(self._read_layout, with_kwargs=True)]
        for index, layer in enumerate(layers):
            hook = (lambda module, args, kwargs, index=index: self._measure(index, args, kwargs))
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def _read_layout(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or compat.is_continuation(kwargs) or self.patch_types is not None:
            return
        self.patch_types = self.adapter.patch_types(self.model, input_ids[0], self.video)

    def _measure(self, index: int, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        patch_types = self.patch_types
        if patch_types is None or self.per_layer[index] is not None or hidden_states.shape[1] != patch_types.numel():
            return
        # float32: the statistics should not depend on the dtype the model runs in.
        _, similarity = core.similarity_to_previous_frame(hidden_states[0].float(), patch_types)
        compared = similarity[(similarity != core.NO_PREDECESSOR) & torch.isfinite(similarity)]
        self.per_layer[index] = compared.cpu()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure_video(qa: Any, clip: VideoClip) -> VideoSimilarity:
    """Per-layer similarity to the previous frame for one clip. qa: a VideoQA under a profile that reduces nothing."""
    if qa.adapter is None:
        raise _no_adapter(qa)
    prepared = qa.prepare_video(clip)
    capture = _LayerInputSimilarity(qa.model, qa.adapter, VideoInputs(prepared.video_inputs.get("video_grid_thw")))
    try:
        qa.answer(prepared, CALIBRATION_QUESTION, max_new_tokens=1)
    finally:
        capture.close()
    if capture.patch_types is None:
        raise FrameFusionError(f"{clip.path}: the model's prompt held no video tokens; nothing to measure")
    missing = [index for index, values in enumerate(capture.per_layer) if values is None]
    if missing:
        raise FrameFusionError(
            f"{clip.path}: the hidden states of layer {missing[0]} were not seen during the prefill; this model's "
            "decoder stack is not laid out as FrameFusion expects"
        )
    compared = capture.per_layer[0].numel()
    if compared == 0:
        raise InputError(
            f"{clip.path}: the model saw a single frame ({clip.num_frames} sampled, grouped by the model), so no token "
            "has a previous frame to compare with",
            suggestions=[Suggestion("sample more frames", setting="frames")],
        )
    video_tokens = int((capture.patch_types >= 0).sum())
    return VideoSimilarity(video=str(clip.path), frames=clip.num_frames, video_tokens=video_tokens,
                           compared_tokens=compared,
                           layers=tuple(SimilarityStats.of(values) for values in capture.per_layer),
                           frame_changes=plan_frame_dedup(clip.frames, unit_frames=qa.adapter.frame_multiple,
                                                          mode="noise-aware"))


def calibrate(qa: Any, videos: Sequence[str | Path], *, frames: int | None = None, fps: float | None = None,
              max_frames: int = 64, start: float | None = None, end: float | None = None, backend: str = "auto",
              on_video: Callable[[int, str], None] | None = None) -> CalibrationResult:
    """Measure every video (sampled as `read_video` does) and propose S_th by the official rule (see RULE).

    qa: a VideoQA opened under a profile that reduces nothing (the similarities of the unreduced model are wanted).
    on_video(index, path): called before each video, for progress reports.
    """
    if not videos:
        raise InputError("no videos to calibrate on: give at least one video file")
    if qa.adapter is None:
        raise _no_adapter(qa)
    if qa.profile.reduction_kwargs() is not None:
        raise InputError("calibration measures the unreduced model; open it under a profile that reduces nothing",
                         setting="profile", value=qa.profile.name)
    measured, skipped = [], []
    for index, path in enumerate(videos):
        if on_video is not None:
            on_video(index, str(path))
        try:
            clip = read_video(path, num_frames=frames, fps=fps, max_frames=max_frames, start=start, end=end,
                              backend=backend)
        except VideoError as error:  # one unreadable video is reported, as caption does, not the end of the run
            skipped.append((str(path), one_line(error)))
            continue
        measured.append(measure_video(qa, clip))
    if not measured:
        raise VideoError(f"no video could be read ({'; '.join(why for _, why in skipped)})")
    num_layers = len(measured[0].layers)
    layers = tuple(
        SimilarityStats.averaged([video.layers[layer] for video in measured]) for layer in range(num_layers)
    )
    threshold = proposed_threshold(measured)
    if not math.isfinite(threshold):
        raise FrameFusionError("the similarities came out as NaN or infinite; run the model in float32 and try again")
    return CalibrationResult(
        model=qa.model_name, family=qa.family, family_default=qa.adapter.default_similarity_lower_bound,
        similarity_lower_bound=threshold, layers=layers, videos=tuple(measured), skipped=tuple(skipped),
    )


def collect_videos(paths: Sequence[str | Path]) -> list[Path]:
    """The videos to calibrate on: each path as given if it is a file, the video files of a folder (not its
    subfolders, sorted) if it is a folder. Files are not opened here (`video.probe_video` checks them)."""
    from framefusion.apps.caption.folder import VIDEO_EXTENSIONS, find_videos

    if not paths:
        raise InputError("no videos given: name video files, or folders that hold videos")
    videos: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            videos.append(path)
            continue
        listing = find_videos(path)
        if not listing.videos:
            raise InputError(
                f"{path}: no video files in this folder (looked for {', '.join(VIDEO_EXTENSIONS)}; "
                f"found {len(listing.others)} other file(s)); name the videos themselves or another folder"
            )
        videos.extend(path / name for name in listing.videos)
    return videos


def _no_adapter(qa: Any) -> InputError:
    return InputError(
        f"{qa.model_name} is a {type(qa.model).__name__}, which FrameFusion has no adapter for (supported families: "
        f"{', '.join(supported_families())}): calibration needs to know where the video tokens are"
    )
