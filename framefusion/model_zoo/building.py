"""Build models with random weights: tiny checkpoints on disk, or real-shape models in memory.

Both start from a `Blueprint` (a family, a config.json dict and processor settings), generate the
family's tokenizer, write the tokenizer's ids into the config, and fill the weights with scaled
uniform noise from one fast generator.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framefusion.errors import InputError
from framefusion.model_zoo.kit import FamilyKit, family_kit
from framefusion.model_zoo.tokenizer import build_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

DEFAULT_TINY_LAYERS = 8

# Noise pool for weight filling: ~4M values (odd length, so consecutive rows of a weight matrix start at
# different pool offsets). Copying scaled slices of one pool runs at memory speed; drawing billions of
# fresh random numbers on a CPU takes minutes. Compute cost never depends on the values, and the pool
# holds ordinary numbers, never the denormals or NaNs of uninitialised memory that distort CPU timings.
NOISE_POOL_SIZE = (1 << 22) + 1


@dataclass(frozen=True)
class Blueprint:
    """A model to build: `config` is config.json content (token ids are filled from the generated
    tokenizer; text_config.vocab_size too when absent); `processor` holds keyword arguments per part:
    {"image_processor": {...}, "video_processor": {...}, "processor": {...}}."""

    family: str
    config: Mapping[str, Any]
    processor: Mapping[str, Mapping[str, Any]]


def tiny_blueprint(family: str, *, num_hidden_layers: int = DEFAULT_TINY_LAYERS) -> Blueprint:
    """The tiny version of `family`: hidden size 64, `num_hidden_layers` decoder layers, 112x112 frames."""
    if num_hidden_layers < 1:
        raise InputError(f"num_hidden_layers must be at least 1, got {num_hidden_layers}")
    kit = family_kit(family)
    return Blueprint(family=family, config=kit.tiny_config(num_hidden_layers), processor=kit.tiny_processor)


def make_tokenizer(kit: FamilyKit) -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer with the family's special and named tokens."""
    return build_tokenizer(kit.special_tokens, kit.named_tokens, eos_token=kit.eos_token, pad_token=kit.pad_token)


def make_config(blueprint: Blueprint, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    """The transformers config of `blueprint`, with every token id taken from `tokenizer`."""
    from transformers import AutoConfig

    kit = family_kit(blueprint.family)
    config = copy.deepcopy(dict(blueprint.config))
    for key, token in kit.token_id_fields.items():
        _set_dotted(config, key, tokenizer.convert_tokens_to_ids(token))
    text_config = config.setdefault("text_config", {})
    if text_config.get("vocab_size") is None:
        text_config["vocab_size"] = len(tokenizer)
    elif text_config["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {text_config['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})")
    model_type = config.pop("model_type")
    return AutoConfig.for_model(model_type, **config)


def make_processor(blueprint: Blueprint, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    """The family's processor around `tokenizer`, with the blueprint's image/video settings."""
    import transformers

    kit = family_kit(blueprint.family)
    processor_class, image_processor_class, video_processor_class = (
        getattr(transformers, name) for name in kit.processor_classes
    )
    settings = blueprint.processor
    parts = {}
    if kit.feature_extractor_class is not None:  # a processor that also takes audio (Gemma 4) needs its extractor
        parts["feature_extractor"] = getattr(transformers, kit.feature_extractor_class)(
            **settings.get("feature_extractor", {}))
    return processor_class(
        **parts,
        image_processor=image_processor_class(**settings.get("image_processor", {})),
        tokenizer=tokenizer,
        video_processor=video_processor_class(**settings.get("video_processor", {})),
        chat_template=kit.chat_template,
        **settings.get("processor", {}),
    )


def instantiate_random_model(
    config: PreTrainedConfig,
    *,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Allocate the model of `config` directly on `device` in `dtype`, skip transformers' (slow) weight
    init, then fill every weight with scaled noise. Returns the model in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.initialization import no_init_weights

    options = {"dtype": dtype}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    with no_init_weights(), torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, **options)
    # no_init_weights also skips the tying that init_weights does, so tie here (embeddings <-> lm_head).
    model.tie_weights()
    fill_random_weights(model, seed=seed)
    return model.eval()


def fill_random_weights(model: torch.nn.Module, *, seed: int = 0) -> None:
    """Overwrite every parameter in place: norm weights 1 and norm biases 0; everything else uniform in
    +-1/sqrt(fan_in) (fan_in = elements per output row; a vector's own length), which keeps activations
    of the same order through all layers, like PyTorch's default Linear init."""
    import torch

    offsets = random.Random(seed)
    pools: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            for name, parameter in module.named_parameters(recurse=False):
                if is_norm:
                    parameter.fill_(1.0 if name == "weight" else 0.0)
                    continue
                key = (parameter.device, parameter.dtype)
                if key not in pools:
                    pools[key] = _noise_pool(seed, parameter.device, parameter.dtype)
                fan_in = parameter[0].numel() if parameter.ndim >= 2 else max(parameter.numel(), 1)
                _copy_scaled_noise(parameter, pools[key], fan_in**-0.5, offsets)


def _noise_pool(seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Uniform noise in [-1, 1), stored twice in a row so any slice of up to pool-size values starting
    anywhere in the first copy is contiguous. Shape: (2 * NOISE_POOL_SIZE,)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pool = torch.rand(NOISE_POOL_SIZE, generator=generator).mul_(2).sub_(1)
    return torch.cat([pool, pool]).to(device=device, dtype=dtype)


def _copy_scaled_noise(parameter: torch.Tensor, pool: torch.Tensor, scale: float, offsets: random.Random) -> None:
    """parameter = scale * (pool slices from random offsets), one pool-sized chunk at a time."""
    import torch

    flat = parameter.view(-1)
    for start in range(0, flat.numel(), NOISE_POOL_SIZE):
        length = min(NOISE_POOL_SIZE, flat.numel() - start)
        offset = offsets.randrange(NOISE_POOL_SIZE)
        torch.mul(pool[offset : offset + length], scale, out=flat[start : start + length])


def count_parameters_on_meta(config: PreTrainedConfig) -> int:
    """Parameters of the model of `config`, counted without allocating any weights (tied weights once)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def build_tiny_checkpoint(
    family: str,
    directory: Path,
    *,
    num_hidden_layers: int = DEFAULT_TINY_LAYERS,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight checkpoint of `family` into `directory` (created if needed) in the
    standard layout (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    processor_config.json, chat_template.jinja), loadable with AutoProcessor and
    AutoModelForImageTextToText. Same family, layers and seed give the same weights. Returns `directory`."""
    import torch

    blueprint = tiny_blueprint(family, num_hidden_layers=num_hidden_layers)
    tokenizer = make_tokenizer(family_kit(family))
    config = make_config(blueprint, tokenizer)
    model = instantiate_random_model(config, dtype=torch.float32, device="cpu", seed=seed)
    processor = make_processor(blueprint, tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _progress_bars_off():
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    return directory


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    """tree["a"]["b"] = value for dotted_key "a.b", creating missing levels."""
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar for a checkpoint of a few hundred KB, then restore."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
