"""Named reduction profiles: a name for one setting of `apply_framefusion`.

Profiles come from YAML files (schema: docs/profiles.md, read strictly by `framefusion.profiles.file`). The built-ins
ship with the package (`framefusion_profiles/builtin.yaml`); a per-user file and an explicit file may add profiles or
replace built-ins by name.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from framefusion.profiles import file as profile_file
from framefusion.errors import ProfileError
from framefusion.profiles.file import METHOD_SETTINGS

__all__ = [
    "BUILTIN_SOURCE", "PROFILES_ENV_VAR", "Profile", "builtin_profiles", "get_profile", "load_profiles",
    "parse_profiles", "parse_profiles_text", "read_profiles_file", "save_profile", "user_profiles_file",
]

PROFILES_ENV_VAR = "FRAMEFUSION_PROFILES"
BUILTIN_SOURCE = "built-in"


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
    # Stages outside FrameFusion (None: not in this profile): frame-dedup's max RGB difference; the stage before the
    # LLM and the inner merge, each its mapping as a profiles file spells it with every setting ({"kind": "vidcom2",
    # "pruning_rate": 0.75}).
    max_difference: float | None = None
    before_llm: Mapping[str, Any] | None = None
    inner_merge: Mapping[str, Any] | None = None
    # frame-dedup's test, "exact" or "noise-aware" (framefusion.methods.frame_dedup), and the noise-aware test's
    # sensitivity (None in exact mode).
    dedup_mode: str | None = None
    dedup_sensitivity: float | None = None

    def reduction_kwargs(self) -> dict | None:
        """Keyword arguments for `apply_framefusion(model, **kwargs)` (the stages before and inside the LLM, as the
        library's objects); None when nothing there is reduced (frame-dedup, before the vision encoder, changes nothing
        the LLM sees)."""
        if self.method == "none" and self.before_llm is None and self.inner_merge is None:
            return None
        from framefusion.runtime.reduction import InnerMerge

        kwargs = {key: getattr(self, key) for key in METHOD_SETTINGS[self.method]}
        kwargs["merge"] = self.method in ("framefusion", "merge-only")
        kwargs["prune"] = self.method in ("framefusion", "prune-only")
        if self.before_llm is not None:
            kwargs["before_llm"] = stage_method(self.before_llm)
        if self.inner_merge is not None:
            kwargs["inner_merge"] = InnerMerge(layer=self.inner_merge["layer"], ratio=self.inner_merge["ratio"])
        return kwargs

    def stages(self) -> list[dict]:
        """The profile as its ordered stages, each a mapping as a profiles file spells it."""
        stages = []
        if self.max_difference is not None:
            stages.append(self._frame_dedup_stage())
        if self.before_llm is not None:
            stages.append(dict(self.before_llm))
        if self.method != "none":
            stages.append({"kind": "framefusion", "method": self.method,
                           **{key: getattr(self, key) for key in METHOD_SETTINGS[self.method]}})
        if self.inner_merge is not None:
            stages.append(dict(self.inner_merge))
        return stages

    def _frame_dedup_stage(self) -> dict:
        # Exact mode is spelt as before modes existed (the feature cache keys by it); noise-aware names its settings,
        # max_difference only when it adds to the noise test.
        if self.dedup_mode in (None, "exact"):
            return {"kind": "frame-dedup", "max_difference": self.max_difference}
        stage = {"kind": "frame-dedup", "mode": self.dedup_mode, "sensitivity": self.dedup_sensitivity}
        if self.max_difference:
            stage["max_difference"] = self.max_difference
        return stage

    def encoding_stages(self) -> list[dict]:
        """The stages that change what encoding a video gives: those before and inside the vision encoder, and those
        that read its signals (HoliTom, FastVID: only what decides the signal read, not how much they keep). Part of
        the feature cache's key; profiles with the same share one encoding."""
        stages = []
        for stage in self.stages():
            if stage["kind"] in TOWER_READING_KINDS:
                stages.append({key: value for key, value in stage.items() if key in TOWER_READING_KINDS[stage["kind"]]})
            elif stage["kind"] in ("frame-dedup", "earlytom"):
                stages.append(stage)
        return stages

    def settings(self) -> dict:
        """The method and the settings that apply to it, plus the stages when the profile has any outside the LLM
        (for listings and JSON reports)."""
        settings = {"method": self.method, **{key: getattr(self, key) for key in METHOD_SETTINGS[self.method]}}
        if self.max_difference is not None or self.before_llm is not None or self.inner_merge is not None:
            settings["stages"] = self.stages()
        return settings

    def file_settings(self) -> dict:
        """The settings as a profiles file spells them: the flat form, or the stages when there are any outside the
        LLM (the two forms do not mix)."""
        settings = self.settings()
        return {"stages": settings["stages"]} if "stages" in settings else settings


# The stages that read the vision tower's signals while it encodes, and the settings that decide which signal.
TOWER_READING_KINDS = {"holitom": ("kind",), "fastvid": ("kind", "variant", "pooling_head")}


def stage_method(stage: Mapping[str, Any]) -> Any:
    """The library's object for a stage before the LLM (or EarlyTom's), from its mapping: framefusion.VidCom2(...)."""
    from framefusion.runtime.before_llm import METHODS

    settings = {key: tuple(value) if isinstance(value, list) else value
                for key, value in stage.items() if key != "kind"}
    return METHODS[stage["kind"]](**settings)


def parse_profiles(document: object, source: str) -> dict[str, Profile]:
    """Validate a loaded profiles document (`{"profiles": {name: settings}}`) into Profiles.

    `source` names where the document came from, in errors and in `Profile.source`.
    """
    return {name: Profile(name=name, source=source, **settings)
            for name, settings in profile_file.parse_document(document, source).items()}


def parse_profiles_text(text: str, source: str) -> dict[str, Profile]:
    """Parse profiles YAML text strictly (see `framefusion.profiles.file`) and validate it."""
    return parse_profiles(profile_file.load_yaml_text(text, source), source)


def read_profiles_file(path: Path) -> dict[str, Profile]:
    """Read and validate one profiles file (no built-ins, no per-user file)."""
    path = Path(path)
    return parse_profiles_text(profile_file.read_text(path), str(path))


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
        problem = f"{PROFILES_ENV_VAR} is set to {user_file}, which does not exist; fix the path or unset it"
        raise ProfileError(" ".join(problem.split()))  # the path may hold a line break; the error is one line
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
    valid_name = profile_file.check_profile_name(name, source)
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
        raise profile_file.file_error(source, f"cannot be written: {bad.strerror or bad}") from None
    return target, replaced


def get_profile(name: str, profiles_file: Path | None = None) -> Profile:
    """The profile called `name` (see `load_profiles` for where profiles come from)."""
    profiles = load_profiles(profiles_file)
    if name not in profiles:
        raise ProfileError(
            f"unknown profile {profile_file.quoted(name)}{profile_file.did_you_mean(name, profiles)}; "
            f"available: {', '.join(profiles)} (or define it in a profiles file, see docs/profiles.md)"
        )
    return profiles[name]
