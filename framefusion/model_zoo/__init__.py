"""Model names, model loading, and random-weight models (tiny checkpoints and real shapes).

    spec = parse_model_spec("random:tiny-qwen2-vl")      # cheap, checks the name only
    loaded = load_model(spec, dtype=torch.float32, device="cpu")
    loaded.model, loaded.processor

Each family's recipe (`FamilyKit`), aliases and shapes live with the family (framefusion/families/); this package
holds the generic building and loading code that asks the registered families for them. Importing this package
does not import torch or transformers.
"""

from framefusion.model_zoo.building import build_tiny_checkpoint, fill_random_weights
from framefusion.model_zoo.kit import FamilyKit, family_kit, tiny_families
from framefusion.model_zoo.loading import (
    LoadedModel,
    check_hub_kernels,
    ensure_tiny_checkpoint,
    framefusion_cache_dir,
    load_model,
)
from framefusion.model_zoo.shapes import (
    ModelShape,
    build_random_model,
    estimate_memory_bytes,
    list_shapes,
    load_shape,
)
from framefusion.model_zoo.specs import (
    ModelSpec,
    RandomModelInfo,
    SpecKind,
    list_aliases,
    list_random_models,
    parse_model_spec,
)

__all__ = [
    "FamilyKit",
    "LoadedModel",
    "ModelShape",
    "ModelSpec",
    "RandomModelInfo",
    "SpecKind",
    "build_random_model",
    "build_tiny_checkpoint",
    "ensure_tiny_checkpoint",
    "estimate_memory_bytes",
    "family_kit",
    "fill_random_weights",
    "framefusion_cache_dir",
    "list_aliases",
    "list_random_models",
    "list_shapes",
    "check_hub_kernels",
    "load_model",
    "load_shape",
    "parse_model_spec",
    "tiny_families",
]
