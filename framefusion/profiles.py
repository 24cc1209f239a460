"""Named reduction profiles: a name for one setting of `apply_framefusion`.

Profiles come from YAML files (schema: docs/profiles.md). The built-ins ship with the package
(`framefusion_profiles/builtin.yaml`); a per-user file and an explicit file may add profiles or
replace built-ins by name.

Loading is strict and safe, because a typo in a settings file should fail loudly, not silently
run a different experiment: duplicate keys, anchors/aliases, unknown keys, wrong types and values
out of range are all rejected with a one-line `ProfileError` naming the file, the profile and the key.
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from framefusion.errors import ProfileError

METHODS = ("none", "framefusion", "merge-only", "prune-only")
DEFAULT_METHOD = "framefusion"

# The settings each method takes, in display order. A key outside its method's list is an error:
# silently ignoring e.g. `dense_layers` on a merging profile would hide a misunderstanding.
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "framefusion": ("cost", "similarity_lower_bound", "ratio_lower_bound"),
    "merge-only": ("cost", "similarity_lower_bound", "ratio_lower_bound"),
    "prune-only": ("cost", "dense_layers"),
}
SETTING_DEFAULTS: dict[str, object] = {
    "cost": 0.3,
    "similarity_lower_bound": None,  # None: the model family's default S_th
    "ratio_lower_bound": 0.1,
    "dense_layers": 2,
}
PROFILE_KEYS = ("description", "method", "cost", "similarity_lower_bound", "ratio_lower_bound", "dense_layers")

PROFILES_ENV_VAR = "FRAMEFUSION_PROFILES"
BUILTIN_SOURCE = "built-in"
MAX_FILE_BYTES = 256 * 1024
# Deeper nesting than this has no meaning in a profiles file; the limit keeps the recursive
# composer and constructor far from Python's recursion limit.
MAX_NESTING_DEPTH = 20

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_MERGE_KEY_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlevel = 2


@dataclass(frozen=True)
class Profile:
    """One named reduction setting.

    Settings that do not apply to `method` are None (see `METHOD_SETTINGS`); for the methods that
    merge, `similarity_lower_bound=None` means the model family's default S_th.
    `source` is "built-in" or the path of the file that defined the profile.
    """

    name: str
    description: str
    method: str
    cost: float | None
    similarity_lower_bound: float | None
    ratio_lower_bound: float | None
    dense_layers: int | None
    source: str

    def reduction_kwargs(self) -> dict | None:
        """Keyword arguments for `apply_framefusion(model, **kwargs)`; None when nothing is reduced."""
        if self.method == "none":
            return None
        kwargs = {key: getattr(self, key) for key in METHOD_SETTINGS[self.method]}
        kwargs["merge"] = self.method in ("framefusion", "merge-only")
        kwargs["prune"] = self.method in ("framefusion", "prune-only")
        return kwargs

    def settings(self) -> dict:
        """The method and the settings that apply to it, as a profile file would spell them."""
        return {"method": self.method, **{key: getattr(self, key) for key in METHOD_SETTINGS[self.method]}}


class _InvalidValue(Exception):
    """A setting's value is wrong; the caller adds where (file, line, profile, key)."""


class _LineMapping(dict):
    """A dict that remembers the line (1-based) where each key stood, for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[object, int] = {}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects what plain `yaml.safe_load` lets through silently.

    - duplicate keys at any level (safe_load keeps the last one);
    - anchors and aliases (the "billion laughs" expansion, and shared mutable values);
    - merge keys `<<` (they exist to combine with aliases);
    - explicit tags (`!!python/object`, `!!float`, ...);
    - nesting deeper than MAX_NESTING_DEPTH.
    Mappings come back as `_LineMapping` so validation can report the offending line.
    """

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._nesting_depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed; write the value out", event.start_mark
            )
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"anchors (&{event.anchor}) are not allowed; write each value out", event.start_mark
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            # Tags only select constructors (!!python/..., !!binary, !!float ''); a profiles file needs none,
            # and some of PyYAML's constructors crash on odd values instead of raising a YAML error.
            raise yaml.composer.ComposerError(
                None, None, f"tags ({tag}) are not allowed; write plain values", event.start_mark
            )
        self._nesting_depth += 1
        try:
            if self._nesting_depth > MAX_NESTING_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._nesting_depth -= 1

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        mapping = _LineMapping()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_KEY_TAG:
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed; write the keys out", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
                ) from None
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {_short.repr(key)} (first on line {mapping.lines[key]}); keep only one",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
            mapping.lines[key] = key_node.start_mark.line + 1
        return mapping


_StrictLoader.add_constructor(_MAP_TAG, lambda loader, node: loader.construct_mapping(node, deep=True))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(source: str, problem: str, *, line: int | None = None, profile=None, key=None) -> ProfileError:
    """A one-line ProfileError: `source, line N: profile 'p', key 'k': problem`."""
    where = source if line is None else f"{source}, line {line}"
    parts = [where]
    if profile is not None:
        parts.append(f"profile {_short.repr(profile)}")
    if key is not None:
        parts.append(f"key {_short.repr(key)}")
    return ProfileError(_one_line(": ".join(parts) + ": " + problem))


def _describe(value: object) -> str:
    """A short description of a wrong value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{_short.repr(value)} (a string; numbers are written without quotes)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple, set)):
        return "a list"
    return f"{_short.repr(value)} (a {type(value).__name__})"


def _line_of(mapping: object, key: object) -> int | None:
    return mapping.lines.get(key) if isinstance(mapping, _LineMapping) else None


def _did_you_mean(word: object, choices) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- one validator per setting: value in, normalised value out, _InvalidValue if wrong -----------


def _as_finite_number(value: object) -> float:
    # bool is an int subclass in Python: `cost: yes` must not become 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _InvalidValue(f"must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _InvalidValue(f"must be a finite number, got {_short.repr(value)}")
    return number


def _validate_description(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _InvalidValue(f"must be a non-empty one-line text, got {_describe(value)}")
    text = value.strip()
    if "\n" in text or "\r" in text:
        raise _InvalidValue("must be one line; shorten it")
    return text


def _validate_method(value: object) -> str:
    if not isinstance(value, str) or value not in METHODS:
        hint = _did_you_mean(value, METHODS)
        raise _InvalidValue(f"must be one of {', '.join(METHODS)}, got {_describe(value)}{hint}")
    return value


def _validate_cost(value: object) -> float:
    cost = _as_finite_number(value)
    if not 0 < cost <= 1:
        raise _InvalidValue(f"must satisfy 0 < cost <= 1 (fraction of the dense video-token compute), got {value!r}")
    return cost


def _validate_similarity_lower_bound(value: object) -> float | None:
    if value is None:
        return None
    bound = _as_finite_number(value)
    if not -1 <= bound <= 1:
        raise _InvalidValue(f"must be null (family default) or a cosine similarity in [-1, 1], got {value!r}")
    return bound


def _validate_ratio_lower_bound(value: object) -> float:
    ratio = _as_finite_number(value)
    if not 0 < ratio <= 1:
        raise _InvalidValue(f"must satisfy 0 < ratio_lower_bound <= 1, got {value!r}")
    return ratio


def _validate_dense_layers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _InvalidValue(f"must be a whole number >= 1, got {_describe(value)}")
    if value < 1:
        raise _InvalidValue(f"must be >= 1 (layers run on all tokens before pruning), got {value}")
    return value


_VALIDATORS = {
    "description": _validate_description,
    "method": _validate_method,
    "cost": _validate_cost,
    "similarity_lower_bound": _validate_similarity_lower_bound,
    "ratio_lower_bound": _validate_ratio_lower_bound,
    "dense_layers": _validate_dense_layers,
}


def _validated(settings: dict, key: str, source: str, profile: str):
    try:
        return _VALIDATORS[key](settings[key])
    except _InvalidValue as invalid:
        raise _error(source, str(invalid), line=_line_of(settings, key), profile=profile, key=key) from None


def _profile_from_settings(name: str, settings: object, source: str, line: int | None) -> Profile:
    """Validate one profile's settings mapping and fill the defaults of its method."""
    if not isinstance(settings, dict):
        raise _error(
            source, f"must be a mapping of settings (description, method, ...), got {_describe(settings)}",
            line=line, profile=name,
        )
    for key in settings:
        if key not in PROFILE_KEYS:
            raise _error(
                source,
                f"unknown key{_did_you_mean(key, PROFILE_KEYS)}; known keys: {', '.join(PROFILE_KEYS)}",
                line=_line_of(settings, key), profile=name, key=key,
            )
    if "description" not in settings:
        raise _error(source, "is missing; add a one-line description", line=line, profile=name, key="description")
    description = _validated(settings, "description", source, name)
    method = _validated(settings, "method", source, name) if "method" in settings else DEFAULT_METHOD
    applicable = METHOD_SETTINGS[method]
    for key in settings:
        if key not in ("description", "method") and key not in applicable:
            users = [m for m, keys in METHOD_SETTINGS.items() if key in keys]
            raise _error(
                source,
                f"does not apply to method {method!r} (only to {', '.join(users)}); remove it",
                line=_line_of(settings, key), profile=name, key=key,
            )
    values = {key: None for key in SETTING_DEFAULTS}
    for key in applicable:
        values[key] = _validated(settings, key, source, name) if key in settings else SETTING_DEFAULTS[key]
    return Profile(name=name, description=description, method=method, source=source, **values)


def _validate_name(name: object, source: str, line: int | None) -> str:
    if not isinstance(name, str):
        raise _error(source, f"profile name {_describe(name)} must be text; quote it", line=line)
    if not _NAME_PATTERN.fullmatch(name):
        raise _error(
            source,
            f"profile name {_short.repr(name)} is not valid: use 1-64 lowercase letters, digits, '-' or '.', "
            "starting with a letter or digit",
            line=line,
        )
    return name


def parse_profiles(document: object, source: str) -> dict[str, Profile]:
    """Validate a loaded profiles document (`{"profiles": {name: settings}}`) into Profiles.

    `source` names where the document came from, in errors and in `Profile.source`.
    """
    if document is None:
        raise _error(source, "the file is empty; it needs a top-level 'profiles:' mapping (see docs/profiles.md)")
    if not isinstance(document, dict):
        raise _error(source, f"the top level must be a mapping with a 'profiles' key, got {_describe(document)}")
    for key in document:
        if key != "profiles":
            raise _error(
                source, f"unknown top-level key {_short.repr(key)}; the only one is 'profiles'",
                line=_line_of(document, key),
            )
    if "profiles" not in document:
        raise _error(source, "missing the top-level 'profiles:' mapping (see docs/profiles.md)")
    entries = document["profiles"]
    if not isinstance(entries, dict):
        raise _error(
            source, f"'profiles' must be a mapping of profile names to settings, got {_describe(entries)}",
            line=_line_of(document, "profiles"),
        )
    profiles = {}
    for name, settings in entries.items():
        line = _line_of(entries, name)
        valid_name = _validate_name(name, source, line)
        profiles[valid_name] = _profile_from_settings(valid_name, settings, source, line)
    return profiles


def parse_profiles_text(text: str, source: str) -> dict[str, Profile]:
    """Parse profiles YAML text strictly (see `_StrictLoader`) and validate it."""
    loader = None
    try:
        # The reader already rejects control characters while the loader is being built.
        loader = _StrictLoader(text)
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as bad:
        mark = bad.problem_mark or bad.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = bad.problem or bad.context or "malformed"
        raise _error(source, f"not valid YAML: {problem}; fix the syntax", line=line) from None
    except yaml.YAMLError as bad:
        raise _error(source, f"not valid YAML: {bad}") from None
    except (ValueError, OverflowError) as bad:
        # The YAML constructors raise these for e.g. a date like 2024-13-45 or an integer with
        # more digits than Python converts.
        raise _error(source, f"not valid YAML: a value cannot be read ({bad})") from None
    except RecursionError:
        raise _error(source, "not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return parse_profiles(document, source)


def read_profiles_file(path: Path) -> dict[str, Profile]:
    """Read and validate one profiles file (no built-ins, no per-user file)."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _error(source, "no such file; check the path") from None
    except IsADirectoryError:
        raise _error(source, "is a directory; give the path of a profiles YAML file") from None
    except OSError as bad:
        raise _error(source, f"cannot be read: {bad.strerror or bad}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _error(
            source, f"is larger than {MAX_FILE_BYTES // 1024} KiB; a profiles file is a few lines: check the path"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as bad:
        raise _error(source, f"is not UTF-8 text (byte {bad.start}); save it as UTF-8") from None
    return parse_profiles_text(text, source)


def builtin_profiles() -> dict[str, Profile]:
    """The profiles shipped with the package (`framefusion_profiles/builtin.yaml`)."""
    text = importlib.resources.files("framefusion_profiles").joinpath("builtin.yaml").read_text(encoding="utf-8")
    return parse_profiles_text(text, BUILTIN_SOURCE)


def user_profiles_file() -> Path | None:
    """Where the per-user profiles file is looked for (it need not exist).

    `$FRAMEFUSION_PROFILES` if set, else `$XDG_CONFIG_HOME/framefusion/profiles.yaml`, else
    `~/.config/framefusion/profiles.yaml`. None if no home directory is known.
    """
    explicit = os.environ.get(PROFILES_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME")
    # The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    if config_home and Path(config_home).is_absolute():
        return Path(config_home) / "framefusion" / "profiles.yaml"
    try:
        return Path.home() / ".config" / "framefusion" / "profiles.yaml"
    except RuntimeError:
        return None


def _may_exist(path: Path) -> bool:
    """Whether `path` exists; True when that cannot be told (e.g. no permission), so reading it reports why."""
    try:
        return path.exists()
    except OSError:
        return True


def load_profiles(profiles_file: Path | None = None) -> dict[str, Profile]:
    """All profiles by name: built-ins, then the per-user file, then `profiles_file`.

    A later file adds profiles or replaces earlier ones of the same name, whole (no merging of
    settings). The per-user file is optional, unless `$FRAMEFUSION_PROFILES` names it;
    `profiles_file`, when given, must exist.
    """
    profiles = builtin_profiles()
    user_file = user_profiles_file()
    if os.environ.get(PROFILES_ENV_VAR) and not _may_exist(user_file):
        raise ProfileError(
            _one_line(f"{PROFILES_ENV_VAR} is set to {user_file}, which does not exist; fix the path or unset it")
        )
    if user_file is not None and _may_exist(user_file):
        profiles.update(read_profiles_file(user_file))
    if profiles_file is not None:
        profiles.update(read_profiles_file(Path(profiles_file)))
    return profiles


_SAVED_FILE_HEADER = "# framefusion reduction profiles (schema: docs/profiles.md)\n"


def save_profile(name: str, settings: dict, profiles_file: Path | None = None) -> tuple[Path, bool]:
    """Add one profile to a profiles file, or replace the profile of that name; create the file if missing.

    settings: the profile's keys as a file spells them (description, method, cost, ...). profiles_file: default the
    per-user file (`user_profiles_file()`). The file is checked before (strictly, as `read_profiles_file`) and the new
    document after, so nothing invalid is ever written; it is rewritten with `yaml.safe_dump` and replaced atomically:
    every profile stays, comments do not. Returns (the file written, whether a profile of that name was replaced).
    """
    target = Path(profiles_file) if profiles_file is not None else user_profiles_file()
    if target is None:
        raise ProfileError("no home directory is known to hold the per-user profiles file; name a file to write")
    source = str(target)
    document: dict = {"profiles": {}}
    if _may_exist(target):
        read_profiles_file(target)  # strict: a file we could not read back is never rewritten
        document = yaml.safe_load(target.read_text(encoding="utf-8-sig"))
    valid_name = _validate_name(name, source, None)
    replaced = valid_name in document["profiles"]
    document["profiles"][valid_name] = dict(settings)
    parse_profiles(document, source)
    text = _SAVED_FILE_HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    except OSError as bad:
        raise _error(source, f"cannot be written: {bad.strerror or bad}") from None
    return target, replaced


def get_profile(name: str, profiles_file: Path | None = None) -> Profile:
    """The profile called `name` (see `load_profiles` for where profiles come from)."""
    profiles = load_profiles(profiles_file)
    if name not in profiles:
        raise ProfileError(
            _one_line(
                f"unknown profile {_short.repr(name)}{_did_you_mean(name, profiles)}; "
                f"available: {', '.join(profiles)} (or define it in a profiles file, see docs/profiles.md)"
            )
        )
    return profiles[name]
