"""The family registry: every family, built-in or third-party, comes from the `framefusion.families` entry points.

The third-party families here are real installed-package metadata (a `*.dist-info` folder with METADATA and
entry_points.txt) and a module, written into a temporary folder put on sys.path: what `pip install` would leave,
without installing anything.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import textwrap
from importlib import metadata

import pytest
import transformers
from packaging.version import Version
import torch

import framefusion.families
import tiny_models
from framefusion import apply_framefusion
from framefusion.errors import InputError
from framefusion.families import (
    ENTRY_POINT_GROUP,
    Family,
    FamilyRegistryWarning,
    all_aliases,
    clear_registry_cache,
    default_model,
    family_by_name,
    family_for,
    family_for_model_type,
    frame_multiple_for,
    registered_families,
    supported_families,
)
from framefusion.model_zoo import parse_model_spec, tiny_families
from framefusion.pipeline.video_qa import check_frame_count

from cli_checks import run_cli

BUILTIN_ORDER = ["qwen2-vl", "qwen2.5-vl", "llava-onevision", "qwen3-vl", "qwen3.5", "gemma4", "llava-next-video",
                 "internvl", "smolvlm", "minicpm-v"]
# The families that run here: MiniCPM-V is registered to be refused, Qwen3.5 is refused before transformers 5.25.
RUNNING = [name for name in BUILTIN_ORDER[:-1]
           if name != "qwen3.5" or Version(transformers.__version__) >= Version("5.25.0")]

# Qwen2-VL's layout under a model_type of its own, with an S_th, a frame multiple and an alias no built-in family
# has; it records every prompt it lays out, so a test can tell that it, not the built-in, did the work.
THIRD_PARTY_MODULE = '''
from types import MappingProxyType

from framefusion.families.qwen_vl import Qwen2VL


class ThirdPartyVL(Qwen2VL):
    name = "thirdparty-vl"
    model_types = ("thirdparty_vl",)
    default_similarity_lower_bound = 0.123
    similarity_source = "the plugin's own"
    frame_multiple = 4
    aliases = MappingProxyType({"thirdparty-vl-1b": "someone/thirdparty-vl-1b"})
    default_alias = "thirdparty-vl-1b"  # ignored: only a built-in family provides the default model
    shape_names = ()

    def __init__(self):
        self.laid_out = []  # (prompt length, video tokens) of every prompt this family laid out

    def patch_types(self, model, input_ids, video):
        types = super().patch_types(model, input_ids, video)
        self.laid_out.append((int(input_ids.numel()), int((types >= 0).sum())))
        return types

    def tiny_kit(self):
        return None


family = ThirdPartyVL()
NOT_A_FAMILY = "a string"
'''


def write_distribution(root, name: str, entry_points: dict[str, str]) -> None:
    """What pip leaves for an installed distribution: <name>-0.1.dist-info with METADATA and entry_points.txt."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """One working third-party family and three broken entry points on sys.path; yields the load's warnings."""
    (tmp_path / "thirdparty_family.py").write_text(textwrap.dedent(THIRD_PARTY_MODULE))
    write_distribution(tmp_path, "thirdparty_family", {"thirdparty-vl": "thirdparty_family:family"})
    write_distribution(tmp_path, "broken_family", {
        "missing": "no_such_module_anywhere:family",
        "not-a-family": "thirdparty_family:NOT_A_FAMILY",
        "qwen2-vl": "thirdparty_family:family",  # names a family called otherwise, and a name already taken
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_registry_cache()
    with pytest.warns(FamilyRegistryWarning) as caught:
        registered_families()
    yield [str(warning.message) for warning in caught]
    monkeypatch.undo()
    sys.modules.pop("thirdparty_family", None)
    clear_registry_cache()


def test_every_builtin_family_is_an_entry_point_and_nothing_else_lists_them():
    points = {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert [family.name for family in registered_families()] == BUILTIN_ORDER
    for family in registered_families():
        assert points[family.name].dist.name == "framefusion"
        assert points[family.name].load() is family
    # Every Family defined in the package is registered: a new family module cannot be forgotten.
    defined = set()
    for module_info in pkgutil.walk_packages(framefusion.families.__path__, "framefusion.families."):
        module = importlib.import_module(module_info.name)
        defined |= {id(value) for value in vars(module).values() if isinstance(value, Family)}
    assert defined == {id(family) for family in registered_families()}


def test_the_registry_answers_what_the_families_say():
    assert supported_families() == RUNNING
    assert tiny_families() == tuple(RUNNING)
    assert default_model() == "qwen2-vl-2b" and all_aliases()["qwen2-vl-2b"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert sum(1 for family in registered_families() if family.default_alias) == 1
    assert family_for_model_type("qwen2_5_vl") is family_by_name("qwen2.5-vl")
    assert family_for_model_type("llama") is None
    assert [frame_multiple_for(name) for name in ("qwen2-vl", "qwen2.5-vl", "llava-onevision", None, "unknown")] == [
        2, 2, 1, 1, 1]
    with pytest.raises(InputError, match="unknown model family 'gpt-vision': use one of qwen2-vl, qwen2.5-vl"):
        family_by_name("gpt-vision")


def test_a_model_of_no_family_is_refused_with_the_supported_ones():
    with pytest.raises(InputError, match=r"Linear \(model_type None\); supported families: qwen2-vl, qwen2.5-vl"):
        family_for(torch.nn.Linear(2, 2))


def test_broken_third_party_entry_points_warn_and_are_skipped(third_party):
    assert len(third_party) == 3
    assert any("missing = no_such_module_anywhere:family" in text and "No module named" in text
               for text in third_party)
    assert any("not-a-family" in text and "not a framefusion Family" in text for text in third_party)
    assert any("qwen2-vl = thirdparty_family:family" in text and "'thirdparty-vl', not 'qwen2-vl'" in text
               for text in third_party)
    # Built-ins first, in their order; then the third-party families by name.
    assert [family.name for family in registered_families()] == BUILTIN_ORDER + ["thirdparty-vl"]
    assert family_by_name("qwen2-vl").model_types == ("qwen2_vl",)


def test_a_third_party_family_lays_out_the_video_and_sets_the_defaults(third_party):
    plugin = family_by_name("thirdparty-vl")
    model = tiny_models.qwen2_vl(num_layers=4)
    model.config.model_type = "thirdparty_vl"  # what a checkpoint of the plugin's own architecture would say
    handle = apply_framefusion(model, cost=0.5)
    assert handle.family is plugin and type(plugin).__module__ == "thirdparty_family"
    assert handle.settings.similarity_lower_bound == 0.123
    inputs = tiny_models.qwen_video_inputs([(4, 8, 8)])
    with torch.no_grad():
        model(**inputs)
    assert plugin.laid_out == [(inputs["input_ids"].shape[1], 4 * 8 * 8 // 4)]
    assert handle.stats.video_tokens == 4 * 8 * 8 // 4 and handle.stats.reduced
    # Its frame multiple and aliases come through the registry too; the default model stays the built-in one.
    with pytest.raises(InputError, match="thirdparty-vl takes frames in groups of 4") as raised:
        check_frame_count("thirdparty-vl", 6)
    assert [(way.setting, way.value) for way in raised.value.suggestions] == [("frames", 8)]
    assert parse_model_spec("thirdparty-vl-1b").target == "someone/thirdparty-vl-1b"
    assert default_model() == "qwen2-vl-2b"


def test_framefusion_models_lists_a_third_party_family(third_party):
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    families = {item["family"]: item for item in listing["families"]}
    assert list(families) == RUNNING + ["thirdparty-vl"]
    assert families["thirdparty-vl"]["similarity_lower_bound"] == 0.123
    assert families["thirdparty-vl"]["frame_multiple"] == 4
    assert [item["family"] for item in listing["refused"]] == [name for name in BUILTIN_ORDER if name not in RUNNING]
    assert listing["aliases"]["thirdparty-vl-1b"] == "someone/thirdparty-vl-1b"
