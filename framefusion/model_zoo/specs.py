"""What a user may write to name a model, parsed and checked before anything is loaded.

Forms, tried in this order:
  random:tiny-<family>   a tiny random checkpoint built offline (families: see tiny_families())
  random:<shape>         random weights at the real shape of a published model (see list_shapes())
  <alias>                a short name for a hub model, e.g. qwen2-vl-2b -> Qwen/Qwen2-VL-2B-Instruct (each family
                         names its published checkpoints: Family.aliases)
  <directory>            a local folder saved with save_pretrained (must hold config.json)
  <owner>/<name>         a Hugging Face hub id
Parsing is cheap: no torch or transformers import, no network.
"""

from __future__ import annotations

import difflib
import enum
import re
from dataclasses import dataclass
from pathlib import Path

from framefusion.errors import InputError
from framefusion.families import all_aliases, default_model
from framefusion.model_zoo.kit import tiny_families
from framefusion.model_zoo.shapes import list_shapes, load_shape

RANDOM_PREFIX = "random:"
TINY_PREFIX = "tiny-"

# owner/name, each part starting with a letter or digit; the hub allows letters, digits, "-", "_", ".".
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class SpecKind(str, enum.Enum):
    TINY = "tiny"  # target: family name
    SHAPE = "shape"  # target: shape name
    LOCAL = "local"  # target: absolute directory path
    HUB = "hub"  # target: hub repo id


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name. `text` is what the user wrote; `target` depends on `kind` (see SpecKind)."""

    kind: SpecKind
    target: str
    text: str

    @property
    def name(self) -> str:
        """The canonical name: random:tiny-qwen2-vl, random:qwen2-vl-2b, a directory, or a hub id."""
        if self.kind is SpecKind.TINY:
            return f"{RANDOM_PREFIX}{TINY_PREFIX}{self.target}"
        if self.kind is SpecKind.SHAPE:
            return f"{RANDOM_PREFIX}{self.target}"
        return self.target

    @property
    def is_random(self) -> bool:
        return self.kind in (SpecKind.TINY, SpecKind.SHAPE)

    @property
    def family(self) -> str | None:
        """The model family when the name alone tells it (random models), else None (known after loading)."""
        if self.kind is SpecKind.TINY:
            return self.target
        if self.kind is SpecKind.SHAPE:
            from framefusion.model_zoo.shapes import load_shape

            return load_shape(self.target).family
        return None


@dataclass(frozen=True)
class RandomModelInfo:
    """One random model for listings: its spec text, family, parameter count (None for tiny ones,
    whose size depends on the layer count) and what it is."""

    spec: str
    family: str
    parameter_count: int | None
    description: str
    shape_of: str | None = None  # the published checkpoint whose shape a real-shape model has; None for tiny ones


def list_aliases() -> dict[str, str]:
    """Alias -> hub id of every registered family's published checkpoints, sorted by alias."""
    return dict(sorted(all_aliases().items()))


def list_random_models() -> list[RandomModelInfo]:
    """Every random: model, tiny ones first, then the real shapes."""
    tiny = [
        RandomModelInfo(
            spec=f"{RANDOM_PREFIX}{TINY_PREFIX}{family}",
            family=family,
            parameter_count=None,
            description=f"tiny random {family} checkpoint built offline, for tests and demos",
        )
        for family in tiny_families()
    ]
    shaped = []
    for name in list_shapes():
        shape = load_shape(name)
        shaped.append(
            RandomModelInfo(
                spec=f"{RANDOM_PREFIX}{name}",
                family=shape.family,
                parameter_count=shape.parameter_count,
                description=f"random weights at the shape of {shape.source}, for speed benchmarks",
                shape_of=shape.source,
            )
        )
    return tiny + shaped


def parse_model_spec(text: str) -> ModelSpec:
    """Parse a model name (see the module docstring); InputError saying what is valid otherwise.

    A model directory wins over an alias of the same name, as a local folder wins over a hub id in
    transformers.
    """
    stripped = text.strip()
    if not stripped:
        raise InputError(f"no model given: {_valid_forms()}")
    if stripped.lower().startswith(RANDOM_PREFIX):
        return _parse_random(stripped[len(RANDOM_PREFIX) :], text)
    path = Path(stripped).expanduser()
    if _is_model_directory(path):
        return ModelSpec(SpecKind.LOCAL, str(path.resolve()), text)
    alias_target = all_aliases().get(stripped.lower())
    if alias_target is not None:
        return ModelSpec(SpecKind.HUB, alias_target, text)
    if path.exists():
        raise InputError(
            f"{text!r} is not a model directory (no config.json in it): pass a folder saved with "
            f"save_pretrained, a hub id such as {_example_hub_id()}, or a random:tiny-* model"
        )
    if _looks_like_path(stripped):
        raise InputError(f"model directory {text!r} does not exist: check the path, or pass a hub id or alias")
    if HUB_ID_PATTERN.match(stripped):
        return ModelSpec(SpecKind.HUB, stripped, text)
    raise InputError(f"unknown model {text!r}{_did_you_mean(stripped, [*all_aliases(), *_random_names()])}: "
                     f"{_valid_forms()}")


def _did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_random(name: str, text: str) -> ModelSpec:
    name = name.strip().lower()
    if name.startswith(TINY_PREFIX) and name[len(TINY_PREFIX) :] in tiny_families():
        return ModelSpec(SpecKind.TINY, name[len(TINY_PREFIX) :], text)
    if name in list_shapes():
        return ModelSpec(SpecKind.SHAPE, name, text)
    # random:<alias> works when the alias names a published model whose shape is shipped.
    shape_by_source = {load_shape(shape).source: shape for shape in list_shapes()}
    aliases = all_aliases()
    if aliases.get(name) in shape_by_source:
        return ModelSpec(SpecKind.SHAPE, shape_by_source[aliases[name]], text)
    names = _random_names()
    raise InputError(f"unknown random model {text!r}{_did_you_mean(RANDOM_PREFIX + name, names)}: use one of "
                     f"{', '.join(names)}")


def _is_model_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _looks_like_path(text: str) -> bool:
    """True for text that can only be a path: starts with /, ./, ../ or ~, or has a backslash or 2+ slashes."""
    return text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in text or text.count("/") >= 2


def _random_names() -> list[str]:
    return [info.spec for info in list_random_models()]


def _example_hub_id() -> str:
    """The hub id of the default model, to show what a hub id looks like."""
    return all_aliases()[default_model()]


def _valid_forms() -> str:
    return (
        f"use an alias ({', '.join(all_aliases())}), a hub id such as {_example_hub_id()}, "
        f"a local model directory, or one of {', '.join(_random_names())}"
    )
