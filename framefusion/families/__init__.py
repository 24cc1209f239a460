"""The registry of model families: every family, built-in or from another package, registers through the
`framefusion.families` entry-point group, one line per family naming a `Family` instance (or class):

    [project.entry-points."framefusion.families"]
    qwen2-vl = "framefusion.families.qwen_vl:qwen2_vl"

The built-in families load through the same group as a third-party package's would; there is no other list of
them. Order: the built-ins by their `rank`, then the others by name. A third-party entry point that fails to load
(or names no Family, or a name already taken) is skipped with a warning and never breaks the tool.

    family_for(model)             # the family of a loaded model (InputError listing the supported ones otherwise)
    family_by_name("qwen3-vl")    # by the name users see
    default_model(), all_aliases()

Nothing here imports torch or transformers: listing families and parsing model names stay cheap.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from framefusion.errors import InputError
from framefusion.families.base import Family, VideoInputs

if TYPE_CHECKING:
    from torch import nn

ENTRY_POINT_GROUP = "framefusion.families"
# The distribution whose entry points are the built-in families.
BUILTIN_DISTRIBUTION = "framefusion"


class FamilyRegistryWarning(UserWarning):
    """A third-party family entry point was skipped (it failed to load, or clashes with an earlier family)."""


@dataclass(frozen=True)
class _Registry:
    families: tuple[Family, ...]
    builtin: tuple[Family, ...]


@functools.lru_cache(maxsize=1)
def _registry() -> _Registry:
    builtin: list[Family] = []
    third_party: list[Family] = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        is_builtin = _is_builtin(entry_point)
        try:
            family = _load_family(entry_point)
        except Exception as error:  # noqa: BLE001 - a plugin may fail in any way; it must not break the tool
            if is_builtin:
                raise
            _skip(entry_point, str(error))
            continue
        (builtin if is_builtin else third_party).append(family)
    builtin.sort(key=lambda family: (family.rank, family.name))
    third_party.sort(key=lambda family: family.name)
    families: list[Family] = []
    for family in builtin + third_party:
        if any(family.name == earlier.name for earlier in families):
            if family in builtin:
                raise RuntimeError(f"two built-in model families are called {family.name!r}")
            _skip(family.name, "the name is taken by an earlier family")
            continue
        families.append(family)
    return _Registry(tuple(families), tuple(builtin))


def _is_builtin(entry_point: metadata.EntryPoint) -> bool:
    distribution = getattr(entry_point, "dist", None)
    if distribution is not None:
        return distribution.name.lower() == BUILTIN_DISTRIBUTION
    return entry_point.module.startswith(f"{BUILTIN_DISTRIBUTION}.")


def _load_family(entry_point: metadata.EntryPoint) -> Family:
    loaded = entry_point.load()
    family = loaded() if isinstance(loaded, type) and issubclass(loaded, Family) else loaded
    if not isinstance(family, Family):
        raise TypeError(f"{entry_point.value} is a {type(family).__name__}, not a framefusion Family")
    if family.name != entry_point.name:
        raise ValueError(f"{entry_point.value} is called {family.name!r}, not {entry_point.name!r} as registered")
    return family


def _skip(entry_point: metadata.EntryPoint | str, reason: str) -> None:
    name = entry_point if isinstance(entry_point, str) else f"{entry_point.name} = {entry_point.value}"
    warnings.warn(f"model family {name} is skipped: {reason}", FamilyRegistryWarning, stacklevel=3)


def registered_families() -> tuple[Family, ...]:
    """Every registered family (refusing ones included), built-ins first; loaded once (see clear_registry_cache)."""
    return _registry().families


def clear_registry_cache() -> None:
    """Forget the loaded families, so that the next lookup reads the entry points again (a package installed
    meanwhile, a test that puts one on sys.path)."""
    _registry.cache_clear()


def supported_families() -> list[str]:
    """Names of the families FrameFusion runs on, in registry order."""
    return [family.name for family in registered_families() if not family.refuses]


def family_named(name: str | None) -> Family | None:
    """The registered family called `name` (e.g. "qwen2-vl"), or None (None or an unknown name)."""
    return next((family for family in registered_families() if family.name == name), None)


def family_by_name(name: str) -> Family:
    """The family called `name` (e.g. "qwen2-vl"); InputError listing the registered ones otherwise."""
    family = family_named(name)
    if family is not None:
        return family
    known = ", ".join(family.name for family in registered_families())
    raise InputError(f"unknown model family {name!r}: use one of {known}")


def find_family(model: nn.Module) -> Family | None:
    """The family FrameFusion runs `model` with (by config/class), or None; never raises."""
    return next((f for f in registered_families() if not f.refuses and f.matches(model)), None)


def family_for(model: nn.Module) -> Family:
    """The family of `model`, detected from its config's model_type (not from its name).

    Models that a family refuses (MiniCPM-V 4.x, and hybrid language stacks no family supports) raise that family's
    InputError with the reason; a model of no registered family raises an InputError listing the supported ones.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    # A family that refuses a model type by name wins; one that refuses by what it sees (MiniCPM-V: any hybrid stack)
    # only catches what no supported family runs (Qwen3.5's hybrid stack is supported).
    for family in registered_families():
        if family.refuses and model_type in family.model_types:
            family.refuse(model)
    found = find_family(model)
    if found is not None:
        return found
    for family in registered_families():
        if family.refuses and family.matches(model):
            family.refuse(model)
    config = getattr(model, "config", None)
    described = f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})"
    raise InputError(
        f"FrameFusion knows no model family of {described}; supported families: {', '.join(supported_families())}"
    )


def family_for_model_type(model_type: str) -> Family | None:
    """The family whose configs carry this model_type (from config.json, before anything is loaded), or None."""
    return next((family for family in registered_families() if model_type in family.model_types), None)


def frame_multiple_for(family_name: str | None) -> int:
    """Frames must be a multiple of this for the family called `family_name`; 1 for None or an unknown name."""
    family = family_named(family_name)
    return family.frame_multiple if family is not None else 1


def all_aliases() -> dict[str, str]:
    """Alias -> hub id over every family, in registry order (an alias an earlier family took stays the earlier's)."""
    aliases: dict[str, str] = {}
    for family in registered_families():
        for alias, hub_id in family.aliases.items():
            aliases.setdefault(alias, hub_id)
    return aliases


def default_model() -> str:
    """The alias used when no model is named: the one built-in family that offers one provides it."""
    return _builtin_default("default_alias")


def default_benchmark_shape() -> str:
    """The real shape `framefusion bench` measures when no model is named (a built-in family provides it)."""
    return _builtin_default("default_benchmark_shape")


def _builtin_default(attribute: str) -> str:
    values = [getattr(family, attribute) for family in _registry().builtin if getattr(family, attribute)]
    if len(values) != 1:
        raise RuntimeError(f"exactly one built-in model family must set {attribute}; found {values}")
    return values[0]


def restore_reference_positions(model: nn.Module) -> bool:
    """Make `model` place rotary positions as its family's reference code does, where transformers 5.x differs
    (Qwen2-VL / Qwen2.5-VL, see docs/positions.md). Idempotent. True when the model is now patched; False, changing
    nothing, for every other model."""
    family = find_family(model)
    return family.restore_reference_positions(model) if family is not None else False


def remove_reference_positions(model: nn.Module) -> bool:
    """Put back the model's own positions; returns what restore_reference_positions would answer."""
    family = find_family(model)
    return family.remove_reference_positions(model) if family is not None else False


def has_reference_positions(model: nn.Module) -> bool:
    """Whether restore_reference_positions is in effect on this model."""
    family = find_family(model)
    return family.has_reference_positions(model) if family is not None else False


__all__ = [
    "ENTRY_POINT_GROUP",
    "Family",
    "FamilyRegistryWarning",
    "VideoInputs",
    "all_aliases",
    "clear_registry_cache",
    "default_benchmark_shape",
    "default_model",
    "family_by_name",
    "family_for",
    "family_for_model_type",
    "family_named",
    "find_family",
    "frame_multiple_for",
    "has_reference_positions",
    "registered_families",
    "remove_reference_positions",
    "restore_reference_positions",
    "supported_families",
]
