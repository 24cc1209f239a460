"""calibrate --save-profile never loses a profile: a profiles file it cannot parse is refused and left as it was, and
replacing one profile keeps every other."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from framefusion.profiles.catalog import load_profiles
from framefusion_cli.app import app

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
CALIBRATE = ["calibrate", str(SAMPLE), "--model", "random:tiny-qwen2-vl", "--frames", "4"]
runner = CliRunner()


def test_a_profiles_file_that_does_not_parse_is_refused_before_loading_and_left_unchanged(tmp_path):
    profiles_file = tmp_path / "profiles.yaml"
    broken = "profiles:\n  mine: [unclosed\n"
    profiles_file.write_text(broken)
    result = runner.invoke(app, [*CALIBRATE, "--save-profile", "calibrated", "--profiles-file", str(profiles_file)])
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
    assert "loading" not in result.stderr  # refused before the model
    assert profiles_file.read_text() == broken


def test_replacing_a_profile_keeps_the_others_and_their_settings(tmp_path):
    profiles_file = tmp_path / "profiles.yaml"
    others = {"fast": {"description": "mine", "method": "framefusion", "cost": 0.2},
              "calibrated": {"description": "old", "method": "framefusion", "cost": 0.5,
                             "similarity_lower_bound": 0.123}}
    profiles_file.write_text(yaml.safe_dump({"profiles": others}, sort_keys=False))
    result = runner.invoke(app, [*CALIBRATE, "--save-profile", "calibrated", "--cost", "0.4", "--profiles-file",
                                 str(profiles_file), "--json"])
    assert result.exit_code == 0, result.output
    saved = load_profiles(profiles_file)
    assert saved["fast"].cost == 0.2 and saved["fast"].description == "mine"
    assert saved["calibrated"].cost == 0.4 and saved["calibrated"].similarity_lower_bound != 0.123
    assert list(yaml.safe_load(profiles_file.read_text())["profiles"]) == ["fast", "calibrated"]
