"""The profiles file format (schema: docs/profiles.md), read strictly.

A typo in a settings file should fail loudly, not silently run a different experiment: duplicate keys,
anchors/aliases, merge keys, explicit tags, unknown keys, wrong types and values out of range are all rejected with a
one-line `ProfileError` naming the file, the line, the profile and the key. This module turns a file into validated
settings per profile name; `framefusion.profiles.catalog` turns those into `Profile` objects.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from pathlib import Path
from typing import Any, Callable

import yaml

from framefusion.profiles import stages as profile_stages
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
PROFILE_KEYS = ("description", "method", *SETTING_DEFAULTS, "stages")

MAX_FILE_BYTES = 256 * 1024
# Deeper nesting has no meaning in a profiles file; the limit keeps PyYAML's recursive composer far from Python's
# recursion limit.
MAX_NESTING_DEPTH = 20

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_MERGE_KEY_TAG = "tag:yaml.org,2002:merge"

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlevel = 2


# --- strict YAML ---------------------------------------------------------------------------------------------------
class _LineMapping(dict):
    """A dict that remembers the line (1-based) where each key stood, for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[object, int] = {}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that also rejects duplicate keys (safe_load keeps the last), anchors and aliases (the "billion
    laughs" expansion), merge keys, explicit tags (some of PyYAML's constructors crash on odd values instead of raising
    a YAML error, and a profiles file needs none) and nesting deeper than MAX_NESTING_DEPTH.
    Mappings come back as `_LineMapping`, so validation can report the offending line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nesting_depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        anchor, tag = getattr(event, "anchor", None), getattr(event, "tag", None)
        if isinstance(event, yaml.AliasEvent):
            refused = f"aliases (*{anchor}) are not allowed; write the value out"
        elif anchor is not None:
            refused = f"anchors (&{anchor}) are not allowed; write each value out"
        elif tag is not None:
            refused = f"tags ({tag}) are not allowed; write plain values"
        elif self._nesting_depth >= MAX_NESTING_DEPTH:
            refused = f"nested deeper than {MAX_NESTING_DEPTH} levels"
        else:
            self._nesting_depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._nesting_depth -= 1
        raise yaml.composer.ComposerError(None, None, refused, event.start_mark)

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        mapping = _LineMapping()
        for key_node, value_node in node.value:
            refused = None
            if key_node.tag == _MERGE_KEY_TAG:
                refused = "merge keys (<<) are not allowed; write the keys out"
            else:
                key = self.construct_object(key_node, deep=deep)
                if not _hashable(key):
                    refused = "a key must be a plain value, not a list or mapping"
                elif key in mapping:
                    refused = f"duplicate key {_short.repr(key)} (first on line {mapping.lines[key]}); keep only one"
            if refused:
                raise yaml.constructor.ConstructorError(None, None, refused, key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
            mapping.lines[key] = key_node.start_mark.line + 1
        return mapping


_StrictLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: loader.construct_mapping(node, deep=True))


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def load_yaml_text(text: str, source: str) -> object:
    """The YAML document in `text`, read with `_StrictLoader`; ProfileError (naming `source`) for anything refused."""
    try:
        loader = _StrictLoader(text)  # the reader rejects control characters already here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as bad:
        mark = bad.problem_mark or bad.context_mark
        line = mark.line + 1 if mark is not None else None
        raise file_error(source, f"not valid YAML: {bad.problem or bad.context or 'malformed'}; fix the syntax",
                         line=line) from None
    except yaml.YAMLError as bad:
        raise file_error(source, f"not valid YAML: {bad}") from None
    except (ValueError, OverflowError) as bad:
        # PyYAML's constructors raise these for e.g. a date like 2024-13-45 or an integer with more digits than
        # Python converts.
        raise file_error(source, f"not valid YAML: a value cannot be read ({bad})") from None


def read_text(path: Path) -> str:
    """The text of a profiles file: at most MAX_FILE_BYTES of UTF-8 (a byte-order mark is dropped)."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise file_error(source, "no such file; check the path") from None
    except IsADirectoryError:
        raise file_error(source, "is a directory; give the path of a profiles YAML file") from None
    except OSError as bad:
        raise file_error(source, f"cannot be read: {bad.strerror or bad}") from None
    if len(data) > MAX_FILE_BYTES:
        raise file_error(
            source, f"is larger than {MAX_FILE_BYTES // 1024} KiB; a profiles file is a few lines: check the path"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as bad:
        raise file_error(source, f"is not UTF-8 text (byte {bad.start}); save it as UTF-8") from None


# --- errors ----------------------------------------------------------------------------------------------------------
def file_error(source: str, problem: str, *, line: int | None = None, profile: object = None,
               key: object = None) -> ProfileError:
    """A one-line ProfileError: `source, line N: profile 'p', key 'k': problem`."""
    parts = [source if line is None else f"{source}, line {line}"]
    if profile is not None:
        parts.append(f"profile {_short.repr(profile)}")
    if key is not None:
        parts.append(f"key {_short.repr(key)}")
    # YAML's own messages and file names may span lines; the error is one line.
    return ProfileError(" ".join(": ".join([*parts, problem]).split()))


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


def did_you_mean(word: object, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or ''."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def quoted(value: object) -> str:
    """A user's value quoted for a message, cut short when long."""
    return _short.repr(value)


# --- one validator per key: value in, normalised value out, _InvalidValue if wrong -------------------------------
class _InvalidValue(Exception):
    """A setting's value is wrong; the caller adds where (file, line, profile, key)."""


def _finite_number(value: object) -> float:
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


def _fraction(name: str, meaning: str = "") -> Callable[[object], float]:
    """A validator of a number in (0, 1]."""
    def validate(value: object) -> float:
        number = _finite_number(value)
        if not 0 < number <= 1:
            raise _InvalidValue(f"must satisfy 0 < {name} <= 1{meaning}, got {value!r}")
        return number
    return validate


def _description(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _InvalidValue(f"must be a non-empty one-line text, got {_describe(value)}")
    text = value.strip()
    if "\n" in text or "\r" in text:
        raise _InvalidValue("must be one line; shorten it")
    return text


def _method(value: object) -> str:
    if not isinstance(value, str) or value not in METHODS:
        hint = did_you_mean(value, METHODS)
        raise _InvalidValue(f"must be one of {', '.join(METHODS)}, got {_describe(value)}{hint}")
    return value


def _similarity_lower_bound(value: object) -> float | None:
    if value is None:
        return None
    bound = _finite_number(value)
    if not -1 <= bound <= 1:
        raise _InvalidValue(f"must be null (family default) or a cosine similarity in [-1, 1], got {value!r}")
    return bound


def _dense_layers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _InvalidValue(f"must be a whole number >= 1, got {_describe(value)}")
    if value < 1:
        raise _InvalidValue(f"must be >= 1 (layers run on all tokens before pruning), got {value}")
    return value


_VALIDATORS: dict[str, Callable[[object], Any]] = {
    "description": _description,
    "method": _method,
    "cost": _fraction("cost", " (fraction of the dense video-token compute)"),
    "similarity_lower_bound": _similarity_lower_bound,
    "ratio_lower_bound": _fraction("ratio_lower_bound"),
    "dense_layers": _dense_layers,
}


# --- the document ----------------------------------------------------------------------------------------------------
def check_profile_name(name: object, source: str, line: int | None = None) -> str:
    if not isinstance(name, str):
        raise file_error(source, f"profile name {_describe(name)} must be text; quote it", line=line)
    if not _NAME_PATTERN.fullmatch(name):
        raise file_error(
            source,
            f"profile name {_short.repr(name)} is not valid: use 1-64 lowercase letters, digits, '-' or '.', "
            "starting with a letter or digit",
            line=line,
        )
    return name


def _profile_settings(name: str, settings: object, source: str, line: int | None) -> dict[str, Any]:
    """One profile's validated settings: every key of PROFILE_KEYS but `stages`, None for those its method does not
    take, plus the other stages: `max_difference`, `dedup_mode`, `dedup_sensitivity` (None: no frame-dedup stage),
    `before_llm` and `inner_merge` (the stage's mapping; None: none)."""
    if not isinstance(settings, dict):
        raise file_error(source, f"must be a mapping of settings (description, method, ...), got {_describe(settings)}",
                         line=line, profile=name)
    for key in settings:
        if key not in PROFILE_KEYS:
            known = ", ".join(PROFILE_KEYS)
            raise file_error(source, f"unknown key{did_you_mean(key, PROFILE_KEYS)}; known keys: {known}",
                             line=_line_of(settings, key), profile=name, key=key)
    if "description" not in settings:
        raise file_error(source, "is missing; add a one-line description", line=line, profile=name, key="description")
    try:
        description = _VALIDATORS["description"](settings["description"])
    except _InvalidValue as invalid:
        raise file_error(source, str(invalid), line=_line_of(settings, "description"), profile=name,
                         key="description") from None
    flat = {key: value for key, value in settings.items() if key != "description"}
    if "stages" not in flat:
        values = _method_settings(name, settings, source, line)
        return {"description": description, **values, "max_difference": None, "dedup_mode": None,
                "dedup_sensitivity": None, "before_llm": None, "inner_merge": None}
    if len(flat) > 1:
        other = next(key for key in flat if key != "stages")
        raise file_error(source, "goes inside the framefusion stage when a profile lists stages",
                         line=_line_of(settings, other), profile=name, key=other)
    number = _finite_number_checked
    try:
        values = profile_stages.parse_stages(
            flat["stages"], number=number,
            framefusion_settings=lambda stage: _method_settings(name, stage, source, _line_of(settings, "stages")))
    except profile_stages.StageError as error:
        raise file_error(source, str(error), line=_line_of(settings, "stages"), profile=name, key="stages") from None
    for key in SETTING_DEFAULTS:
        values.setdefault(key, None)
    return {"description": description, **values}


def _finite_number_checked(value: object) -> float:
    try:
        return _finite_number(value)
    except _InvalidValue as invalid:
        raise profile_stages.StageError(str(invalid)) from None


def _method_settings(name: str, settings: dict, source: str, line: int | None) -> dict[str, Any]:
    """`method` and the settings it takes (defaults filled, None for the settings it does not take); a
    `description` key among the settings is left to the caller."""
    def validated(key: str) -> Any:
        try:
            return _VALIDATORS[key](settings[key])
        except _InvalidValue as invalid:
            raise file_error(source, str(invalid), line=_line_of(settings, key) or line, profile=name,
                             key=key) from None

    for key in settings:
        if key not in _VALIDATORS:
            raise file_error(source, f"unknown key{did_you_mean(key, PROFILE_KEYS)}", line=_line_of(settings, key)
                             or line, profile=name, key=key)
    values = {"method": validated("method") if "method" in settings else DEFAULT_METHOD}
    applicable = METHOD_SETTINGS[values["method"]]
    for key in settings:
        if key not in ("method", "description") and key not in applicable:
            users = [method for method, keys in METHOD_SETTINGS.items() if key in keys]
            raise file_error(source, f"does not apply to method {values['method']!r} (only to {', '.join(users)}); "
                             "remove it", line=_line_of(settings, key) or line, profile=name, key=key)
    for key, default in SETTING_DEFAULTS.items():
        values[key] = (validated(key) if key in settings else default) if key in applicable else None
    return values


def parse_document(document: object, source: str) -> dict[str, dict[str, Any]]:
    """Validate a loaded profiles document (`{"profiles": {name: settings}}`): name -> settings, every key of
    PROFILE_KEYS given (None where the profile's method does not take it). `source` names the document in errors."""
    if document is None:
        raise file_error(source, "the file is empty; it needs a top-level 'profiles:' mapping (see docs/profiles.md)")
    if not isinstance(document, dict):
        raise file_error(source, f"the top level must be a mapping with a 'profiles' key, got {_describe(document)}")
    for key in document:
        if key != "profiles":
            raise file_error(source, f"unknown top-level key {_short.repr(key)}; the only one is 'profiles'",
                             line=_line_of(document, key))
    if "profiles" not in document:
        raise file_error(source, "missing the top-level 'profiles:' mapping (see docs/profiles.md)")
    entries = document["profiles"]
    if not isinstance(entries, dict):
        raise file_error(source, f"'profiles' must be a mapping of profile names to settings, got {_describe(entries)}",
                         line=_line_of(document, "profiles"))
    parsed = {}
    for name, settings in entries.items():
        line = _line_of(entries, name)
        parsed[check_profile_name(name, source, line)] = _profile_settings(name, settings, source, line)
    return parsed
