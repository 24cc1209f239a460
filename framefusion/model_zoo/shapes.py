"""Random weights at the real shape of published models, for speed benchmarks without downloads.

Each shape is a JSON file its family ships (shapes/<name>.json in the family's package under framefusion/families/,
see Family.shape_files()) that holds a published model's architecture (its config.json numbers, no weights), the
processor settings that decide how many tokens a video becomes, the hub id it copies, and its parameter count.
Compute does not depend on weight values, so timings on these match the real model. Before allocating anything
the memory need is compared with what the device has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from framefusion.errors import InputError
from framefusion.families import registered_families
from framefusion.model_zoo.building import (
    Blueprint,
    instantiate_random_model,
    make_config,
    make_processor,
    make_tokenizer,
)
from framefusion.model_zoo.kit import family_kit

if TYPE_CHECKING:
    from importlib.abc import Traversable

    import torch
    from transformers import PreTrainedModel, ProcessorMixin

# Beyond the weights: buffers, the KV cache and activations of a prompt of a few thousand tokens.
MEMORY_MARGIN_FRACTION = 0.10
MEMORY_MARGIN_BYTES = 1 << 30


@dataclass(frozen=True)
class ModelShape:
    """A published model's architecture. `parameter_count` is exact for `config` (tests recount it)."""

    name: str
    family: str
    source: str
    published_parameters_billions: float
    parameter_count: int
    config: dict[str, Any]
    processor: dict[str, Any]

    @property
    def blueprint(self) -> Blueprint:
        return Blueprint(family=self.family, config=self.config, processor=self.processor)


def list_shapes() -> tuple[str, ...]:
    """Names of the shapes the registered families ship, sorted, e.g. ("llava-onevision-qwen2-0.5b", ...)."""
    return tuple(sorted(_shape_files()))


def load_shape(name: str) -> ModelShape:
    """The shape called `name`; InputError listing the shipped ones otherwise."""
    files = _shape_files()
    if name not in files:
        raise InputError(f"unknown model shape {name!r}: use one of {', '.join(sorted(files))}")
    return ModelShape(**json.loads(files[name].read_text(encoding="utf-8")))


def _shape_files() -> dict[str, Traversable]:
    """Shape name -> its JSON file, over every registered family (a name an earlier family ships stays its)."""
    files: dict[str, Traversable] = {}
    for family in registered_families():
        for file in family.shape_files():
            files.setdefault(file.name.removesuffix(".json"), file)
    return files


def estimate_memory_bytes(parameter_count: int, dtype: torch.dtype) -> int:
    """Bytes a model needs: its weights in `dtype` plus a margin for buffers, cache and activations."""
    weights = parameter_count * dtype.itemsize
    return int(weights * (1 + MEMORY_MARGIN_FRACTION)) + MEMORY_MARGIN_BYTES


def available_memory_bytes(device: str) -> int | None:
    """Free memory on `device`: available RAM for "cpu", free GPU memory for "cuda[:i]"; None when unknown."""
    kind = device.split(":")[0]
    if kind == "cpu":
        import psutil

        return psutil.virtual_memory().available
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but no CUDA GPU is visible: use the cpu device")
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free
    return None


def check_memory_fits(shape: ModelShape, dtype: torch.dtype, device: str) -> None:
    """InputError with the estimate and what to change when `shape` in `dtype` will not fit on `device`."""
    needed = estimate_memory_bytes(shape.parameter_count, dtype)
    available = available_memory_bytes(device)
    if available is None or needed <= available:
        return
    hints = []
    if dtype.itemsize > 2 and estimate_memory_bytes(shape.parameter_count, _bfloat16()) <= available:
        hints.append("use bfloat16")
    smaller = [other for other in _shapes_smaller_than(shape) if estimate_memory_bytes(other[1], dtype) <= available]
    if smaller:
        hints.append(f"pick a smaller shape (random:{smaller[-1][0]})")
    hints.append("run on a GPU with more memory" if device.startswith("cuda") else "run on a GPU")
    raise InputError(
        f"random:{shape.name} needs about {needed / 1e9:.1f} GB in {_dtype_name(dtype)} "
        f"({shape.parameter_count / 1e9:.2f}B parameters) but {device} has {available / 1e9:.1f} GB free: "
        + ", or ".join(hints)
    )


def build_random_model(
    name: str,
    *,
    dtype: torch.dtype,
    device: str,
    attn_implementation: str | None = "sdpa",
    seed: int = 0,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model of shape `name` with random weights on `device` (eval mode) and its processor.

    Token ids in the config are those of a generated tokenizer; the vocabulary keeps its real size.
    Refuses (InputError) before allocating when the memory estimate exceeds what `device` has free.
    """
    shape = load_shape(name)
    check_memory_fits(shape, dtype, device)
    tokenizer = make_tokenizer(family_kit(shape.family))
    config = make_config(shape.blueprint, tokenizer)
    model = instantiate_random_model(
        config, dtype=dtype, device=device, seed=seed, attn_implementation=attn_implementation
    )
    return model, make_processor(shape.blueprint, tokenizer)


def _shapes_smaller_than(shape: ModelShape) -> list[tuple[str, int]]:
    """(name, parameter_count) of the other shapes of the same family with fewer parameters, smallest first."""
    others = [load_shape(name) for name in list_shapes()]
    smaller = [(o.name, o.parameter_count) for o in others if o.family == shape.family]
    return sorted(
        [(n, count) for n, count in smaller if count < shape.parameter_count],
        key=lambda item: item[1],
    )


def _bfloat16() -> torch.dtype:
    import torch

    return torch.bfloat16


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
