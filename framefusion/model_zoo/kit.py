"""The registered families' kits (`FamilyKit`, defined with the families): which families can build a tiny model,
and the kit of one by name."""

from __future__ import annotations

from framefusion.errors import InputError
from framefusion.families import family_named, registered_families
from framefusion.families.kit import FamilyKit, TINY_FRAME_SIDE, TINY_PATCH_SIZE, TINY_TEXT_DIMS

__all__ = ["FamilyKit", "TINY_FRAME_SIDE", "TINY_PATCH_SIZE", "TINY_TEXT_DIMS", "family_kit", "tiny_families"]


def tiny_families() -> tuple[str, ...]:
    """Names of the registered families that can build a tiny checkpoint (`random:tiny-<name>`), in registry order;
    a family that refuses its models on this installation builds none."""
    return tuple(family.name for family in registered_families()
                 if not family.refuses and family.tiny_kit() is not None)


def family_kit(name: str) -> FamilyKit:
    """The kit of family `name` (e.g. "qwen2-vl"); InputError listing the families that have one otherwise."""
    family = family_named(name)
    kit = family.tiny_kit() if family is not None else None
    if kit is not None:
        return kit
    raise InputError(f"unknown model family {name!r}: use one of {', '.join(tiny_families())}")
