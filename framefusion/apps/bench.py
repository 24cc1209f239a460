"""Side-by-side speed of reduction profiles on one model and one video: what FrameFusion buys on this machine.

    qa = open_video_qa("random:llava-onevision-qwen2-0.5b", get_profile("baseline"), device="cpu", dtype="float32")
    result = run_bench(qa, clip, [get_profile("baseline"), get_profile("framefusion")], repeat=3, warmup=1)
    result.to_dict()  # machine, model, results per profile, speedups against the first profile with their limits

Every profile answers the same question about the same frames in the same process. Warm-up rounds come first and
are not counted; then `repeat` rounds, each running every profile once (the order rotates from round to round so no
profile always runs first), and each timing is the median over the rounds. The pipeline synchronises the device around
every timer (framefusion.runtime.clock). The CLI's `framefusion bench` only parses options, renders a `BenchResult` and draws
its plot.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from framefusion.api import framefusion_handle
from framefusion.apps.doctor import cpu_name
from framefusion.errors import InputError
from framefusion.runtime.peak_memory import MemoryMeter
from framefusion.pipeline.video_qa import VideoQA
from framefusion.pipeline.results import TIMING_FIELDS, AskResult, PreparedVideo, Timings, TokenReport
from framefusion.profiles.catalog import Profile
from framefusion.video import VideoClip

DEFAULT_QUESTION = "What happens in this video?"
DEFAULT_REPEAT = 3
DEFAULT_WARMUP = 1
DEFAULT_MAX_NEW_TOKENS = 16


@dataclass
class ProfileRun:
    """One profile's measurements: token counts (the same every round), median timings, peak memory.

    peak_memory_bytes: of the LLM work (prefill and generation) only, the part that differs between profiles;
    on a GPU the most allocated, on a CPU the most resident memory grew during it.
    """

    profile: str
    tokens: TokenReport
    timings: Timings
    framefusion_seconds: float
    peak_memory_bytes: int
    rounds: list[Timings] = field(default_factory=list)
    new_tokens: int = 0
    answer: str = ""  # the last round's (greedy decoding gives the same every round)

    @property
    def framefusion_share_of_prefill(self) -> float:
        """FrameFusion's own work as a fraction of this profile's (reduced) prefill time."""
        return self.framefusion_seconds / self.timings.prefill if self.timings.prefill > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "tokens": self.tokens.to_dict(),
            "timings": self.timings.to_dict(),
            "framefusion_seconds": round(self.framefusion_seconds, 6),
            "framefusion_share_of_prefill": round(self.framefusion_share_of_prefill, 6),
            "peak_memory_bytes": int(self.peak_memory_bytes),
            "new_tokens": self.new_tokens,
            "answer": self.answer,
            "rounds": [timings.to_dict() for timings in self.rounds],
        }


@dataclass(frozen=True)
class Speedup:
    """Speedups of one profile against the reference (first) profile, and the most each could be.

    Per stage: vision (fewer frames encoded: frame dedup), prefill and generate (fewer tokens). End to end: ttft and
    total, each next to its Amdahl limit, the speedup if the reduced stages got exactly as much faster as the work
    they do shrank (vision: frames encoded; prefill and generation: token-layers) and every other stage stayed.
    """

    prefill: float
    ttft: float
    total: float
    prefill_limit: float
    ttft_limit: float
    total_limit: float
    vision: float = 1.0
    generate: float = 1.0
    vision_limit: float = 1.0

    @property
    def prefill_of_limit(self) -> float:
        """How much of the token-layer limit the prefill reached (1.0 = all of it)."""
        return self.prefill / self.prefill_limit if self.prefill_limit > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        values = dict(prefill=self.prefill, ttft=self.ttft, total=self.total, prefill_limit=self.prefill_limit,
                      ttft_limit=self.ttft_limit, total_limit=self.total_limit,
                      prefill_of_limit=self.prefill_of_limit, vision=self.vision, generate=self.generate,
                      vision_limit=self.vision_limit)
        return {key: round(value, 4) for key, value in values.items()}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    model: str
    video: str
    question: str
    repeat: int
    warmup: int
    max_new_tokens: int
    results: list[ProfileRun]
    speedup: dict[str, Speedup]

    @property
    def reference(self) -> ProfileRun:
        return self.results[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": dict(self.machine),
            "model": self.model,
            "video": self.video,
            "question": self.question,
            "frames": self.reference.tokens.frames,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "max_new_tokens": self.max_new_tokens,
            "reference_profile": self.reference.profile,
            "results": [run.to_dict() for run in self.results],
            "speedup": {name: speedup.to_dict() for name, speedup in self.speedup.items()},
        }


# --- limits and speedups (pure) -----------------------------------------------------------------------------------
def token_layer_limit(reference_per_layer: Sequence[int], per_layer: Sequence[int]) -> float:
    """The prefill speedup if time were proportional to the tokens each decoder layer processes.

    For a baseline reference that is N·prompt / Σ tokens per layer; text tokens are never removed, so it sits a
    little below 1/cost.
    """
    reduced = sum(per_layer)
    return sum(reference_per_layer) / reduced if reduced > 0 else 1.0


def amdahl_limit(unchanged_seconds: float, reducible_seconds: float, reducible_limit: float) -> float:
    """Whole-task speedup when only the reducible part speeds up, by at most `reducible_limit`."""
    return stages_limit([(unchanged_seconds, 1.0), (reducible_seconds, reducible_limit)])


def stages_limit(stages: Sequence[tuple[float, float]]) -> float:
    """Whole-task speedup when each stage (seconds, its own speedup limit) speeds up by exactly its limit."""
    best = sum(seconds / limit for seconds, limit in stages)
    return sum(seconds for seconds, _ in stages) / best if best > 0 else 1.0


def frames_encoded(tokens: TokenReport) -> int:
    """Sampled frames the vision encoder saw (all of them unless frame dedup reused some)."""
    return tokens.frames if tokens.frames_encoded is None else tokens.frames_encoded


def _frames_through_the_tower(tokens: TokenReport) -> float:
    """The frames the encoder's layers ran on, on average: fewer than encoded where EarlyTom merged frames inside."""
    return frames_encoded(tokens) if tokens.frames_per_tower_layer is None else tokens.frames_per_tower_layer


def frame_limit(reference: TokenReport, tokens: TokenReport) -> float:
    """The vision speedup if its time were proportional to the frames its layers run on (frames encoded; frames
    merged inside the tower count from the layer after the merge)."""
    frames = _frames_through_the_tower(tokens)
    return _frames_through_the_tower(reference) / frames if frames > 0 else 1.0


def _ratio(reference: float, value: float) -> float:
    return reference / value if value > 0 else 0.0


def time_to_first_token(timings: Timings) -> float:
    """Vision encoder + LLM prefill: what separates the profiles before the first token (preprocessing is shared)."""
    return timings.vision + timings.prefill


def compute_speedup(reference: ProfileRun, run: ProfileRun) -> Speedup:
    """Speedups of `run` over `reference`, next to their limits.

    Video decoding and preprocessing are untouched. The vision encoder is bounded by the frames it encodes (frame
    dedup); the LLM's prefill and the decode steps (whose caches hold exactly the tokens each layer kept) by the
    token-layer limit.
    """
    base = reference.timings
    limit = token_layer_limit(reference.tokens.per_layer, run.tokens.per_layer)
    vision_limit = frame_limit(reference.tokens, run.tokens)
    untouched = base.decode_video + base.preprocess
    language_model = base.total - untouched - base.vision
    return Speedup(
        prefill=_ratio(base.prefill, run.timings.prefill),
        ttft=_ratio(time_to_first_token(base), time_to_first_token(run.timings)),
        total=_ratio(base.total, run.timings.total),
        prefill_limit=limit,
        ttft_limit=stages_limit([(base.vision, vision_limit), (base.prefill, limit)]),
        total_limit=stages_limit([(untouched, 1.0), (base.vision, vision_limit), (language_model, limit)]),
        vision=_ratio(base.vision, run.timings.vision),
        generate=_ratio(base.generate, run.timings.generate),
        vision_limit=vision_limit,
    )


def median_timings(rounds: Sequence[Timings]) -> Timings:
    """Each field's median over the rounds (fields independently)."""
    return Timings(**{name: statistics.median(getattr(t, name) for t in rounds) for name in TIMING_FIELDS})


# --- the machine ----------------------------------------------------------------------------------------------------
def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }


# --- the benchmark ---------------------------------------------------------------------------------------------------
def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """The items starting at index `by` (mod len): round r runs the profiles in this order."""
    shift = by % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def check_bench_arguments(profile_names: Sequence[str], repeat: int, warmup: int, max_new_tokens: int) -> None:
    """Everything about the settings that can be checked before a model is loaded."""
    if not profile_names:
        raise InputError("no profiles to compare: name at least one, e.g. baseline,framefusion", setting="profiles")
    duplicates = sorted({name for name in profile_names if list(profile_names).count(name) > 1})
    if duplicates:
        raise InputError(f"profile {duplicates[0]!r} is listed twice: name each profile once")
    if repeat < 1:
        raise InputError("must be at least 1", setting="repeat", value=repeat)
    if warmup < 0:
        raise InputError("must be 0 or more", setting="warmup", value=warmup)
    if max_new_tokens < 1:
        raise InputError("must be at least 1", setting="max_new_tokens", value=max_new_tokens)


def parse_profile_list(text: str) -> list[str]:
    """'baseline, framefusion' -> ['baseline', 'framefusion'] (empty entries dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _answer_under(qa: VideoQA, profile: Profile, prepared: PreparedVideo, question: str,
                  max_new_tokens: int) -> tuple[AskResult, int]:
    """One answer under `profile` from shared vision features; returns it and the peak memory of its LLM work."""
    qa.use_profile(profile)
    handle = framefusion_handle(qa.model)
    if handle is not None:
        handle.runtime.measure_overhead = True
    with MemoryMeter(qa.device) as memory:
        result = qa.answer(prepared, question, max_new_tokens=max_new_tokens)
    return result, memory.peak_bytes


def run_bench(qa: VideoQA, clip: VideoClip, profiles: Sequence[Profile], *, repeat: int = DEFAULT_REPEAT,
              warmup: int = DEFAULT_WARMUP, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              question: str = DEFAULT_QUESTION, decode_seconds: float = 0.0, dtype: torch.dtype | None = None,
              on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every profile on the same clip and question; speedups are against profiles[0].

    Profiles that do the same before the vision encoder (the same frame dedup, or none) share its work: each round
    runs the encoder once for them and they answer from the same features, charged the same vision time. A profile
    that deduplicates frames differently gets its own encoding, and its own vision time, in every round. Warm-up
    rounds encode once per setting. decode_seconds: the time it took to decode the clip, counted in every profile's
    total (decoding is shared too).
    """
    check_bench_arguments([p.name for p in profiles], repeat, warmup, max_new_tokens)
    note = on_progress or (lambda message: None)
    def encoded(prepared: dict[str, PreparedVideo], profile: Profile, stage: str) -> PreparedVideo:
        # Profiles with the same encoding stages share one encoding per round.
        stages = profile.encoding_stages()
        setting = json.dumps(stages, sort_keys=True)
        if setting not in prepared:
            described = ", ".join(" ".join(str(value) for value in item.values() if value is not None)
                                  for item in stages)
            note(f"{stage}: vision encoder" + (f" ({described})" if described else ""))
            prepared[setting] = qa.prepare_video(clip, decode_seconds, profile=profile)
        return prepared[setting]

    warm: dict[str, PreparedVideo] = {}
    for index in range(warmup):
        for profile in rotated(profiles, index):
            note(f"warm-up {index + 1}/{warmup}: {profile.name}")
            _answer_under(qa, profile, encoded(warm, profile, "warm-up"), question, max_new_tokens)

    rounds: dict[str, list[AskResult]] = {profile.name: [] for profile in profiles}
    peaks: dict[str, int] = {profile.name: 0 for profile in profiles}
    for index in range(repeat):
        this_round: dict[str, PreparedVideo] = {}
        for profile in rotated(profiles, index):
            prepared = encoded(this_round, profile, f"round {index + 1}/{repeat}")
            note(f"round {index + 1}/{repeat}: {profile.name}")
            result, peak = _answer_under(qa, profile, prepared, question, max_new_tokens)
            rounds[profile.name].append(result)
            peaks[profile.name] = max(peaks[profile.name], peak)
    qa.use_profile(profiles[0])

    runs = [_summarise(profile.name, rounds[profile.name], peaks[profile.name]) for profile in profiles]
    speedup = {run.profile: compute_speedup(runs[0], run) for run in runs}
    model_dtype = dtype or next(qa.model.parameters()).dtype
    return BenchResult(
        machine=machine_info(qa.device, model_dtype), model=qa.model_name, video=str(clip.path), question=question,
        repeat=repeat, warmup=warmup, max_new_tokens=max_new_tokens, results=runs, speedup=speedup,
    )


def _summarise(profile: str, results: Sequence[AskResult], peak_bytes: int) -> ProfileRun:
    timings = [result.timings for result in results]
    return ProfileRun(
        profile=profile,
        tokens=results[-1].tokens,  # the same every round: same input, deterministic reduction
        timings=median_timings(timings),
        framefusion_seconds=statistics.median(result.tokens.framefusion_seconds for result in results),
        peak_memory_bytes=peak_bytes,
        rounds=timings,
        new_tokens=results[-1].new_tokens,
        answer=results[-1].answer,
    )


# --- the test video --------------------------------------------------------------------------------------------------
def synthetic_bench_video(folder: str | Path | None = None) -> Path:
    """Write the generated scene (static regions that merge, changing and noisy ones left for pruning) to an mp4.

    folder: where to write it (default: a new temporary folder the caller may delete).
    """
    from framefusion.video.synthetic import write_synthetic_video

    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="framefusion-bench-"))
    return write_synthetic_video(target / "synthetic-scene.mp4", seconds=4.0, fps=16, width=384, height=384)
