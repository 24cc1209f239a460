"""Caption every video of a folder with one loaded model, never losing finished work.

Each video's record (or error record) is appended to the output file and forced to disk as soon as it is done,
so the file stays valid after Ctrl-C or a kill; a record torn by a kill in the middle of its write is cut off when
the file is opened again. Re-running the same command skips videos that already have a caption made with the
same settings (model, profile, prompt, frame sampling) and retries the ones that failed.

Frames are decoded in a worker process: a decoder that aborts or segfaults on a corrupt file (decord can) takes
down only the worker, which is restarted, and the file gets an error record. The worker decodes the next video
while the model works on the current one.

    run = CaptionRun(qa, folder, settings, output)   # checks and opens the output file
    summary = run.run()
"""

from __future__ import annotations

import csv
import faulthandler
import io
import json
import multiprocessing
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

from framefusion.errors import InputError, VideoError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
FORMATS = ("jsonl", "csv")
DEFAULT_PROMPT = "Describe this video in detail."

_TOKEN_COLUMNS = ("frames", "visual", "prompt", "final", "cost", "requested_cost")
_TIMING_COLUMNS = ("decode_video", "preprocess", "vision", "prefill", "generate", "total")
_VERSION_COLUMNS = ("framefusion", "transformers", "torch")
_RECORD_COLUMNS = ("video", "caption", "error", "model", "profile", "prompt", "frames", "fps", "max_frames", "new_tokens")
CSV_COLUMNS = (
    _RECORD_COLUMNS
    + tuple(f"tokens_{name}" for name in _TOKEN_COLUMNS)
    + tuple(f"timings_{name}" for name in _TIMING_COLUMNS)
    + tuple(f"versions_{name}" for name in _VERSION_COLUMNS)
)


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


def settings_key(record: dict[str, Any]) -> tuple[str, ...]:
    """The settings part of a JSONL or CSV record (CSV cells are strings, JSON ones are numbers) as text."""

    def text(name: str) -> str:
        value = record.get(name)
        if value is None or value == "":
            return ""
        if name == "fps":
            return repr(float(value))
        if name in ("frames", "max_frames"):
            return str(int(float(value)))
        return str(value)

    if text("fps"):
        sampling = f"fps={text('fps')},max_frames={text('max_frames')}"
    else:
        sampling = f"frames={text('frames')}"
    return (text("model"), text("profile"), text("prompt"), sampling)


def is_caption(record: dict[str, Any]) -> bool:
    """A record holding a caption (not an error)."""
    return not record.get("error") and record.get("caption") is not None


def software_versions() -> dict[str, str]:
    import torch
    import transformers

    from framefusion import __version__

    return {"framefusion": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def caption_record(video: str, settings: CaptionSettings, result: Any, versions: dict[str, str]) -> dict[str, Any]:
    """The record of one captioned video. result: an AskResult."""
    sampling = settings.sampling()
    if settings.fps is not None:
        sampling["frames"] = result.tokens.frames  # with --fps the count depends on the video's length
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
    }


def error_record(video: str, settings: CaptionSettings, message: str, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "video": video,
        "error": message,
        "model": settings.model,
        "profile": settings.profile,
        "prompt": settings.prompt,
        **settings.sampling(),
        "versions": versions,
    }


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one CSV row: token and timing summaries as columns, per-layer lists left out."""
    row = {name: record.get(name) for name in _RECORD_COLUMNS}
    for prefix, names in (("tokens", _TOKEN_COLUMNS), ("timings", _TIMING_COLUMNS), ("versions", _VERSION_COLUMNS)):
        values = record.get(prefix) or {}
        for name in names:
            row[f"{prefix}_{name}"] = values.get(name)
    return {name: "" if row.get(name) is None else row[name] for name in CSV_COLUMNS}


def tokens_saved(record: dict[str, Any]) -> int:
    """Tokens FrameFusion removed from this video's prompt by the last layer (0 for error records)."""
    tokens = record.get("tokens") or {}
    if not tokens:
        return 0
    return max(0, int(tokens.get("prompt", 0)) - int(tokens.get("final", 0)))


# --------------------------------------------------------------------------------------------------------
# Finding videos and checking paths
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderListing:
    """videos: files with a video extension; others: every other file. Both sorted, paths relative to the folder."""

    videos: tuple[str, ...]
    others: tuple[str, ...]


def is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def find_videos(folder: str | os.PathLike, *, recursive: bool = False, exclude: tuple[Path, ...] = ()) -> FolderListing:
    """The files of `folder` (and its subfolders with recursive), split by extension, hidden files left out.

    exclude: files never listed (the output file, when it lies inside the folder).
    """
    root = Path(folder)
    excluded = {Path(os.path.realpath(path)) for path in exclude}
    pattern = root.rglob("*") if recursive else root.iterdir()
    videos, others = [], []
    for path in pattern:
        relative = path.relative_to(root)
        # A video-named entry that is no regular file (FIFO, link loop, dangling link) stays listed: reading it
        # fails with a clear error record instead of the file vanishing from the batch unnoticed.
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        if not path.is_file() and not is_video_name(path.name):
            continue
        if Path(os.path.realpath(path)) in excluded:  # realpath: a link loop must not raise here
            continue
        (videos if is_video_name(path.name) else others).append(relative.as_posix())
    return FolderListing(tuple(sorted(videos)), tuple(sorted(others)))


def check_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.exists():
        raise InputError(f"{path}: no such folder; check the path")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; pass the folder that holds the videos (use `framefusion ask` for one file)")
    return path


def check_output_path(output: str | os.PathLike) -> Path:
    """Raise InputError unless `output` can be created or appended to (before any model is loaded)."""
    path = Path(output)
    if path.is_dir():
        raise InputError(f"--output {path} is a folder; name a file, e.g. {path / 'captions.jsonl'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"--output {path}: the folder {parent} does not exist; create it or choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"--output {path}: the file is not writable; fix its permissions or choose another path")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--output {path}: cannot write in {parent}; choose another folder")
    return path


def resolve_format(output: str | os.PathLike, format: str | None) -> str:
    """The --format given, else csv for a .csv output and jsonl otherwise."""
    if format is None:
        return "csv" if Path(output).suffix.lower() == ".csv" else "jsonl"
    if format not in FORMATS:
        raise InputError(f"unknown --format {format!r}: use jsonl or csv")
    return format


# --------------------------------------------------------------------------------------------------------
# The output file
# --------------------------------------------------------------------------------------------------------


def complete_prefix_length(data: bytes) -> int:
    """Length of the part of `data` made of whole records, each ending in a newline outside CSV quotes.

    A record cut short by a kill during its write has no final newline (JSONL), or ends inside a quoted CSV
    field: it is left out. JSON lines hold no raw newlines or bare quotes outside strings, so the CSV rule
    (a record ends at a newline after an even number of quote characters) serves both formats.
    """
    end = 0
    quotes = 0
    for index, byte in enumerate(data):
        if byte == 0x22:  # '"'
            quotes += 1
        elif byte == 0x0A and quotes % 2 == 0:
            end = index + 1
    return end


def _complete_prefix_length_jsonl(data: bytes) -> int:
    # JSON strings escape their quotes as \" (still counted), so only newlines matter for JSONL.
    return data.rfind(b"\n") + 1


class CaptionFile:
    """An append-only JSONL or CSV file of caption records.

    Opening it reads the records already there and cuts off a torn last record. `append` writes one record
    with a single write and forces it to disk before returning.
    """

    def __init__(self, path: str | os.PathLike, format: str = "jsonl"):
        self.path = Path(path)
        self.format = resolve_format(path, format)
        self.repaired_bytes = 0
        self.unreadable_lines = 0
        self.records: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        keep = _complete_prefix_length_jsonl(data) if self.format == "jsonl" else complete_prefix_length(data)
        if keep < len(data):
            # The tail is what a kill left in the middle of a write: drop it so the next record starts clean.
            os.truncate(self.path, keep)
            self.repaired_bytes = len(data) - keep
        text = data[:keep].decode("utf-8", errors="replace")
        return self._parse_jsonl(text) if self.format == "jsonl" else self._parse_csv(text)

    def _parse_jsonl(self, text: str) -> list[dict[str, Any]]:
        records = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.unreadable_lines += 1
                continue
            if isinstance(record, dict) and "video" in record:
                records.append(record)
            else:
                self.unreadable_lines += 1
        return records

    def _parse_csv(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise InputError(
                f"--output {self.path} is a CSV file with other columns than framefusion caption writes; "
                "choose another --output"
            )
        return [dict(row) for row in reader]

    def caption_keys(self) -> set[tuple[str, tuple[str, ...]]]:
        """(video, settings key) of every caption in the file (error records not included)."""
        return {(record["video"], settings_key(record)) for record in self.records if is_caption(record)}

    def append(self, record: dict[str, Any]) -> None:
        data = self._serialise(record)
        with _signals_held():
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self.format == "csv" and os.fstat(descriptor).st_size == 0:
                    data = self._csv_line(dict(zip(CSV_COLUMNS, CSV_COLUMNS))) + data
                while data:
                    written = os.write(descriptor, data)
                    data = data[written:]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        self.records.append(record)

    def _serialise(self, record: dict[str, Any]) -> bytes:
        if self.format == "jsonl":
            return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        return self._csv_line(flatten_record(record))

    @staticmethod
    def _csv_line(row: dict[str, Any]) -> bytes:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n").writerow(row)
        return buffer.getvalue().encode("utf-8")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) back while a record is written, so it is never half written by our own hand."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --------------------------------------------------------------------------------------------------------
# Decoding in a worker process
# --------------------------------------------------------------------------------------------------------


def decode_video(path: str, settings: CaptionSettings) -> Any:
    """The frames of one video as `settings` sample them: a VideoClip."""
    from framefusion.video import check_frame_shape_for_model, read_video

    clip = read_video(path, num_frames=settings.frames if settings.fps is None else None, fps=settings.fps,
                      max_frames=settings.max_frames, backend=settings.backend)
    check_frame_shape_for_model(clip.width, clip.height, path)
    return clip


def _decode_loop(connection: Connection, decode: Callable[[str, CaptionSettings], Any]) -> None:
    """Worker body: decode each (path, settings) received; answer ("clip", clip, seconds) or ("error", message)."""
    # Ctrl-C reaches the whole process group; only the parent decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A crash here is reported by the parent as the file's error; a Python traceback dump would only be noise.
    faulthandler.disable()
    while True:
        try:
            path, settings = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        started = time.perf_counter()
        try:
            clip = decode(path, settings)
            reply: tuple = ("clip", clip, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure becomes the file's error record
            reply = ("error", one_line_error(error, path))
        try:
            connection.send(reply)
        except (BrokenPipeError, OSError):
            return


class DecodeTimeout(VideoError):
    """Decoding one video took longer than --timeout allows."""


class DecodeWorker:
    """One child process that decodes videos, one at a time, and is replaced when it dies or hangs.

    decode: the function run in the child, (path, settings) -> VideoClip (tests pass one that crashes).
    """

    def __init__(self, decode: Callable[[str, CaptionSettings], Any] = decode_video):
        self.decode = decode
        methods = multiprocessing.get_all_start_methods()
        # fork: the child needs no imports and starts in milliseconds; it never touches torch or the GPU.
        self._context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self.pending: str | None = None

    def start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent_end, child_end = self._context.Pipe()
        self._process = self._context.Process(target=_decode_loop, args=(child_end, self.decode), daemon=True,
                                              name="framefusion-decoder")
        self._process.start()
        child_end.close()
        self._connection = parent_end

    def submit(self, path: str, settings: CaptionSettings) -> None:
        self.start()
        self._connection.send((path, settings))
        self.pending = path

    def result(self, timeout: float | None = None) -> tuple[Any, float]:
        """The clip of the submitted video and the seconds its decoding took; VideoError when it failed."""
        path, self.pending = self.pending, None
        try:
            ready = self._connection.poll(timeout)
        except (EOFError, OSError):
            ready = True
        if not ready:
            self.stop()
            raise DecodeTimeout(f"decoding took longer than --timeout {timeout:g} s; raise --timeout or check the file")
        try:
            reply = self._connection.recv()
        except (EOFError, OSError):
            code = self._exit_code()
            self.stop()
            raise VideoError(
                f"the video decoder crashed on this file ({code}); it is probably corrupt: re-encode it "
                "(e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`)"
            ) from None
        if reply[0] == "error":
            raise VideoError(reply[1])
        return reply[1], reply[2]

    def _exit_code(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def stop(self) -> None:
        """Kill the child (it may be stuck in C code) and forget it; the next submit starts a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None
        self.pending = None


def one_line_error(error: BaseException, path: str | None = None) -> str:
    """An exception as one line, without the file's path in front (the record names the video already)."""
    from framefusion.errors import FrameFusionError

    message = " ".join(str(error).split()) or type(error).__name__
    if path and message.startswith(f"{path}: "):
        message = message[len(path) + 2:]
    if not isinstance(error, FrameFusionError):
        message = f"{type(error).__name__}: {message}"
    return message


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
    not_videos: list[str] = field(default_factory=list)
    tokens_saved: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    repaired_bytes: int = 0
    output: str = ""

    @property
    def all_captioned(self) -> bool:
        return not self.failed and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "videos": self.total,
            "captioned": list(self.captioned),
            "failed": [{"video": video, "error": error} for video, error in self.failed],
            "skipped_already_captioned": list(self.already_done),
            "skipped_not_videos": list(self.not_videos),
            "tokens_saved": self.tokens_saved,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "repaired_torn_record_bytes": self.repaired_bytes,
        }


class CaptionEvents:
    """What a run reports as it goes; the CLI draws a progress bar from it. Every method does nothing here."""

    def started(self, pending: int) -> None: ...

    def video_started(self, video: str) -> None: ...

    def video_finished(self, video: str, record: dict[str, Any]) -> None: ...


class CaptionRun:
    """Caption the videos of `folder` that `output` does not hold a caption of yet (same settings).

    Creating it checks the folder and the output file, reads the records already there and lists the work, all
    without a model; `run(qa)` does the work with a loaded `VideoQA`.
    """

    def __init__(self, folder: str | os.PathLike, settings: CaptionSettings, output: str | os.PathLike, *,
                 format: str | None = None, recursive: bool = False):
        if not settings.prompt.strip():
            raise InputError("the prompt is empty: say what the captions should describe")
        self.folder = check_folder(folder)
        self.output = check_output_path(output)
        self.settings = settings
        self.file = CaptionFile(self.output, resolve_format(output, format))
        listing = find_videos(self.folder, recursive=recursive, exclude=(self.output,))
        done = self.file.caption_keys()
        key = settings.key()
        self.pending = [video for video in listing.videos if (video, key) not in done]
        self.summary = CaptionSummary(
            total=len(listing.videos),
            already_done=[video for video in listing.videos if (video, key) in done],
            not_videos=list(listing.others),
            repaired_bytes=self.file.repaired_bytes,
            output=str(self.output),
        )

    def prefetch(self, worker: DecodeWorker) -> None:
        """Start decoding the first pending video (e.g. while the model loads)."""
        if self.pending:
            worker.submit(str(self.folder / self.pending[0]), self.settings)

    def run(self, qa: Any, *, events: CaptionEvents | None = None, worker: DecodeWorker | None = None) -> CaptionSummary:
        """Caption every pending video. On KeyboardInterrupt the current video is dropped (no record), the
        summary is marked interrupted, and the interrupt propagates."""
        events = events or CaptionEvents()
        worker = worker or DecodeWorker()
        versions = software_versions()
        started = time.perf_counter()
        events.started(len(self.pending))
        try:
            if self.pending and worker.pending is None:
                self.prefetch(worker)
            for index, video in enumerate(self.pending):
                events.video_started(video)
                following = self.pending[index + 1] if index + 1 < len(self.pending) else None
                record = self._caption_one(qa, video, following, worker, versions)
                self.file.append(record)
                if is_caption(record):
                    self.summary.captioned.append(video)
                    self.summary.tokens_saved += tokens_saved(record)
                else:
                    self.summary.failed.append((video, record["error"]))
                events.video_finished(video, record)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            raise
        finally:
            worker.stop()
            self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _caption_one(self, qa: Any, video: str, following: str | None, worker: DecodeWorker,
                     versions: dict[str, str]) -> dict[str, Any]:
        from framefusion.pipeline import ask_video

        timeout = self.settings.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        path = str(self.folder / video)
        try:
            clip, decode_seconds = worker.result(timeout)
        except VideoError as error:
            if following is not None:
                worker.submit(str(self.folder / following), self.settings)
            return error_record(video, self.settings, one_line_error(error, path), versions)
        # The worker decodes the next video while the model works on this one.
        if following is not None:
            worker.submit(str(self.folder / following), self.settings)
        try:
            if deadline is not None and time.monotonic() > deadline:
                raise ModelTimeout()
            with deadline_for_modules(deadline):
                result = ask_video(qa, clip, [self.settings.prompt], decode_seconds=decode_seconds,
                                   max_new_tokens=self.settings.max_new_tokens)[0]
        except ModelTimeout:
            message = f"took longer than --timeout {timeout:g} s; raise --timeout or use fewer --frames"
            return error_record(video, self.settings, message, versions)
        except Exception as error:  # noqa: BLE001 - one video's failure must not stop the batch
            return error_record(video, self.settings, one_line_error(error, path), versions)
        return caption_record(video, self.settings, result, versions)


__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_PROMPT",
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "CaptionEvents",
    "CaptionFile",
    "CaptionRun",
    "CaptionSettings",
    "CaptionSummary",
    "DecodeTimeout",
    "DecodeWorker",
    "FolderListing",
    "check_folder",
    "check_output_path",
    "complete_prefix_length",
    "decode_video",
    "find_videos",
    "flatten_record",
    "resolve_format",
    "settings_key",
]
