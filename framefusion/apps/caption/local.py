"""Caption every video of a folder with one loaded model, never losing finished work.

Each video's record (or error record) is appended to the output file and forced to disk as soon as it is done,
so the file stays valid after Ctrl-C or a kill; a record torn by a kill in the middle of its write is cut off when
the file is opened again (framefusion/apps/caption/records.py). Re-running the same command skips videos that already have
a caption made with the same settings (model, profile, prompt, frame sampling) and retries the ones that failed.

Frames are decoded in a child process that never outlives this one (framefusion/apps/caption/decoder.py); it decodes
the next video while the model works on the current one. `caption_one_video` is the one way a video becomes a
record: this module's `CaptionRun` calls it in one process, framefusion/apps/caption/ray_engine.py in each Ray worker.

    run = CaptionRun(folder, settings, output)   # checks the folder, opens the output file, lists the work
    summary = run.run(qa)
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from framefusion.apps.caption.decoder import DecodeTimeout, DecodeWorker, decode_video, one_line_error
from framefusion.apps.caption.records import (
    CSV_COLUMNS,
    FORMATS,
    CaptionFile,
    check_output_path,
    complete_prefix_length,
    flatten_record,
    is_caption,
    resolve_format,
    tokens_saved,
    settings_key,
)
from framefusion.apps.caption.folder import VIDEO_EXTENSIONS, FolderListing, check_folder, find_videos
from framefusion.errors import InputError, Suggestion, VideoError

DEFAULT_PROMPT = "Describe this video in detail."
# The `worker` of records captioned in this process, as opposed to a Ray worker's "<node>:<pid>".
LOCAL_WORKER = "local"


# --------------------------------------------------------------------------------------------------------
# Settings and records
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSettings:
    """What a caption depends on, plus how hard to try.

    model: the canonical model name; profile: the reduction profile's name. frames: frames sampled uniformly
    (used when fps is None); fps: sample at this rate instead, at most max_frames frames.
    timeout: seconds allowed for one video (decoding and the model), None for no limit.
    """

    model: str
    profile: str
    prompt: str
    frames: int | None = 32
    fps: float | None = None
    max_frames: int = 64
    max_new_tokens: int = 128
    backend: str = "auto"
    timeout: float | None = None

    def sampling(self) -> dict[str, Any]:
        """The frame sampling as it goes into a record: one of frames or fps is None."""
        if self.fps is not None:
            return {"frames": None, "fps": float(self.fps), "max_frames": int(self.max_frames)}
        return {"frames": int(self.frames), "fps": None, "max_frames": None}

    def key(self) -> tuple[str, ...]:
        """What makes two captions of one video the same: model, profile, prompt and frame sampling."""
        return settings_key({"model": self.model, "profile": self.profile, "prompt": self.prompt, **self.sampling()})


def software_versions() -> dict[str, str]:
    import torch
    import transformers

    from framefusion import __version__

    return {"framefusion": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def caption_record(video: str, settings: CaptionSettings, result: Any, versions: dict[str, str],
                   worker: str = LOCAL_WORKER) -> dict[str, Any]:
    """The record of one captioned video. result: an AskResult; worker: who captioned it."""
    sampling = settings.sampling()
    if settings.fps is not None:
        sampling["frames"] = result.tokens.frames  # sampled by rate, the count depends on the length
    return {
        "video": video,
        "caption": result.answer,
        "model": settings.model,
        "profile": settings.profile,
        "prompt": settings.prompt,
        **sampling,
        "new_tokens": result.new_tokens,
        "tokens": result.tokens.to_dict(),
        "timings": result.timings.to_dict(),
        "versions": versions,
        "worker": worker,
    }


def error_record(video: str, settings: CaptionSettings, message: str, versions: dict[str, str],
                 worker: str | None = LOCAL_WORKER, *, unreadable: bool = False) -> dict[str, Any]:
    """worker: who tried the video; None when no worker came back with it. unreadable: the video cannot be decoded
    (not retried by a re-run unless asked), unlike a timeout or a model failure."""
    return {
        "video": video,
        "error": message,
        "unreadable": unreadable,
        "model": settings.model,
        "profile": settings.profile,
        "prompt": settings.prompt,
        **settings.sampling(),
        "versions": versions,
        "worker": worker,
    }


# --------------------------------------------------------------------------------------------------------
# Bounding the model's work on one video
# --------------------------------------------------------------------------------------------------------


class ModelTimeout(Exception):
    """The model's work on one video passed its deadline."""


@contextmanager
def deadline_for_modules(deadline: float | None) -> Iterator[None]:
    """Raise ModelTimeout at the next module call after time.monotonic() passes `deadline`.

    The check runs before every module's forward (vision encoder, each layer, each decode step), so the work
    stops within one layer's time; nothing is checked when deadline is None.
    """
    if deadline is None:
        yield
        return
    import torch

    def check(module: Any, inputs: Any) -> None:
        if time.monotonic() > deadline:
            raise ModelTimeout()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------------------


@dataclass
class CaptionSummary:
    """What a run did. Video names are relative to the folder."""

    total: int = 0
    captioned: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, error)
    already_done: list[str] = field(default_factory=list)
    already_failed: list[str] = field(default_factory=list)  # found unreadable by an earlier run, not retried
    not_videos: list[str] = field(default_factory=list)
    tokens_saved: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    repaired_bytes: int = 0
    output: str = ""

    @property
    def all_captioned(self) -> bool:
        return not self.failed and not self.already_failed and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "videos": self.total,
            "captioned": list(self.captioned),
            "failed": [{"video": video, "error": error} for video, error in self.failed],
            "skipped_already_captioned": list(self.already_done),
            "skipped_failed_before": list(self.already_failed),
            "skipped_not_videos": list(self.not_videos),
            "tokens_saved": self.tokens_saved,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "repaired_torn_record_bytes": self.repaired_bytes,
        }


class CaptionEvents:
    """What a run reports as it goes; the CLI draws a progress bar from it. Every method does nothing here."""

    def workers_planned(self, plan: Any) -> None:
        """A distributed engine chose its pool (framefusion.apps.caption.ray_engine.WorkerPlan)."""

    def started(self, pending: int) -> None: ...

    def video_started(self, video: str) -> None: ...

    def video_finished(self, video: str, record: dict[str, Any]) -> None: ...


class CaptionRun:
    """Caption the videos of `folder` that `output` does not hold a caption of yet (same settings).

    Creating it checks the folder and the output file, reads the records already there and lists the work, all
    without a model; `run(qa)` does the work with a loaded `VideoQA`.
    """

    def __init__(self, folder: str | os.PathLike, settings: CaptionSettings, output: str | os.PathLike, *,
                 format: str | None = None, recursive: bool = False, retry_failed: bool = False):
        if not settings.prompt.strip():
            raise InputError("is empty: say what the captions should describe", setting="prompt", value=settings.prompt)
        self.folder = check_folder(folder)
        self.output = check_output_path(output)
        self.settings = settings
        self.file = CaptionFile(self.output, resolve_format(output, format))
        listing = find_videos(self.folder, recursive=recursive, exclude=(self.output,))
        if not listing.videos:
            below = [] if recursive else find_videos(self.folder, recursive=True, exclude=(self.output,)).videos
            raise InputError(
                "holds no videos" + (f" directly ({len(below)} in its subfolders)" if below else ""),
                setting="folder", value=str(self.folder),
                suggestions=[Suggestion("caption the subfolders too", setting="recursive")] if below else ())
        done = self.file.caption_keys()
        # A video already recorded as unreadable under these settings is not tried again unless asked: its error
        # would only be written once more.
        failed_before = set() if retry_failed else self.file.unreadable_keys() - done
        key = settings.key()
        self.pending = [video for video in listing.videos if (video, key) not in done | failed_before]
        self.summary = CaptionSummary(
            total=len(listing.videos),
            already_done=[video for video in listing.videos if (video, key) in done],
            already_failed=[video for video in listing.videos if (video, key) in failed_before],
            not_videos=list(listing.others),
            repaired_bytes=self.file.repaired_bytes,
            output=str(self.output),
        )

    def prefetch(self, decoder: DecodeWorker) -> None:
        """Start decoding the first pending video (e.g. while the model loads)."""
        if self.pending:
            decoder.submit(str(self.folder / self.pending[0]), self.settings)

    def record(self, video: str, record: dict[str, Any], events: CaptionEvents) -> None:
        """Append one video's record to the file and count it (every engine reports its results here)."""
        self.file.append(record)
        if is_caption(record):
            self.summary.captioned.append(video)
            self.summary.tokens_saved += tokens_saved(record)
        else:
            self.summary.failed.append((video, record["error"]))
        events.video_finished(video, record)

    def run(self, qa: Any, *, events: CaptionEvents | None = None,
            worker: DecodeWorker | None = None, cache: Any = None) -> CaptionSummary:
        """Caption every pending video in this process. worker: the decoder child to use (one is made if None);
        cache: the vision-feature cache (None: off).

        On KeyboardInterrupt the current video is dropped (no record), the summary is marked interrupted, and the
        interrupt propagates."""
        events = events or CaptionEvents()
        decoder = worker or DecodeWorker()
        versions = software_versions()
        started = time.perf_counter()
        events.started(len(self.pending))
        try:
            if self.pending and decoder.pending is None:
                self.prefetch(decoder)
            for index, video in enumerate(self.pending):
                events.video_started(video)
                following = self.pending[index + 1] if index + 1 < len(self.pending) else None
                record = caption_one_video(qa, self.folder, video, self.settings, decoder, versions,
                                           following=following, cache=cache)
                self.record(video, record, events)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            raise
        finally:
            decoder.stop()
            self.summary.seconds = time.perf_counter() - started
        return self.summary


def caption_one_video(qa: Any, folder: Path, video: str, settings: CaptionSettings, decoder: DecodeWorker,
                      versions: dict[str, str], *, following: str | None = None,
                      worker: str = LOCAL_WORKER, cache: Any = None) -> dict[str, Any]:
    """The record (caption or error) of `video` (relative to `folder`); never raises for one video's failure.

    The decoder must already have `video` submitted, or nothing pending (then it is submitted here); following: the
    video to decode next while the model works on this one. worker: goes into the record. cache: the vision-feature
    cache (feature_cache.FeatureCache; None: off): a hit skips decoding and the vision encoder.
    """
    from framefusion.pipeline.preflight import cached_video, feature_key, keep_features

    timeout = settings.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    path = str(folder / video)
    key = hit = None
    if cache is not None:
        try:
            key = feature_key(qa, _run_sampling(settings), path)
            hit = cached_video(qa, cache, key, path)
        except OSError:
            key = None  # unreadable file: decoding reports it
    if hit is not None and decoder.pending != path:
        if following is not None:
            decoder.submit(str(folder / following), settings)
        return _caption_prepared(qa, video, path, settings, hit, versions, worker, deadline, timeout)
    if decoder.pending is None:
        decoder.submit(path, settings)
    try:
        clip, decode_seconds = decoder.result(timeout)
    except VideoError as error:
        if following is not None:
            decoder.submit(str(folder / following), settings)
        # A decoder that ran out of time may do in more: only a video that cannot be decoded is recorded unreadable.
        return error_record(video, settings, one_line_error(error, path), versions, worker,
                            unreadable=not isinstance(error, DecodeTimeout))
    if following is not None:
        decoder.submit(str(folder / following), settings)
    if hit is not None:  # decoded while the previous video ran (prefetch): the cached features serve all the same
        return _caption_prepared(qa, video, path, settings, hit, versions, worker, deadline, timeout)
    try:
        if deadline is not None and time.monotonic() > deadline:
            raise ModelTimeout()
        with deadline_for_modules(deadline):
            prepared = keep_features(qa, cache, key, qa.prepare_video(clip, decode_seconds))
    except ModelTimeout:
        return error_record(video, settings, _model_timeout_message(timeout), versions, worker)
    except Exception as error:  # noqa: BLE001 - one video's failure must not stop the batch
        return error_record(video, settings, one_line_error(error, path), versions, worker)
    return _caption_prepared(qa, video, path, settings, prepared, versions, worker, deadline, timeout)


def _run_sampling(settings: CaptionSettings) -> dict[str, Any]:
    """The sampling as preflight.RunSettings.sampling() spells it, so caption and ask share feature-cache entries."""
    return {"frames": settings.frames if settings.fps is None else None, "fps": settings.fps,
            "max_frames": settings.max_frames, "start": None, "end": None}


def _model_timeout_message(timeout: float | None) -> str:
    return (f"timeout={timeout:g}: the model took longer than this allows for one video; raise it or sample "
            "fewer frames")


def _caption_prepared(qa: Any, video: str, path: str, settings: CaptionSettings, prepared: Any,
                      versions: dict[str, str], worker: str, deadline: float | None,
                      timeout: float | None) -> dict[str, Any]:
    from framefusion.pipeline.video_qa import ask_video

    try:
        if deadline is not None and time.monotonic() > deadline:
            raise ModelTimeout()
        with deadline_for_modules(deadline):
            result = ask_video(qa, prepared, [settings.prompt], max_new_tokens=settings.max_new_tokens)[0]
    except ModelTimeout:
        return error_record(video, settings, _model_timeout_message(timeout), versions, worker)
    except Exception as error:  # noqa: BLE001 - one video's failure must not stop the batch
        return error_record(video, settings, one_line_error(error, path), versions, worker)
    return caption_record(video, settings, result, versions, worker)


__all__ = [
    "CSV_COLUMNS", "DEFAULT_PROMPT", "FORMATS", "LOCAL_WORKER", "VIDEO_EXTENSIONS", "CaptionEvents", "CaptionFile",
    "CaptionRun", "CaptionSettings", "CaptionSummary", "DecodeTimeout", "DecodeWorker", "FolderListing",
    "caption_one_video", "caption_record", "check_folder", "check_output_path", "complete_prefix_length",
    "decode_video", "error_record", "find_videos", "flatten_record", "is_caption", "resolve_format", "settings_key",
]
