"""Vision features kept across runs, so that asking about the same video again skips decoding and the vision encoder.

One entry per (video content, sampling, stages before the vision encoder, model, dtype, device type): a single
safetensors file holding the encoder's output tensors, with the structure of that output and the clip's description
(timestamps, rates, frame count and size: all a prompt needs without the frames) in its metadata.

Safe by construction rather than by locks: an entry is written to a temporary file in its own folder and renamed into
place (a reader sees a whole entry or none, with any number of processes); a read that fails (truncated, garbage,
unreadable) counts as a miss, warns once and drops the entry; a write that fails (read-only folder, full disk) warns
once and the run goes on. The folder is capped in size; the least recently used entries go first (a hit touches its
file). Nothing here knows a model family: the feature structure is recorded generically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from framefusion.errors import first_line

ENTRY_SUFFIX = ".safetensors"
DEFAULT_MAX_BYTES = 4 * 10**9
# Bytes hashed at each end of a video file: enough to tell edited files apart at once, cheap on any size.
HASHED_BYTES = 1 << 20
# Bump when the entry layout changes: older entries then simply miss.
FORMAT_VERSION = "1"


def default_cache_folder() -> Path:
    """$FRAMEFUSION_FEATURE_CACHE, else the `features` folder of framefusion's cache folder ($FRAMEFUSION_CACHE,
    else the platform's user cache folder)."""
    if explicit := os.environ.get("FRAMEFUSION_FEATURE_CACHE"):
        return Path(explicit).expanduser()
    from framefusion.model_zoo.loading import framefusion_cache_dir

    return framefusion_cache_dir() / "features"


def video_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a video file's content: size, modification time and a hash of its first and last MiB."""
    path = Path(path)
    status = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(HASHED_BYTES))
        if status.st_size > 2 * HASHED_BYTES:
            handle.seek(-HASHED_BYTES, os.SEEK_END)
        digest.update(handle.read(HASHED_BYTES))
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256_ends": digest.hexdigest()}


def cache_key(*, video: Mapping[str, Any], sampling: Mapping[str, Any], stages: Any, model: str, dtype: str,
              device_type: str) -> str:
    """The entry name for everything that changes the features (see the module docstring). All JSON-able."""
    described = json.dumps(
        {"format": FORMAT_VERSION, "video": video, "sampling": sampling, "stages": stages, "model": model,
         "dtype": dtype, "device_type": device_type},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()[:40]


@dataclass
class CachedVideo:
    """An entry: the encoder's output for the sampled frames, and the clip described without its frames.

    features: what the family's encoder returned (a transformers ModelOutput, tensors, tuples, lists, None).
    clip: the VideoClip's fields but `frames` (timestamps, rates, span, path, backend), plus frame_shape (T, H, W, 3).
    details: anything else the caller needs to report the same thing again (e.g. frames encoded, model name).
    """

    modality: str
    features: Any
    clip: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheInfo:
    folder: str
    entries: int
    bytes: int
    max_bytes: int


class FeatureCache:
    """The cache folder. Methods never raise for the cache's own troubles: they warn and carry on without it."""

    def __init__(self, folder: str | os.PathLike | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = Path(folder) if folder is not None else default_cache_folder()
        self.max_bytes = max_bytes
        self._warned: set[str] = set()

    # --- reading ---------------------------------------------------------------------------------------------------
    def load(self, key: str, device: torch.device | str = "cpu") -> CachedVideo | None:
        """The entry for `key` with its tensors on `device`, or None (a miss: absent, or unreadable and dropped)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            from safetensors.torch import load_file
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path), device=str(device))
            if metadata.get("format") != FORMAT_VERSION:
                return None
            entry = CachedVideo(
                modality=metadata["modality"],
                features=_rebuild(json.loads(metadata["structure"]), tensors),
                clip=json.loads(metadata["clip"]),
                details=json.loads(metadata.get("details", "{}")),
            )
        except Exception as error:  # noqa: BLE001 - any unreadable entry is a miss, never a crash or a wrong answer
            self._warn("read", f"framefusion: ignoring a damaged feature-cache entry {path.name} "
                               f"({first_line(error)[:160]})")
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # least recently used goes first
        return entry

    # --- writing ---------------------------------------------------------------------------------------------------
    def store(self, key: str, entry: CachedVideo) -> bool:
        """Write the entry atomically and keep the folder under its cap; False (with one warning) when it cannot."""
        path = self._path(key)
        tensors: dict[str, torch.Tensor] = {}
        structure = _flatten(entry.features, tensors)
        metadata = {
            "format": FORMAT_VERSION,
            "modality": entry.modality,
            "structure": json.dumps(structure),
            "clip": json.dumps(entry.clip),
            "details": json.dumps(entry.details),
        }
        temporary = None
        try:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=ENTRY_SUFFIX, dir=path.parent)
            os.close(handle)
            # Copies: safetensors refuses tensors that share memory (an output may hold one tensor twice).
            save_file({name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}, temporary,
                      metadata=metadata)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
            os.replace(temporary, path)
        except OSError as error:
            self._warn("write", f"framefusion: cannot write the feature cache in {self.folder} "
                                f"({error.strerror or error}); going on without it")
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            return False
        self._evict(keep=path)
        return True

    # --- housekeeping ----------------------------------------------------------------------------------------------
    def info(self) -> CacheInfo:
        entries = list(self._entries())
        return CacheInfo(str(self.folder), len(entries), sum(size for _, size, _ in entries), self.max_bytes)

    def clear(self, *, model: str | None = None, older_than_seconds: float | None = None) -> int:
        """Remove entries (all; or those of one model; or those unused for longer than older_than_seconds)."""
        now = time.time()
        removed = 0
        for path, _size, used in list(self._entries()):
            if older_than_seconds is not None and now - used < older_than_seconds:
                continue
            if model is not None and self._model_of(path) != model:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def models(self) -> list[str]:
        """The models whose features the cache holds, sorted."""
        return sorted({model for path, _size, _used in self._entries() if (model := self._model_of(path))})

    def _entries(self) -> Iterator[tuple[Path, int, float]]:
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f"*/*{ENTRY_SUFFIX}"):
            if path.name.startswith(".partial-"):
                continue
            try:
                status = path.stat()
            except OSError:
                continue  # removed by another process meanwhile
            yield path, status.st_size, status.st_mtime

    def _evict(self, keep: Path) -> None:
        entries = sorted(self._entries(), key=lambda entry: entry[2])
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size

    def _model_of(self, path: Path) -> str | None:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return json.loads((handle.metadata() or {}).get("details", "{}")).get("model")
        except Exception:  # noqa: BLE001 - an unreadable entry belongs to no model
            return None

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, CacheWarning, stacklevel=3)


class CacheWarning(UserWarning):
    """The feature cache could not be used for one read or write; the run went on without it."""


# --- the structure of an encoder's output --------------------------------------------------------------------------
def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON description of `value` whose tensors are moved into `tensors` under generated names."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {"tensor": name}
    if isinstance(value, (list, tuple)):
        return {"sequence": type(value).__name__, "items": [_flatten(item, tensors) for item in value]}
    if isinstance(value, Mapping):
        cls = type(value)
        fields = [(key, item) for key, item in _mapping_items(value)]
        return {"mapping": f"{cls.__module__}.{cls.__qualname__}",
                "items": {key: _flatten(item, tensors) for key, item in fields}}
    raise TypeError(f"cannot store a {type(value).__name__} in the feature cache")


def _mapping_items(value: Mapping) -> list[tuple[str, Any]]:
    # A transformers ModelOutput is a dataclass whose unset fields are missing from its dict view: record every field.
    if dataclasses.is_dataclass(value):
        return [(item.name, getattr(value, item.name)) for item in dataclasses.fields(value)]
    return list(value.items())


def _rebuild(structure: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Any:
    if "value" in structure:
        return structure["value"]
    if "tensor" in structure:
        return tensors[structure["tensor"]]
    if "sequence" in structure:
        items = [_rebuild(item, tensors) for item in structure["items"]]
        return tuple(items) if structure["sequence"] == "tuple" else items
    items = {key: _rebuild(item, tensors) for key, item in structure["items"].items()}
    return _mapping_class(structure["mapping"])(**items)


def _mapping_class(qualified_name: str) -> type:
    """dict, or a transformers ModelOutput class: nothing else is ever imported from what a cache file says."""
    if qualified_name == "builtins.dict":
        return dict
    module_name, _, class_name = qualified_name.rpartition(".")
    if not module_name.startswith("transformers."):
        raise ValueError(f"unexpected output type {qualified_name!r}")
    from transformers.utils import ModelOutput

    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ModelOutput)):
        raise ValueError(f"unexpected output type {qualified_name!r}")
    return cls
