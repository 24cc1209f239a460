"""The caption output file: append-only JSONL or CSV records, each forced to disk, torn tails cut off on open.

Every caption engine (one process, or a Ray cluster whose driver writes what the workers send back) appends
through `CaptionFile`, so the schema, the resume rule (`settings_key`) and the crash safety are the same.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from framefusion.errors import InputError, Suggestion

FORMATS = ("jsonl", "csv")

_TOKEN_COLUMNS = ("frames", "visual", "prompt", "final", "cost", "requested_cost")
_TIMING_COLUMNS = ("decode_video", "preprocess", "vision", "prefill", "generate", "total")
_VERSION_COLUMNS = ("framefusion", "transformers", "torch")
_SUMMARY_COLUMNS = (
    tuple(f"tokens_{name}" for name in _TOKEN_COLUMNS)
    + tuple(f"timings_{name}" for name in _TIMING_COLUMNS)
    + tuple(f"versions_{name}" for name in _VERSION_COLUMNS)
)
_RECORD_COLUMNS = ("video", "caption", "error", "model", "profile", "prompt", "frames", "fps", "max_frames", "new_tokens")
# `worker` (who captioned the video) and `unreadable` (an error that a re-run would only repeat) came after the first
# files were written; they go last so that those files, whose header lacks them, are still read and appended to in
# their own columns.
CSV_COLUMNS = _RECORD_COLUMNS + _SUMMARY_COLUMNS + ("worker", "unreadable")
_OLDER_CSV_COLUMNS = (CSV_COLUMNS[:-1], CSV_COLUMNS[:-2])


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


def tokens_saved(record: dict[str, Any]) -> int:
    """Tokens FrameFusion removed from this video's prompt by the last layer (0 for error records)."""
    tokens = record.get("tokens") or {}
    if not tokens:
        return 0
    return max(0, int(tokens.get("prompt", 0)) - int(tokens.get("final", 0)))


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one CSV row: token and timing summaries as columns, per-layer lists left out."""
    row = {name: record.get(name) for name in _RECORD_COLUMNS + ("worker", "unreadable")}
    for prefix, names in (("tokens", _TOKEN_COLUMNS), ("timings", _TIMING_COLUMNS), ("versions", _VERSION_COLUMNS)):
        values = record.get(prefix) or {}
        for name in names:
            row[f"{prefix}_{name}"] = values.get(name)
    return {name: "" if row.get(name) is None else row[name] for name in CSV_COLUMNS}


def check_output_path(output: str | os.PathLike) -> Path:
    """Raise InputError unless `output` can be created or appended to (before any model is loaded)."""
    path = Path(output)
    if path.is_dir():
        raise InputError("is a folder; name a file", setting="output", value=path,
                         suggestions=[Suggestion("for example", setting="output", value=path / "captions.jsonl")])
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"the folder {parent} does not exist; create it or choose another path",
                         setting="output", value=path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError("the file is not writable; fix its permissions or choose another path",
                         setting="output", value=path)
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {parent}; choose another folder", setting="output", value=path)
    return path


def resolve_format(output: str | os.PathLike, format: str | None) -> str:
    """The format given, else csv for a .csv output and jsonl otherwise. A format the file's extension contradicts
    (caps.csv as jsonl) is refused: records of one format appended to a file of the other are lost to both."""
    suffix = Path(output).suffix.lower()
    if format is None:
        return "csv" if suffix == ".csv" else "jsonl"
    if format not in FORMATS:
        raise InputError("unknown format: use jsonl or csv", setting="format", value=format)
    named = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix)
    if named is not None and named != format:
        raise InputError(f"the output's extension says {named}: leave the format out, or name a file that fits",
                         setting="format", value=format)
    return format


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
        self.columns = CSV_COLUMNS
        self.repaired_bytes = 0
        self.unreadable_lines = 0
        self.records: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        self._check_holds_this_format(data)
        keep = _complete_prefix_length_jsonl(data) if self.format == "jsonl" else complete_prefix_length(data)
        if keep < len(data):
            # The tail is what a kill left in the middle of a write: drop it so the next record starts clean.
            os.truncate(self.path, keep)
            self.repaired_bytes = len(data) - keep
        text = data[:keep].decode("utf-8", errors="replace")
        return self._parse_jsonl(text) if self.format == "jsonl" else self._parse_csv(text)

    def _check_holds_this_format(self, data: bytes) -> None:
        # Before anything is repaired or appended: a JSON-lines file starts with "{", a CSV file with its header.
        start = data.lstrip()[:1]
        if not start:
            return
        holds = "jsonl" if start == b"{" else "csv"
        if holds != self.format:
            raise InputError(f"already holds {holds} records, not {self.format}: use format {holds}, or another file",
                             setting="output", value=self.path)

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
        columns = tuple(reader.fieldnames or ())
        if columns not in (CSV_COLUMNS, *_OLDER_CSV_COLUMNS):
            raise InputError("is a CSV file with other columns than caption records; choose another file",
                             setting="output", value=self.path)
        self.columns = columns
        return [dict(row) for row in reader]

    def caption_keys(self) -> set[tuple[str, tuple[str, ...]]]:
        """(video, settings key) of every caption in the file (error records not included)."""
        return {(record["video"], settings_key(record)) for record in self.records if is_caption(record)}

    def unreadable_keys(self) -> set[tuple[str, tuple[str, ...]]]:
        """(video, settings key) of every error record of a video that could not be read (a re-run would only fail
        the same way; a timeout or a model failure is tried again)."""
        return {(record["video"], settings_key(record)) for record in self.records
                if not is_caption(record) and str(record.get("unreadable")).lower() == "true"}

    def append(self, record: dict[str, Any]) -> None:
        data = self._serialise(record)
        with _signals_held():
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self.format == "csv" and os.fstat(descriptor).st_size == 0:
                    data = self._csv_line(dict(zip(self.columns, self.columns))) + data
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

    def _csv_line(self, row: dict[str, Any]) -> bytes:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore").writerow(row)
        return buffer.getvalue().encode("utf-8")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while one record is written and synced, so it is never half written by our
    own hand; they take effect as soon as the write is done. Nothing else in caption holds them."""
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


__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "CaptionFile",
    "check_output_path",
    "complete_prefix_length",
    "flatten_record",
    "is_caption",
    "resolve_format",
    "settings_key",
]
