"""What it takes to build a model family from nothing (`FamilyKit`), and the tiny size every family is built at.

Each family's own kit lives with the family (`Family.tiny_kit()`); the builders of model_zoo (building.py,
tokenizer.py, loading.py) ask the registered family for it through model_zoo/kit.py. Real-shape models (each family's
shapes/*.json) reuse the same kit with the published config instead of the tiny one. Nothing here imports
transformers: parsing a model name must stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


# Frames are resized to at most this many pixels per side-squared in tiny models, so a 112x112 frame
# is 8x8 patches of 14 pixels and tests stay fast whatever the video's resolution.
TINY_FRAME_SIDE = 112
TINY_PATCH_SIZE = 14

# The language model of every tiny checkpoint: small but with grouped-query attention like the real ones.
TINY_TEXT_DIMS = MappingProxyType(
    {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    }
)


@dataclass(frozen=True)
class FamilyKit:
    """What it takes to build a checkpoint of one model family with random weights.

    `token_id_fields` maps a config key (dotted for sub-configs, e.g. "text_config.eos_token_id") to the
    token whose tokenizer id it must hold; the builder writes the ids so config and tokenizer agree.
    `processor_classes` names the transformers classes (processor, image processor, video processor).
    `tiny_config(num_hidden_layers)` returns a config.json dict without vocab size or token ids.
    `tiny_processor` holds keyword arguments per processor part: {"image_processor": {...},
    "video_processor": {...}, "processor": {...}, "feature_extractor": {...}}.
    `feature_extractor_class` names the audio feature extractor of a processor that takes one (Gemma 4's), else None.
    """

    name: str
    model_class: str
    special_tokens: tuple[str, ...]
    named_tokens: Mapping[str, str]
    eos_token: str
    pad_token: str
    token_id_fields: Mapping[str, str]
    chat_template: str
    processor_classes: tuple[str, str, str]
    tiny_config: Callable[[int], dict]
    tiny_processor: Mapping[str, Mapping]
    feature_extractor_class: str | None = None
