"""Will the model and its video fit? An estimate made before loading, and the same advice when memory runs out.

Estimate = weights + KV cache + prefill activations + a fixed overhead, in bytes:
  weights      parameters x dtype bytes. Parameters come, in order of preference, from the safetensors headers
               of a local checkpoint (exact), the safetensors index's total size, or the architecture numbers
               in config.json (within a few percent for the supported families).
  KV cache     prompt tokens x layers x 2 (keys and values) x kv_heads x head_dim x dtype bytes, with prompt
               tokens = visual tokens per frame x frames + TEXT_TOKENS. An upper bound: FrameFusion shortens
               the cache of later layers, the estimate counts every layer at full length.
  activations  the largest transient tensors of one prefill layer (MLP intermediates, hidden states; the
               attention scores with eager attention).
On the CPU the kernel kills a process that runs out of memory, so this estimate is the only defence there; on
a GPU a torch.OutOfMemoryError during generation is turned into the same advice (`reporting_out_of_memory`).
Nothing here raises on a strange or hostile config: the estimate is then None and loading reports the problem.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from framefusion.errors import OutOfMemory, Suggestion, WillNotFit

if TYPE_CHECKING:
    import torch

    from framefusion.families.base import Family
    from framefusion.model_zoo import ModelSpec

logger = logging.getLogger(__name__)

# Text of a prompt around the video (system prompt, question, chat markup), tokens: generous for a question.
TEXT_TOKENS = 512
# Python, the CUDA context, allocator slack and small buffers, bytes.
FIXED_OVERHEAD_BYTES = 512 << 20
# Used for a family whose tokens per frame cannot be read from its configs.
FALLBACK_TOKENS_PER_FRAME = 256
GIGABYTE = 1e9


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


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one model run needs, by part. frames: frames sampled; tokens: prompt tokens assumed."""

    weights: int
    kv_cache: int
    activations: int
    overhead: int
    frames: int
    tokens: int
    dtype: str
    parameter_count: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def summary(self) -> str:
        """One line: 'about 18.2 GB in bfloat16 (weights 16.6 GB, KV cache for 32 frames / 12,800 tokens 1.2 GB, ...)'."""
        return (
            f"about {_gb(self.total)} in {self.dtype} (weights {_gb(self.weights)} for "
            f"{self.parameter_count / 1e9:.2f}B parameters, KV cache {_gb(self.kv_cache)} for {self.frames} frames / "
            f"{self.tokens:,} tokens, activations {_gb(self.activations)}, overhead {_gb(self.overhead)})"
        )


# --------------------------------------------------------------------------------------------------------
# Pure arithmetic
# --------------------------------------------------------------------------------------------------------


def estimate_memory(numbers: ModelNumbers, *, frames: int, dtype_bytes: int, dtype_name: str,
                    attn_implementation: str = "sdpa", text_tokens: int = TEXT_TOKENS) -> MemoryEstimate:
    """The memory one prefill of `frames` frames needs (see the module docstring for each part)."""
    tokens = max(0, frames) * numbers.tokens_per_frame + text_tokens
    kv_cache = numbers.num_layers * 2 * numbers.num_kv_heads * numbers.head_dim * tokens * dtype_bytes
    # Gate, up and activated MLP tensors plus a few copies of the hidden states live at once in one layer.
    activations = tokens * (3 * numbers.intermediate_size + 4 * numbers.hidden_size) * dtype_bytes
    if attn_implementation == "eager":
        # Eager attention materialises heads x tokens x tokens scores, and their softmax.
        activations += 2 * numbers.num_attention_heads * tokens * tokens * dtype_bytes
    return MemoryEstimate(
        weights=numbers.parameter_count * dtype_bytes, kv_cache=kv_cache, activations=activations,
        overhead=FIXED_OVERHEAD_BYTES, frames=frames, tokens=tokens, dtype=dtype_name,
        parameter_count=numbers.parameter_count,
    )


def text_config_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (multimodal) config.json dict."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


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
    language = layers * per_layer + hidden + vocab * hidden * (1 if tied else 2)
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        return language
    return language + _family_of_config(config).vision_parameters(vision, hidden)


def vision_tower_parameters(vision: Mapping[str, Any], width: int) -> int:
    """A ViT `width` wide: its blocks (attention, MLP, norms) and its patch embedding (with learned position
    embeddings when the config gives an image_size)."""
    depth = positive_int(vision, "depth", default=None) if "depth" in vision else positive_int(
        vision, "num_hidden_layers")
    if "intermediate_size" in vision:
        mlp_width = positive_int(vision, "intermediate_size")
    else:
        mlp_width = int(positive_number(vision, "mlp_ratio", default=4) * width)
    gated = vision.get("hidden_act") == "silu"  # a gated (SwiGLU) MLP, as Qwen2.5-VL's vision blocks
    block = 4 * width * width + 4 * width + (3 if gated else 2) * width * mlp_width + 4 * width
    patch = positive_int(vision, "patch_size", default=14)
    channels = positive_int(vision, "in_channels", default=3)
    temporal = positive_int(vision, "temporal_patch_size", default=1)
    patch_embedding = channels * temporal * patch * patch * width
    if "image_size" in vision:  # SigLIP/CLIP: learned position embeddings, one per patch
        patch_embedding += (positive_int(vision, "image_size") // patch) ** 2 * width
    return depth * block + patch_embedding


def mlp_projector_parameters(width: int, output: int) -> int:
    """A two-layer MLP from the vision width to the language model's width (LLaVA's projector)."""
    return width * output + output + output * output + output


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
    from framefusion.families import family_for_model_type
    from framefusion.families.base import Family

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
    )


# --------------------------------------------------------------------------------------------------------
# Comparing with the device
# --------------------------------------------------------------------------------------------------------


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the model will live: available RAM for the CPU, free memory of a CUDA GPU; None when
    the device does not say (MPS)."""
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def check_memory_fits(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device, frames: int | None,
                      frame_size: tuple[int, int] | None = None, attn_implementation: str = "sdpa",
                      revision: str | None = None) -> MemoryEstimate | None:
    """Refuse (WillNotFit, with the estimate and what to change) a model run that cannot fit on `device`.

    frames None: only the weights are counted (the caller does not know the frames yet). Returns the estimate,
    or None when it cannot be made or the device does not report its free memory.
    """
    from framefusion.checkpoint_numbers import model_numbers_for_spec

    numbers = model_numbers_for_spec(spec, revision=revision, frame_size=frame_size)
    if numbers is None:
        return None
    dtype_name = str(dtype).removeprefix("torch.")
    estimate = estimate_memory(numbers, frames=frames or 0, dtype_bytes=dtype.itemsize, dtype_name=dtype_name,
                               attn_implementation=attn_implementation)
    available = available_memory_bytes(device)
    if available is None or estimate.total <= available:
        return estimate
    raise WillNotFit(
        f"{spec.name} needs {estimate.summary()} but {device} has {_gb(available)} free",
        suggestions=_ways_to_fit(numbers, estimate, available, dtype.itemsize, attn_implementation, device),
    )


def _ways_to_fit(numbers: ModelNumbers, estimate: MemoryEstimate, available: int, dtype_bytes: int,
                 attn_implementation: str, device: torch.device) -> list[Suggestion]:
    """What would make it fit: fewer frames, a 2-byte dtype, another device. Each is checked with the estimate."""
    suggestions = []
    frames_that_fit = _most_frames_that_fit(numbers, available, dtype_bytes, attn_implementation,
                                            upper=estimate.frames)
    if frames_that_fit:
        suggestions.append(Suggestion("sample fewer frames", setting="frames", value=frames_that_fit, reason="fits"))
    if dtype_bytes > 2:
        half = estimate_memory(numbers, frames=estimate.frames, dtype_bytes=2, dtype_name="bfloat16",
                               attn_implementation=attn_implementation)
        if half.total <= available:
            suggestions.append(Suggestion("use a 2-byte dtype", setting="dtype", value="bfloat16",
                                          reason=f"about {_gb(half.total)}"))
    if attn_implementation == "eager":
        suggestions.append(Suggestion("use the sdpa attention backend", setting="attn_implementation", value="sdpa"))
    suggestions.append(Suggestion("use a GPU with more free memory" if device.type == "cuda"
                                  else "use a GPU or a smaller model"))
    return suggestions


def _most_frames_that_fit(numbers: ModelNumbers, available: int, dtype_bytes: int, attn_implementation: str,
                          upper: int) -> int | None:
    """The largest even frame count below `upper` whose estimate fits, None when not even 2 frames fit."""
    def fits(frames: int) -> bool:
        return estimate_memory(numbers, frames=frames, dtype_bytes=dtype_bytes, dtype_name="",
                               attn_implementation=attn_implementation).total <= available

    low, high = 0, upper  # fits(low) is assumed, fits(high) is known false; the search keeps that true
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    best = low - low % 2
    return best if best >= 2 and fits(best) else None


def out_of_memory_error(error: BaseException, *, frames: int | None, dtype: torch.dtype | None,
                        device: torch.device | None) -> OutOfMemory:
    """The advice of a failed estimate, for an out-of-memory error raised while the model runs."""
    where = f" on {device}" if device is not None else ""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    suggestions = [Suggestion(f"sample fewer frames than {frames}" if frames else "sample fewer frames",
                              setting="frames")]
    if dtype is not None and dtype.itemsize > 2:
        suggestions.append(Suggestion("use a 2-byte dtype", setting="dtype", value="bfloat16"))
    on_gpu = device is not None and device.type == "cuda"
    suggestions.append(Suggestion("close other programs using the GPU, or use a GPU with more memory" if on_gpu
                                  else "use a machine with more memory"))
    return OutOfMemory(f"out of memory{where} while the model ran ({first_line})", suggestions=suggestions)


@contextmanager
def reporting_out_of_memory(*, frames: int | None = None, dtype: torch.dtype | None = None,
                            device: torch.device | None = None) -> Iterator[None]:
    """Turn torch.OutOfMemoryError in the block into a one-line OutOfMemory error, freeing the cached GPU memory
    so that the next video (caption) gets a fair try."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise out_of_memory_error(error, frames=frames, dtype=dtype, device=device) from error


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------


def _gb(count: int) -> str:
    return f"{count / GIGABYTE:.1f} GB" if count >= 0.1 * GIGABYTE else f"{count / 1e6:.0f} MB"


def is_positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


_MISSING = object()


def positive_number(mapping: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    value = mapping.get(key, default)
    if value is _MISSING:
        raise KeyError(key)
    if not is_positive_number(value):
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return value


def positive_int(mapping: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    value = mapping.get(key)
    if value is None:
        if default is _MISSING or default is None:
            raise KeyError(key)
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive whole number, got {value!r}")
    return value
