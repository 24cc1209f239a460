"""The numbers that size a model's memory, read from a checkpoint before loading it: parameter counts from
safetensors headers or the index, configs and processor settings, from a local folder, the hub's small JSON files, a
tiny checkpoint or a shipped real shape. Never trusting them: a strange or hostile file gives no numbers (None), not a
crash; the estimate (framefusion/memory.py) is then skipped.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from framefusion.memory import ModelNumbers, is_positive_number, model_numbers_from_config, text_config_of

if TYPE_CHECKING:
    from framefusion.model_zoo import ModelSpec

logger = logging.getLogger(__name__)

# A safetensors header larger than this is not read (a real one is a few MB at most).
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20
MAX_CONFIG_BYTES = 4 << 20
_CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def count_parameters_from_safetensors(paths: list[Path]) -> int | None:
    """Exact parameter count from the headers of .safetensors files (the tensors are not read); None if any
    header is missing, too large or malformed."""
    total = 0
    for path in paths:
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > MAX_SAFETENSORS_HEADER_BYTES:
                    return None
                header = json.loads(handle.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    total += math.prod(int(side) for side in entry["shape"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
            return None
    return total or None


def count_parameters_from_index(index: Mapping[str, Any], config: Mapping[str, Any]) -> int | None:
    """Parameters from a safetensors index's total size (bytes) and the checkpoint's stored dtype."""
    metadata = index.get("metadata")
    total_size = metadata.get("total_size") if isinstance(metadata, Mapping) else None
    if not is_positive_number(total_size):
        return None
    stored = config.get("dtype") or config.get("torch_dtype") or text_config_of(config).get("dtype") or "bfloat16"
    return int(total_size) // _CONFIG_DTYPE_BYTES.get(str(stored), 2)


def model_numbers_from_folder(folder: str | Path, frame_size: tuple[int, int] | None = None) -> ModelNumbers:
    """ModelNumbers of a checkpoint folder (config.json, processor configs, safetensors). Raises on a bad config."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    processor = _processor_settings(folder)
    index_path = folder / "model.safetensors.index.json"
    count, source = None, "config.json"
    if index_path.is_file():
        count, source = count_parameters_from_index(_read_json(index_path), config), "safetensors index"
    if count is None:
        files = sorted(folder.glob("*.safetensors"))
        count, source = (count_parameters_from_safetensors(files), "safetensors") if files else (None, source)
    return model_numbers_from_config(config, processor=processor, frame_size=frame_size, parameter_count=count,
                                     parameter_source=source if count is not None else "config.json")


def _processor_settings(folder: Path) -> dict[str, Any]:
    for name in ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            settings = _read_json(folder / name)
            nested = settings.get("video_processor")
            return dict(nested) if isinstance(nested, Mapping) else settings
    return {}


def _read_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _hub_folder(repo_id: str, revision: str | None) -> Path | None:
    """A local folder with the hub model's small JSON files (downloaded or from the cache); None when unreachable."""
    from huggingface_hub import hf_hub_download

    from framefusion.model_zoo.hub import hub_access

    with hub_access():  # from the local cache at once when the hub does not answer a quick probe
        config = hf_hub_download(repo_id, "config.json", revision=revision)
        for name in ("model.safetensors.index.json", "video_preprocessor_config.json", "preprocessor_config.json"):
            try:
                hf_hub_download(repo_id, name, revision=revision)
            except Exception:  # noqa: BLE001 - optional files: absent in many repositories
                pass
    return Path(config).parent


def model_numbers_for_spec(spec: ModelSpec, *, revision: str | None = None,
                           frame_size: tuple[int, int] | None = None) -> ModelNumbers | None:
    """ModelNumbers of any model spec before it is loaded; None when they cannot be known (offline hub model,
    a config without the numbers): the estimate is then skipped, never guessed."""
    from framefusion.model_zoo import SpecKind, ensure_tiny_checkpoint, load_shape

    try:
        if spec.kind is SpecKind.SHAPE:
            shape = load_shape(spec.target)
            return model_numbers_from_config(
                shape.config, processor=shape.processor.get("video_processor"), frame_size=frame_size,
                parameter_count=shape.parameter_count, parameter_source="shape")
        if spec.kind is SpecKind.TINY:
            return model_numbers_from_folder(ensure_tiny_checkpoint(spec.target), frame_size)
        if spec.kind is SpecKind.LOCAL:
            return model_numbers_from_folder(spec.target, frame_size)
        folder = _hub_folder(spec.target, revision)
        return None if folder is None else model_numbers_from_folder(folder, frame_size)
    except Exception as error:  # noqa: BLE001 - an estimate is advice: loading reports the real problem
        logger.debug("no memory estimate for %s: %s", spec.name, error)
        return None
