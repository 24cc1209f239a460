"""Reduction profiles: built-ins, per-user overrides, strict loading, and a fuzz test of the loader."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framefusion import EVS, EarlyTom, FastVID, HoliTom, InnerMerge, VidCom2
from framefusion.errors import InputError, ProfileError
from framefusion.profiles.stages import STAGE_DEFAULTS
from framefusion.profiles.file import MAX_FILE_BYTES, METHODS
from framefusion.profiles.catalog import (
    Profile,
    get_profile,
    load_profiles,
    parse_profiles,
    read_profiles_file,
    user_profiles_file,
)


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """Keep the developer's own profiles file out of every test: an empty config home."""
    config_home = tmp_path / "config"
    config_home.mkdir()
    monkeypatch.delenv("FRAMEFUSION_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    return config_home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def profile_error(tmp_path: Path, text: str) -> str:
    """The message of the ProfileError that loading `text` as a profiles file raises."""
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ProfileError) as raised:
        load_profiles(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


# --- built-ins -------------------------------------------------------------------------------------


def test_builtins_have_the_documented_settings():
    profiles = load_profiles()
    assert list(profiles) == ["baseline", "dedup", "evs", "framefusion", "framefusion-fast", "merge-only",
                              "prune-only", "evs-framefusion", "vidcom2", "vidcom2-framefusion", "fastvid",
                              "fastvid-framefusion", "holitom", "holitom-outer", "holitom-framefusion", "earlytom"]
    assert all(p.source == "built-in" and p.description for p in profiles.values())
    # Stages outside the LLM: frame-dedup changes nothing the LLM sees, EVS runs in the runtime before layer 0.
    assert profiles["dedup"].reduction_kwargs() is None and profiles["dedup"].max_difference == 0
    assert profiles["evs"].reduction_kwargs() == {"merge": False, "prune": False, "before_llm": EVS(0.75)}
    assert [stage["kind"] for stage in profiles["evs-framefusion"].stages()] == ["frame-dedup", "evs", "framefusion"]
    assert profiles["evs-framefusion"].reduction_kwargs() == {
        "cost": 0.3, "similarity_lower_bound": None, "ratio_lower_bound": 0.1, "merge": True, "prune": True,
        "before_llm": EVS(0.5),
    }
    assert profiles["framefusion"].max_difference == 0  # exact dedup: lossless, so the default profile has it

    assert profiles["baseline"].reduction_kwargs() is None
    assert profiles["baseline"].settings() == {"method": "none"}
    assert profiles["framefusion"].reduction_kwargs() == {
        "cost": 0.3, "similarity_lower_bound": None, "ratio_lower_bound": 0.1, "merge": True, "prune": True,
    }
    assert profiles["framefusion-fast"].reduction_kwargs() == {
        "cost": 0.2, "similarity_lower_bound": None, "ratio_lower_bound": 0.1, "merge": True, "prune": True,
    }
    assert profiles["merge-only"].reduction_kwargs() == {
        "cost": 0.3, "similarity_lower_bound": None, "ratio_lower_bound": 0.1, "merge": True, "prune": False,
    }
    assert profiles["prune-only"].reduction_kwargs() == {"cost": 0.3, "dense_layers": 2, "merge": False, "prune": True}
    assert profiles["prune-only"].settings() == {"method": "prune-only", "cost": 0.3, "dense_layers": 2}


def test_every_builtin_profile_and_stage_kind_has_a_row_in_the_profiles_doc():
    from framefusion.profiles.stages import STAGE_KINDS

    rows = [line for line in (Path(__file__).parent.parent / "docs" / "profiles.md").read_text().splitlines()
            if line.startswith("| `")]
    named = {line.split("`")[1] for line in rows}
    assert set(load_profiles()) <= named and set(STAGE_KINDS) <= named


def test_builtin_yaml_ships_as_package_data():
    import importlib.resources

    assert importlib.resources.files("framefusion_profiles").joinpath("builtin.yaml").is_file()


def test_profile_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("framefusion").cost = 0.5


def test_reduction_kwargs_fit_apply_framefusion():
    """Every built-in's keyword arguments bind to the real entry point."""
    from framefusion import apply_framefusion

    signature = inspect.signature(apply_framefusion)
    for profile in load_profiles().values():
        kwargs = profile.reduction_kwargs()
        if kwargs is not None:
            signature.bind(object(), **kwargs)


def test_settings_round_trip_through_a_file(tmp_path):
    """What `file_settings()` gives, written back with the description, loads as the same profile."""
    builtins = load_profiles()
    document = {"profiles": {name: {"description": p.description, **p.file_settings()} for name, p in builtins.items()}}
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    reloaded = read_profiles_file(path)
    assert {n: dataclasses.replace(p, source="built-in") for n, p in reloaded.items()} == builtins
    assert all(p.source == str(path) for p in reloaded.values())


# --- per-user file, FRAMEFUSION_PROFILES, explicit file ------------------------------------------


USER_FILE = """\
profiles:
  framefusion:
    description: My stricter FrameFusion.
    similarity_lower_bound: 0.8
  prune-deep:
    description: Pruning after 4 dense layers.
    method: prune-only
    cost: 0.4
    dense_layers: 4
"""


def check_user_profiles(profiles: dict[str, Profile], path: Path) -> None:
    overridden = profiles["framefusion"]
    # A whole replacement: unspecified settings take the method defaults, not the built-in's values.
    assert (overridden.method, overridden.cost, overridden.similarity_lower_bound, overridden.ratio_lower_bound) == (
        "framefusion", 0.3, 0.8, 0.1,
    )
    assert overridden.description == "My stricter FrameFusion."
    assert overridden.source == str(path)
    added = profiles["prune-deep"]
    assert added.reduction_kwargs() == {"cost": 0.4, "dense_layers": 4, "merge": False, "prune": True}
    assert profiles["baseline"].source == "built-in"
    assert list(profiles)[:8] == ["baseline", "dedup", "evs", "framefusion", "framefusion-fast", "merge-only",
                                  "prune-only", "evs-framefusion"]


def test_user_file_in_xdg_config_home_overrides_and_adds(isolated_config):
    path = write(isolated_config / "framefusion" / "profiles.yaml", USER_FILE)
    assert user_profiles_file() == path
    check_user_profiles(load_profiles(), path)
    assert get_profile("prune-deep").dense_layers == 4


def test_user_file_in_home_config_when_xdg_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(tmp_path / ".config" / "framefusion" / "profiles.yaml", USER_FILE)
    assert user_profiles_file() == path
    check_user_profiles(load_profiles(), path)


def test_framefusion_profiles_variable_names_the_user_file(tmp_path, monkeypatch, isolated_config):
    write(isolated_config / "framefusion" / "profiles.yaml", "this file: is ignored when the variable is set\n")
    path = write(tmp_path / "elsewhere.yaml", USER_FILE)
    monkeypatch.setenv("FRAMEFUSION_PROFILES", str(path))
    check_user_profiles(load_profiles(), path)


def test_framefusion_profiles_variable_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "missing.yaml"
    monkeypatch.setenv("FRAMEFUSION_PROFILES", str(missing))
    with pytest.raises(ProfileError, match=f"FRAMEFUSION_PROFILES is set to {missing}, which does not exist"):
        load_profiles()


def test_missing_user_file_is_fine():
    assert "framefusion" in load_profiles()


def test_explicit_file_comes_last(tmp_path, isolated_config):
    write(isolated_config / "framefusion" / "profiles.yaml", USER_FILE)
    explicit = write(tmp_path / "run.yaml", """\
        profiles:
          prune-deep:
            description: Overridden again.
            method: none
        """)
    profiles = load_profiles(explicit)
    assert profiles["prune-deep"].reduction_kwargs() is None
    assert profiles["prune-deep"].source == str(explicit)
    assert profiles["framefusion"].similarity_lower_bound == 0.8  # from the user file


def test_explicit_file_must_exist(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        load_profiles(tmp_path / "nope.yaml")
    with pytest.raises(ProfileError, match="is a directory"):
        load_profiles(tmp_path)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ProfileError) as raised:
        get_profile("framefusion-fats")
    message = str(raised.value)
    assert "unknown profile 'framefusion-fats'" in message
    assert "did you mean 'framefusion-fast'" in message
    assert "baseline, dedup, evs, framefusion, framefusion-fast, merge-only, prune-only, evs-framefusion" in message
    assert isinstance(raised.value, InputError)


def test_defaults_are_filled_per_method(tmp_path):
    path = write(tmp_path / "minimal.yaml", """\
        profiles:
          a:
            description: Defaults only.
          b:
            description: Merge only.
            method: merge-only
          c:
            description: Prune only.
            method: prune-only
            cost: 1
        """)
    profiles = read_profiles_file(path)
    assert profiles["a"].settings() == {
        "method": "framefusion", "cost": 0.3, "similarity_lower_bound": None, "ratio_lower_bound": 0.1,
    }
    assert profiles["b"].reduction_kwargs()["prune"] is False
    assert profiles["c"].settings() == {"method": "prune-only", "cost": 1.0, "dense_layers": 2}
    assert isinstance(profiles["c"].cost, float)
    assert profiles["c"].similarity_lower_bound is None and profiles["c"].ratio_lower_bound is None


def test_boundary_values_are_accepted(tmp_path):
    path = write(tmp_path / "edges.yaml", """\
        profiles:
          v1.edge-0:
            description: Boundaries.
            cost: 1.0
            similarity_lower_bound: -1
            ratio_lower_bound: 1
        """)
    profile = read_profiles_file(path)["v1.edge-0"]
    assert (profile.cost, profile.similarity_lower_bound, profile.ratio_lower_bound) == (1.0, -1.0, 1.0)


# --- every error names the file, the profile and the key ---------------------------------------


@pytest.mark.parametrize(
    ("settings_yaml", "key", "expected"),
    [
        ("cost: true", "cost", "must be a number, got true (a boolean)"),
        ("cost: '0.3'", "cost", "must be a number, got '0.3' (a string"),
        ("cost: 0", "cost", "0 < cost <= 1"),
        ("cost: 1.5", "cost", "0 < cost <= 1"),
        ("cost: .nan", "cost", "finite"),
        ("cost: [0.3]", "cost", "got a list"),
        ("similarity_lower_bound: 1.01", "similarity_lower_bound", "[-1, 1]"),
        ("similarity_lower_bound: no", "similarity_lower_bound", "got false (a boolean)"),
        ("ratio_lower_bound: 0", "ratio_lower_bound", "0 < ratio_lower_bound <= 1"),
        ("ratio_lower_bound: null", "ratio_lower_bound", "must be a number, got null"),
        ("method: fastv", "method", "must be one of none, framefusion, merge-only, prune-only"),
        ("method: prune_only", "method", "did you mean 'prune-only'"),
        ("costs: 0.3", "costs", "unknown key (did you mean 'cost'?)"),
        ("dense_layers: 2", "dense_layers", "does not apply to method 'framefusion' (only to prune-only)"),
        ("method: none\n    cost: 0.3", "cost", "does not apply to method 'none'"),
        ("method: prune-only\n    dense_layers: 0", "dense_layers", "must be >= 1"),
        ("method: prune-only\n    dense_layers: 2.0", "dense_layers", "must be a whole number"),
        ("method: prune-only\n    dense_layers: true", "dense_layers", "got true (a boolean)"),
        ("method: prune-only\n    ratio_lower_bound: 0.1", "ratio_lower_bound",
         "does not apply to method 'prune-only'"),
    ],
)
def test_bad_setting_names_file_line_profile_and_key(tmp_path, settings_yaml, key, expected):
    message = profile_error(tmp_path, f"""\
profiles:
  fast:
    description: Something.
    {settings_yaml}
""")
    assert "profile 'fast'" in message
    assert f"key '{key}'" in message
    assert expected in message
    assert ", line " in message


def test_missing_or_bad_description(tmp_path):
    message = profile_error(tmp_path, "profiles:\n  fast:\n    cost: 0.2\n")
    assert "line 2: profile 'fast': key 'description': is missing" in message
    message = profile_error(tmp_path, "profiles:\n  fast:\n    description: ''\n")
    assert "key 'description': must be a non-empty" in message
    message = profile_error(tmp_path, "profiles:\n  fast:\n    description: 12\n")
    assert "key 'description'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping with a 'profiles' key, got a list"),
        ("just text\n", "the top level must be a mapping"),
        ("profile:\n  a: {}\n", "unknown top-level key 'profile'"),
        ("version: 1\n", "unknown top-level key 'version'"),
        ("{}\n", "missing the top-level 'profiles:' mapping"),
        ("profiles:\n", "'profiles' must be a mapping of profile names to settings, got null"),
        ("profiles:\n  fast: 0.3\n", "profile 'fast': must be a mapping of settings"),
        ("profiles:\n  Fast:\n    description: x\n", "profile name 'Fast' is not valid"),
        ("profiles:\n  my_profile:\n    description: x\n", "profile name 'my_profile' is not valid"),
        ("profiles:\n  -lead:\n    description: x\n", "profile name '-lead' is not valid"),
        ("profiles:\n  12:\n    description: x\n", "profile name 12 (a int) must be text; quote it"),
    ],
)
def test_bad_document_shape(tmp_path, text, expected):
    assert expected in profile_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("profiles:\n  a:\n    description: x\n  a:\n    description: y\n",
         "line 4: not valid YAML: duplicate key 'a' (first on line 2)"),
        ("profiles:\n  a:\n    description: x\n    cost: 0.2\n    cost: 0.5\n",
         "line 5: not valid YAML: duplicate key 'cost' (first on line 4)"),
        ("profiles: {}\nprofiles: {}\n", "line 2: not valid YAML: duplicate key 'profiles'"),
        ("profiles:\n  a: &s\n    description: x\n  b: *s\n", "line 2: not valid YAML: anchors (&s) are not allowed"),
        ("profiles:\n  a:\n    <<: {description: x}\n", "line 3: not valid YAML: merge keys (<<) are not allowed"),
        ("profiles:\n  a:\n    description: x\n   cost: 0.3\n", "not valid YAML"),
        ("profiles:\n  a: [\n", "line 3: not valid YAML"),
        ("profiles:\n\ta: 1\n", "line 2: not valid YAML"),
        ("profiles: {}\n---\nprofiles: {}\n", "line 2: not valid YAML: but found another document"),
        ("profiles:\n  a:\n    description: x\n    cost: !!python/object:os.system 1\n",
         "line 4: not valid YAML: tags (tag:yaml.org,2002:python/object:os.system) are not allowed"),
        ("profiles:\n  a:\n    description: x\n    cost: !!float ''\n", "line 4: not valid YAML: tags"),
        ("profiles: !!set {a: null}\n", "line 1: not valid YAML: tags"),
        ("profiles:\n  a:\n    description: 2024-13-45\n", "not valid YAML: a value cannot be read"),
        ("profiles:\n  a:\n    description: x\n    cost: " + "9" * 5000 + "\n",
         "not valid YAML: a value cannot be read"),
        ("profiles:\n  a:\n    ? [1, 2]\n    : x\n", "line 3: not valid YAML: a key must be a plain value"),
        ("a: " + "[" * 50 + "]" * 50 + "\n", "nested deeper than 20 levels"),
    ],
)
def test_malformed_or_unsafe_yaml(tmp_path, text, expected):
    assert expected in profile_error(tmp_path, text)


def test_yaml_bomb_is_rejected_quickly(tmp_path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    message = profile_error(tmp_path, "\n".join(lines) + "\n")
    assert "anchors (&a0) are not allowed" in message  # refused at the first anchor: nothing is ever expanded


def test_alias_without_anchor_is_rejected(tmp_path):
    assert "aliases (*x) are not allowed" in profile_error(tmp_path, "profiles: *x\n")


def test_file_size_is_limited(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("profiles: {}\n" + "#" * MAX_FILE_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"is larger than 256 KiB"):
        read_profiles_file(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("profiles:\n  a:\n    description: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ProfileError, match="is not UTF-8 text"):
        read_profiles_file(path)


def test_utf8_bom_and_unicode_description(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("profiles:\n  a:\n    description: caf\u00e9 \u2014 ok\n".encode("utf-8-sig"))
    assert read_profiles_file(path)["a"].description == "caf\u00e9 \u2014 ok"


def test_error_in_user_file_names_that_file(isolated_config):
    path = write(isolated_config / "framefusion" / "profiles.yaml",
                 "profiles:\n  x:\n    description: d\n    cost: 2\n")
    with pytest.raises(ProfileError, match=rf"^{path}, line 4: profile 'x': key 'cost':"):
        load_profiles()


# --- fuzz: nothing but ProfileError ever escapes ----------------------------------------------------

FUZZ = settings(
    max_examples=200, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

YAML_FRAGMENTS = [
    "profiles:", "profiles: ", "\n", "\n  ", "\n    ", "  ", ":", ": ", "- ", "-", "? ", ",", "#", "{", "}", "[", "]",
    "'", '"', "&a ", "*a", "<<: ", "!!python/object:os.system ", "!!binary ", "!!set ", "!!omap ", "!!float ",
    "!!int ", "!!str ", "!foo ", "%YAML 1.1\n", "---\n", "...\n", "|\n", ">\n", "\t", "\\", "\x00", "\ufeff",
    "framefusion", "a", "b", "description", "description: x", "method", "none", "prune-only", "merge-only", "cost",
    "similarity_lower_bound", "ratio_lower_bound", "dense_layers", "0.3", "0", "-1", "1e400", ".nan", ".inf",
    "true", "no", "null", "~", "2024-13-45", "2024-01-01", "1:30", "0x1F", "0o7", "9" * 5000,
]
yaml_ish_text = st.lists(st.sampled_from(YAML_FRAGMENTS), max_size=40).map("".join)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(
    list(METHODS) + ["framefusion", "Fast", "a.b-1"]
)
keys = st.sampled_from(["profiles", "description", "method", "cost", "similarity_lower_bound",
                        "ratio_lower_bound", "dense_layers", "fast", "x"]) | st.text(max_size=8) | st.integers()
structures = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)
setting_values = (
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(-2, 2) | st.floats() | st.sampled_from(METHODS)
    | st.text(max_size=10) | st.lists(st.integers(), max_size=2)
)
optional_settings = {key: setting_values for key in
                     ["method", "cost", "similarity_lower_bound", "ratio_lower_bound", "dense_layers", "extra"]}
settings_like = st.fixed_dictionaries(
    {"description": st.text(min_size=1, max_size=30) | setting_values}, optional=optional_settings
) | st.fixed_dictionaries({}, optional=optional_settings)
names = st.sampled_from(["fast", "a.b-1", "framefusion", "baseline", "Fast", "-x", ""]) | st.text(max_size=6)
documents = (
    structures
    | st.fixed_dictionaries({"profiles": st.dictionaries(names, settings_like | structures, max_size=3)})
    | st.fixed_dictionaries({"profiles": st.dictionaries(names, settings_like, max_size=3)})
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "profiles.yaml"


def load_or_profile_error(path: Path) -> None:
    try:
        profiles = read_profiles_file(path)
    except ProfileError as error:
        assert "\n" not in str(error) and str(error).startswith(str(path))
    else:
        assert all(isinstance(p, Profile) and p.method in METHODS for p in profiles.values())


@FUZZ
@given(text=st.text(max_size=300) | yaml_ish_text)
def test_fuzz_text(fuzz_file, text):
    fuzz_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_profile_error(fuzz_file)


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_bytes(fuzz_file, data):
    fuzz_file.write_bytes(data)
    load_or_profile_error(fuzz_file)


@FUZZ
@given(document=documents)
def test_fuzz_structures(fuzz_file, document):
    try:
        parse_profiles(document, "fuzz")
    except ProfileError as error:
        assert "\n" not in str(error)
    fuzz_file.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    load_or_profile_error(fuzz_file)


# --- stages ----------------------------------------------------------------------------------------------------------
STAGED = """profiles:
  staged:
    description: Every stage.
    stages:
      - kind: frame-dedup
        max_difference: 2.5
      - kind: evs
        pruning_rate: 0.6
      - kind: framefusion
        method: merge-only
        cost: 0.4
"""


def test_the_published_methods_profiles_give_the_librarys_objects():
    profiles = load_profiles()
    assert profiles["vidcom2"].reduction_kwargs() == {"merge": False, "prune": False, "before_llm": VidCom2(0.75)}
    assert profiles["fastvid"].reduction_kwargs()["before_llm"] == FastVID()  # the family's variant and share
    assert profiles["holitom"].reduction_kwargs() == {"merge": False, "prune": False,
                                                      "before_llm": HoliTom(retain_ratio=0.10, tau=0.65),
                                                      "inner_merge": InnerMerge(layer=None, ratio=0.5)}
    assert "inner_merge" not in profiles["holitom-outer"].reduction_kwargs()
    for name in ("vidcom2-framefusion", "fastvid-framefusion", "holitom-framefusion"):
        kwargs = profiles[name].reduction_kwargs()
        assert kwargs["merge"] and kwargs["prune"] and kwargs["before_llm"].kind == name.split("-")[0]
    assert [stage["kind"] for stage in profiles["holitom"].stages()] == ["holitom", "inner-merge"]
    assert profiles["earlytom"].reduction_kwargs()["before_llm"] == EarlyTom()
    assert profiles["earlytom"].encoding_stages() == [profiles["earlytom"].before_llm]  # it changes the features
    # HoliTom reads the tower whatever it keeps: its profiles share one encoding; FastVID reads its own signal.
    assert (profiles["holitom"].encoding_stages() == profiles["holitom-framefusion"].encoding_stages()
            == [{"kind": "holitom"}])
    assert profiles["fastvid"].encoding_stages() == [{"kind": "fastvid", "variant": None}]
    assert profiles["vidcom2"].encoding_stages() == profiles["baseline"].encoding_stages() == []


def test_stage_defaults_are_the_librarys_defaults():
    from framefusion.profiles import stages
    from framefusion.runtime import before_llm

    assert stages.FASTVID_VARIANTS == before_llm.FASTVID_VARIANTS
    for kind, method in [("evs", EVS), ("vidcom2", VidCom2), ("fastvid", FastVID), ("holitom", HoliTom),
                         ("earlytom", EarlyTom), ("inner-merge", InnerMerge)]:
        library = {field.name: field.default for field in dataclasses.fields(method)}
        assert {key: library[key] for key in STAGE_DEFAULTS[kind]} == STAGE_DEFAULTS[kind], kind


def test_a_staged_profile_loads_and_round_trips(tmp_path):
    path = write(tmp_path / "staged.yaml", STAGED)
    profile = get_profile("staged", path)
    assert (profile.max_difference, profile.before_llm, profile.method, profile.cost) == (
        2.5, {"kind": "evs", "pruning_rate": 0.6, "per_video": False}, "merge-only", 0.4)
    assert profile.reduction_kwargs() == {"cost": 0.4, "similarity_lower_bound": None, "ratio_lower_bound": 0.1,
                                          "merge": True, "prune": False, "before_llm": EVS(0.6)}
    again = write(tmp_path / "again.yaml", yaml.safe_dump(
        {"profiles": {"staged": {"description": "again", **profile.file_settings()}}}))
    assert get_profile("staged", again).stages() == profile.stages()


@pytest.mark.parametrize("stages, expected", [
    ("[{kind: evs}, {kind: vidcom2}]", "a profile has one stage before the LLM and evs is already there"),
    ("[{kind: framefusion}, {kind: inner-merge}]", "one stage inside the LLM and framefusion is already there"),
    ("[{kind: inner-merge}, {kind: holitom}]", "(holitom) cannot come after inner-merge"),
    ("[{kind: fastvid, variant: fast}]", "must be one of parallel, segmentwise or null"),
    ("[{kind: holitom, tau: 2}]", "must be a cosine similarity in [-1, 1]"),
    ("[{kind: inner-merge, layer: 0}]", "must be a decoder layer number >= 1"),
    ("[{kind: evs, per_video: 1}]", "must be true (budget each video on its own)"),
    ("[{kind: frame-dedup}, {kind: earlytom}]", "merges repeated frames itself: drop the frame-dedup stage"),
    ("[{kind: earlytom}, {kind: vidcom2}]", "earlytom selects the tokens before the LLM itself"),
    ("[{kind: earlytom, layers: [8, -1]}]", "must be a list of vision tower layer indices >= 0"),
    ("[{kind: earlytom, max_window: 1}]", "must be a whole number of frames >= 2"),
    ("[{kind: blur}]", "unknown kind 'blur'"),
    ("[{kind: evs, pruning_rate: 1}]", "0 <= pruning_rate < 1"),
    ("[{kind: evs, pruning_rate: -0.1}]", "0 <= pruning_rate < 1"),
    ("[{kind: framefusion}, {kind: evs}]", "cannot come after framefusion"),
    ("[{kind: evs}, {kind: frame-dedup}]", "cannot come after evs"),
    ("[{kind: evs}, {kind: evs}]", "a profile has one stage before the LLM and evs is already there"),
    ("[{kind: frame-dedup, max_difference: 300}]", "[0, 255]"),
    ("[{kind: evs, rate: 0.5}]", "unknown setting for evs"),
    ("[{kind: framefusion, cost: 2}]", "0 < cost <= 1"),
    ("{kind: evs}", "must be a list of stages"),
])
def test_bad_stages_are_one_line_errors_naming_file_profile_and_key(tmp_path, stages, expected):
    path = write(tmp_path / "bad.yaml", f"profiles:\n  broken:\n    description: d\n    stages: {stages}\n")
    with pytest.raises(ProfileError) as raised:
        get_profile("broken", path)
    message = str(raised.value)
    assert message.startswith(f"{path}, line 4: profile 'broken': key '") and "\n" not in message
    assert expected in message


def test_stages_and_flat_settings_do_not_mix(tmp_path):
    path = write(tmp_path / "mixed.yaml",
                 "profiles:\n  mixed:\n    description: d\n    method: framefusion\n    stages: []\n")
    with pytest.raises(ProfileError, match="key 'method': goes inside the framefusion stage"):
        get_profile("mixed", path)
