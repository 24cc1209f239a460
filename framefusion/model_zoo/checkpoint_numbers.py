"""The numbers that size a model's memory, read from a checkpoint before loading it: parameter counts from
safetensors headers or the index, configs and processor settings, from a local folder, the hub's small JSON files, a
tiny checkpoint or a shipped real shape. Never trusting them: a strange or hostile file gives no numbers (None), not a
crash; the estimate (framefusion/model_zoo/memory.py) is then skipped.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from framefusion.families import family_for_model_type
from framefusion.families.base import Family
from framefusion.families.config_numbers import is_positive_number, positive_int, text_config_of

if TYPE_CHECKING:
    from framefusion.model_zoo import ModelSpec

logger = logging.getLogger(__name__)

# Used for a family whose tokens per frame cannot be read from its configs.
FALLBACK_TOKENS_PER_FRAME = 256

# A safetensors header larger than this is not read (a real one is a few MB at most).
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20
MAX_CONFIG_BYTES = 4 << 20
_CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}



@dataclass(frozen=True)
class ModelNumbers:
    """What sizes a model's memory: its parameter count (and where it came from) and its KV cache shape."""

    parameter_count: int
    parameter_source: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    tokens_per_frame: int
    # Layers whose KV cache grows with the prompt: all of them but in hybrid stacks (Qwen3.5's linear-attention
    # layers keep a fixed-size state instead).
    cache_layers: int = 0

    def __post_init__(self) -> None:
        if not self.cache_layers:
            object.__setattr__(self, "cache_layers", self.num_layers)


def count_parameters_from_config(config: Mapping[str, Any]) -> int:
    """Parameters of a decoder-only video LLM from its config.json numbers: embeddings, decoder layers (attention
    with biases, gated MLP, norms), output head unless tied, vision tower and projector. Raises KeyError,
    TypeError or ValueError on a config without the numbers."""
    text = text_config_of(config)
    hidden = positive_int(text, "hidden_size")
    heads = positive_int(text, "num_attention_heads")
    kv_heads = positive_int(text, "num_key_value_heads", default=heads)
    head_dim = positive_int(text, "head_dim", default=hidden // heads)
    layers = positive_int(text, "num_hidden_layers")
    vocab = positive_int(text, "vocab_size")
    intermediate = positive_int(text, "intermediate_size")
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    attention += heads * head_dim + 2 * kv_heads * head_dim  # q, k, v biases (Qwen2); tiny when absent
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    family = _family_of_config(config)
    decoder = family.language_parameters(text)
    language = (layers * per_layer if decoder is None else decoder) + hidden + vocab * hidden * (1 if tied else 2)
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        return language
    return language + family.vision_parameters(vision, hidden)


def tokens_per_frame_from_config(config: Mapping[str, Any], processor: Mapping[str, Any] | None = None,
                                 frame_size: tuple[int, int] | None = None) -> int:
    """Visual tokens one frame becomes in the language model's prompt, at most, as the model's family counts them.

    processor: the (video) processor settings; frame_size: (width, height) of the video when known, else the
    processor's largest frame is assumed.
    """
    tokens = _family_of_config(config).tokens_per_frame_from_config(config, processor, frame_size)
    return FALLBACK_TOKENS_PER_FRAME if tokens is None else tokens


def _family_of_config(config: Mapping[str, Any]) -> Family:
    """The registered family of a config.json dict's model_type; the generic Family() for any other model."""
    return family_for_model_type(str(config.get("model_type", ""))) or Family()


def model_numbers_from_config(config: Mapping[str, Any], *, processor: Mapping[str, Any] | None = None,
                              frame_size: tuple[int, int] | None = None, parameter_count: int | None = None,
                              parameter_source: str = "config.json") -> ModelNumbers:
    """ModelNumbers from config.json (and the processor settings); parameter_count overrides the computed one."""
    text = text_config_of(config)
    hidden = positive_int(text, "hidden_size")
    heads = positive_int(text, "num_attention_heads")
    if parameter_count is None:
        parameter_count, parameter_source = count_parameters_from_config(config), "config.json"
    return ModelNumbers(
        parameter_count=int(parameter_count),
        parameter_source=parameter_source,
        num_layers=positive_int(text, "num_hidden_layers"),
        num_attention_heads=heads,
        num_kv_heads=positive_int(text, "num_key_value_heads", default=heads),
        head_dim=positive_int(text, "head_dim", default=hidden // heads),
        hidden_size=hidden,
        intermediate_size=positive_int(text, "intermediate_size"),
        tokens_per_frame=tokens_per_frame_from_config(config, processor, frame_size),
        cache_layers=_family_of_config(config).cache_layers(text),
    )


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
