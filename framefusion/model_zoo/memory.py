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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from framefusion.errors import OutOfMemory, Suggestion, WillNotFit
from framefusion.model_zoo.checkpoint_numbers import ModelNumbers

if TYPE_CHECKING:
    import torch

    from framefusion.model_zoo import ModelSpec

logger = logging.getLogger(__name__)

# Text of a prompt around the video (system prompt, question, chat markup), tokens: generous for a question.
TEXT_TOKENS = 512
# Python, the CUDA context, allocator slack and small buffers, bytes.
FIXED_OVERHEAD_BYTES = 512 << 20
GIGABYTE = 1e9


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
    kv_cache = numbers.cache_layers * 2 * numbers.num_kv_heads * numbers.head_dim * tokens * dtype_bytes
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
    from framefusion.model_zoo.checkpoint_numbers import model_numbers_for_spec

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
