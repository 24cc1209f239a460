"""Every private transformers convention framefusion relies on, in one place.

transformers changes its internals every few weeks (5.24 renamed the cache argument `past_key_values` to `cache`).
Code elsewhere in framefusion asks this module instead of spelling a keyword or a private name itself, and
tests/test_transformers_compat.py checks each convention against the installed release, so the next rename fails
one named test instead of silently corrupting token reports.

Tested range: TESTED_TRANSFORMERS (the lowest declared in pyproject.toml and the newest installable release).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# The first release with `mm_encoder_outputs` (pre-encoded vision features passed to forward/generate) and the newest
# one CI installed. Keep in step with pyproject.toml and the README.
LOWEST_TRANSFORMERS = "5.18.0"
NEWEST_TESTED_TRANSFORMERS = "5.25.0"
TESTED_TRANSFORMERS = f">={LOWEST_TRANSFORMERS},<6"

# Keyword under which generate() and the model forward accept vision features computed beforehand, by modality.
ENCODER_OUTPUTS_KEYWORD = "mm_encoder_outputs"
# Methods and attributes of model instances that framefusion replaces or reads (each checked by a test):
# the vision encoder call generate() makes before the first forward (the runtime learns the video grid from it),
ROPE_INDEX_METHOD = "get_rope_index"  # Qwen2-VL-style 3D rotary positions, computed at prefill from the grids
ROPE_DELTAS_ATTRIBUTE = "rope_deltas"  # ... and the offset they leave for decoding, cached on the inner model
VIDEO_FEATURES_METHOD = "get_video_features"
DEEPSTACK_METHOD = "_deepstack_process"  # Qwen3-VL's text model adding visual features to early layers' outputs
# A decoder layer's token mixer: softmax attention (with q/k projections or norms, `head_dim`, a KV cache), or in a
# hybrid stack (Qwen3.5) a linear-attention layer called as mixer(hidden_states=, attention_mask=, <cache>=, ...)
# whose cache layer holds a convolution window and a recurrent state and counts the tokens it has seen.
ATTENTION_MODULE = "self_attn"
LINEAR_ATTENTION_MODULE = "linear_attn"
# Hub kernels: from 5.25 on, from_pretrained "kernelizes" every model (replaces layer forwards with kernels fetched
# from the hub) unless `use_kernels=False` is passed or USE_HUB_KERNELS says no; before 5.25 it was opt-in.
HUB_KERNELS_KEYWORD = "use_kernels"
HUB_KERNELS_ENVIRONMENT = "USE_HUB_KERNELS"
FIRST_KERNELIZING_TRANSFORMERS = "5.25.0"
_TRUE_WORDS = ("true", "1", "y", "yes", "on")  # what transformers reads as yes (5.18 reads a subset, upper-case)
# Keyword names the KV cache has had, newest first.
_CACHE_KEYWORDS = ("cache", "past_key_values")


@functools.lru_cache(maxsize=None)
def _cache_keyword() -> str:
    # Decoder layers and model forwards take the cache under the same name; Llama's layer is the template every
    # family copies. inspect.signature follows deprecate_kwarg's functools.wraps to the real parameters.
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    parameters = inspect.signature(LlamaDecoderLayer.forward).parameters
    return next((name for name in _CACHE_KEYWORDS if name in parameters), _CACHE_KEYWORDS[-1])


def cache_keyword() -> str:
    """The name the installed transformers gives the KV cache argument of forwards and generate()."""
    return _cache_keyword()


def cache_from_kwargs(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a forward's keyword arguments, whatever its keyword; None when there is none."""
    for name in _CACHE_KEYWORDS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand `cache` to a forward or generate() under the installed release's name."""
    return {cache_keyword(): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward or generate() returned (`output.cache` since 5.24, `past_key_values` before)."""
    for name in _CACHE_KEYWORDS:
        # Read the dataclass fields directly: 5.24's `past_key_values` property logs a deprecation.
        fields = getattr(output, "__dataclass_fields__", None)
        if fields is not None and name not in fields:
            continue
        cache = getattr(output, name, None) if fields is not None else None
        if cache is None and isinstance(output, dict):
            cache = output.get(name)
        if cache is not None:
            return cache
    return None


def cached_length(cache: Any, layer_index: int = 0) -> int:
    """Tokens held by one layer of the cache. Layers may differ: FrameFusion keeps fewer tokens in later layers."""
    if cache is None:
        return 0
    return int(cache.get_seq_length(layer_index))


def keeps_own_cache(cache: Any, layer_index: int) -> bool:
    """Whether a decoder layer keeps keys and values (or a state) of its own in the cache. A layer that reads another
    layer's (Gemma 4's KV-shared layers) keeps none: transformers 5.25 gives it a placeholder with no length
    (`DummyLayer`), 5.18 no cache layer at all."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return True
    return layer_index < len(layers) and callable(getattr(layers[layer_index], "get_seq_length", None))


def is_continuation(kwargs: dict[str, Any]) -> bool:
    """Whether a forward continues from a filled cache (a decoding step or a follow-up turn) rather than a prefill.

    Decided from the cache's own length (layer 0), not from `cache_position`, which generate() stopped passing in 5.18.
    """
    return cached_length(cache_from_kwargs(kwargs)) > 0


def encoder_outputs_kwargs(modality: str, features: Any) -> dict[str, Any]:
    """Keyword arguments that give generate()/forward vision features computed beforehand (skips the encoder)."""
    return {ENCODER_OUTPUTS_KEYWORD: {modality: features}}


def has_encoder_outputs(kwargs: dict[str, Any], modality: str) -> bool:
    return bool((kwargs.get(ENCODER_OUTPUTS_KEYWORD) or {}).get(modality))


def attention_implementation(config: Any) -> str | None:
    """The attention backend a model runs (`config._attn_implementation`: sdpa, eager, flash_attention_2, ...)."""
    return getattr(config, "_attn_implementation", None)


def keeps_accelerate_wrapper(module: torch.nn.Module) -> bool:
    """Whether accelerate (device_map) wrapped this module's forward: it keeps the real one in `_old_forward`."""
    return hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__


def accepted_keywords(function: Callable) -> set[str]:
    """The keyword names a transformers function takes (generate() picks encoder arguments the same way)."""
    return set(inspect.signature(function).parameters)


def checkpoint_commit(config: Any) -> str | None:
    """The hub commit from_pretrained resolved for a checkpoint (None for local folders and random models)."""
    return getattr(config, "_commit_hash", None)


def installed_version() -> str:
    import transformers

    return transformers.__version__


def processor_videos(frames: Any) -> list[list[Any]]:
    """One prompt's video as processors take it: a list of videos per prompt.

    Every family's processor accepts the nested form on every tested release; the flat `[frames]` is read as one
    video per frame by SmolVLM's processor on 5.18.
    """
    return [[frames]]


def vision_encoder(model: torch.nn.Module, modality: str) -> Callable | None:
    """The encoder generate() runs for `modality` ("image" or "video") before the first forward, found as generate()
    finds it (`_prepare_multimodal_encoder_kwargs_for_generation`: `base_model.get_<modality>_features` of a model that
    declares the modality), or None when the model cannot take that modality's features pre-encoded."""
    if modality not in getattr(model, "input_modalities", ()):
        return None
    if ENCODER_OUTPUTS_KEYWORD not in accepted_keywords(model.forward):
        return None
    return getattr(model.base_model, f"get_{modality}_features", None)


def vision_encoder_layers(tower: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder layers of a vision tower that encodes images as a batch: SigLIP, CLIP and SmolVLM's
    (`encoder.layers`; transformers 4 nested them under `vision_model`), InternVL's (`encoder.layer`). EarlyTom relies
    on each taking the frames' hidden states [T, N, D] as its first argument and returning them as a tensor."""
    encoder = getattr(tower, "vision_model", tower).encoder
    return list(encoder.layers if hasattr(encoder, "layers") else encoder.layer)


def vision_layer_queries_keys(layer: torch.nn.Module, hidden_states: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(queries, keys [T, heads, N, head_dim], scale) of a vision encoder layer's self-attention on its input
    hidden_states [T, N, D], as the layer forms them: SigLIP, CLIP and SmolVLM normalise with `layer_norm1` and attend
    in `self_attn`; InternVL normalises with `layernorm_before` and attends in `attention`, with query and key norms
    (`q_norm`, `k_norm`, identities where the checkpoint has none) before the split into heads."""
    if hasattr(layer, "layernorm_before"):
        attention, normed = layer.attention, layer.layernorm_before(hidden_states)
        queries, keys = attention.q_norm(attention.q_proj(normed)), attention.k_norm(attention.k_proj(normed))
    else:
        attention, normed = layer.self_attn, layer.layer_norm1(hidden_states)
        queries, keys = attention.q_proj(normed), attention.k_proj(normed)
    frames, patches, _ = hidden_states.shape
    split = (frames, patches, attention.num_heads, -1)
    return queries.view(split).transpose(1, 2), keys.view(split).transpose(1, 2), attention.scale


def packed_vision_last_attention(visual: torch.nn.Module) -> torch.nn.Module:
    """The self-attention of the last block of a Qwen-VL vision tower (`blocks[-1].attn`): each block calls it on
    `norm1(hidden_states)` [seq, D], with `cu_seqlens=` and `position_embeddings=` (cos, sin) keywords."""
    return visual.blocks[-1].attn


def packed_vision_queries_keys(attention: torch.nn.Module, hidden_states: torch.Tensor,
                               position_embeddings: tuple[torch.Tensor, torch.Tensor]
                               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(queries, keys [seq, heads, head_dim] with the vision rotary embedding applied, scale) as a Qwen-VL vision
    attention forms them: one packed `qkv` projection, then its module's `apply_rotary_pos_emb_vision`."""
    length = hidden_states.shape[0]
    queries, keys, _ = attention.qkv(hidden_states).reshape(length, 3, attention.num_heads, -1).permute(
        1, 0, 2, 3).unbind(0)
    rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision
    queries, keys = rotate(queries, keys, *position_embeddings)
    return queries, keys, attention.scaling


def vision_window_order(visual: torch.nn.Module, grid_thw: torch.Tensor) -> torch.Tensor | None:
    """Where a Qwen2.5-VL tower's blocks see each merge unit: `window_index` (block order -> raster unit), as the
    tower computes it with transformers.vision_utils.get_vision_window_index; None for towers without windows."""
    if not hasattr(visual, "fullatt_block_indexes"):
        return None
    from transformers.vision_utils import get_vision_window_index

    return get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                   window_size=visual.window_size, patch_size=visual.patch_size)[0]


def load_siglip_pooling_head(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(post_layernorm, head) of the SigLIP checkpoint `name`: a SiglipModel (its vision_config is read) or a
    SiglipVisionModel, with weights under `vision_model.post_layernorm` and `vision_model.head`. ValueError when the
    checkpoint has no attention-pooling head (`vision_use_head` false, as in LLaVA-OneVision's tower)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig.from_pretrained(name)
    if not getattr(config, "vision_use_head", True):
        raise ValueError("its vision model has no attention-pooling head (vision_use_head is false)")
    model, loading = SiglipVisionModel.from_pretrained(name, config=config, output_loading_info=True)
    missing = [key for key in loading["missing_keys"] if "head." in key or "post_layernorm." in key]
    if missing:
        raise ValueError(f"its weights lack {', '.join(sorted(missing)[:3])}")
    vision = getattr(model, "vision_model", model)  # transformers 5 dropped the nesting
    return vision.post_layernorm, vision.head


def siglip_pooling_head_outputs(head: torch.nn.Module, hidden_states: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """What SiglipMultiheadAttentionPoolingHead.forward computes on hidden_states [T, N, D], with the attention it
    throws away: (the probe's attention over the N patches, mean over heads, [T, N] float32; the pooled vector [T, D]
    float32). Relies on its `probe`, `attention` (torch's nn.MultiheadAttention, batch first), `layernorm` and `mlp`."""
    probe = head.probe.repeat(hidden_states.shape[0], 1, 1)
    attended, weights = head.attention(probe, hidden_states, hidden_states, need_weights=True,
                                       average_attn_weights=True)
    pooled = attended + head.mlp(head.layernorm(attended))
    return weights[:, 0].float(), pooled[:, 0].float()


def needs_remote_code(error: BaseException) -> bool:
    """Whether from_pretrained refused `error` because the model needs its repository's code and
    `trust_remote_code=False` was passed (a ValueError that names the argument, on every tested release)."""
    return isinstance(error, ValueError) and "trust_remote_code=True" in str(error)


def has_hub_kernels() -> bool:
    """Whether the installed transformers can kernelize a model (from_pretrained takes `use_kernels`)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "set_use_kernels")


def hub_kernels_load_options() -> dict[str, Any]:
    """from_pretrained keyword arguments that keep hub kernels off; nothing on a release without them."""
    return {HUB_KERNELS_KEYWORD: False} if has_hub_kernels() else {}


def hub_kernels_allowed_by_environment() -> bool:
    """Whether USE_HUB_KERNELS lets transformers use hub kernels (unset means yes)."""
    return os.environ.get(HUB_KERNELS_ENVIRONMENT, "YES").lower() in _TRUE_WORDS


def kernelizes_by_default() -> bool:
    """Whether a plain from_pretrained (no `use_kernels`) on this release and environment kernelizes the model."""
    from packaging.version import Version

    return (has_hub_kernels() and Version(installed_version()) >= Version(FIRST_KERNELIZING_TRANSFORMERS)
            and hub_kernels_allowed_by_environment())


def hub_kernels_package() -> tuple[str | None, bool]:
    """The installed `kernels` version (None: not installed) and whether this transformers accepts it."""
    from importlib import metadata

    try:
        version = metadata.version("kernels")
    except metadata.PackageNotFoundError:
        return None, False
    from transformers.utils.import_utils import is_kernels_available

    return version, bool(is_kernels_available())


def hub_kernels_requirement() -> str:
    """The `kernels` versions the installed transformers accepts, as a pip requirement."""
    from transformers.utils import import_utils

    low = getattr(import_utils, "KERNELS_MIN_VERSION", None)
    high = getattr(import_utils, "KERNELS_MAX_VERSION", None)
    return "kernels" + ",".join(part for part in (f">={low}" if low else "", f"<{high}" if high else "") if part)


def hub_kernels_unavailable() -> str | None:
    """Why this installation cannot kernelize a model (None: it can). Checked before loading anything."""
    if not has_hub_kernels():
        return f"transformers {installed_version()} has no hub kernels: upgrade transformers or run without them"
    if not hub_kernels_allowed_by_environment():
        return (f"{HUB_KERNELS_ENVIRONMENT}={os.environ[HUB_KERNELS_ENVIRONMENT]} turns hub kernels off: "
                f"unset {HUB_KERNELS_ENVIRONMENT} or run without them")
    version, accepted = hub_kernels_package()
    if not accepted:
        found = "is not installed" if version is None else f"has {version}"
        requirement = hub_kernels_requirement()
        return (f"hub kernels need the kernels package ({requirement}) and this installation {found}: "
                f"pip install '{requirement}'")
    return None


def kernelize(model: torch.nn.Module) -> None:
    """Replace `model`'s layer forwards by hub kernels, as from_pretrained(use_kernels=True) does after loading."""
    model.set_use_kernels(True)
