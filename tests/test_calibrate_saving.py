"""calibrate --save-profile never loses a profile: a profiles file it cannot parse is refused and left as it was, and
replacing one profile keeps every other."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from framefusion.profiles.catalog import load_profiles

from cli_checks import error_line, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"
CALIBRATE = ["calibrate", str(SAMPLE), "--model", "random:tiny-qwen2-vl", "--frames", "4"]


def test_a_profiles_file_that_does_not_parse_is_refused_before_loading_and_left_unchanged(tmp_path):
    profiles_file = tmp_path / "profiles.yaml"
    broken = "profiles:\n  mine: [unclosed\n"
    profiles_file.write_text(broken)
    result = run_cli(*CALIBRATE, "--save-profile", "calibrated", "--profiles-file", str(profiles_file))
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
    assert "loading" not in result.stderr  # refused before the model
    assert profiles_file.read_text() == broken


def test_replacing_a_profile_keeps_the_others_and_their_settings(tmp_path):
    profiles_file = tmp_path / "profiles.yaml"
    others = {"fast": {"description": "mine", "method": "framefusion", "cost": 0.2},
              "calibrated": {"description": "old", "method": "framefusion", "cost": 0.5,
                             "similarity_lower_bound": 0.123}}
    profiles_file.write_text(yaml.safe_dump({"profiles": others}, sort_keys=False))
    result = run_cli(*CALIBRATE, "--save-profile", "calibrated", "--cost", "0.4", "--profiles-file",
                     str(profiles_file), "--json")
    assert result.exit_code == 0, result.output
    saved = load_profiles(profiles_file)
    assert saved["fast"].cost == 0.2 and saved["fast"].description == "mine"
    assert saved["calibrated"].cost == 0.4 and saved["calibrated"].similarity_lower_bound != 0.123
    assert list(yaml.safe_load(profiles_file.read_text())["profiles"]) == ["fast", "calibrated"]


def test_the_saved_profile_keeps_the_default_profiles_stages_with_the_calibrated_threshold(tmp_path):
    from framefusion.profiles.catalog import get_profile

    profiles_file = tmp_path / "profiles.yaml"
    result = run_cli(*CALIBRATE, "--save-profile", "mine", "--profiles-file", str(profiles_file), "--json")
    assert result.exit_code == 0, result.output
    threshold = round(json.loads(result.stdout)["similarity_lower_bound"], 4)
    saved, default = load_profiles(profiles_file)["mine"], get_profile("framefusion")
    assert saved.encoding_stages() == default.encoding_stages() != []  # frame dedup as the default has it
    assert (saved.method, saved.cost, saved.similarity_lower_bound) == ("framefusion", 0.3, threshold)


def test_an_unreadable_video_is_skipped_and_reported_and_only_none_readable_is_an_error(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    result = run_cli(*CALIBRATE[:2], str(broken), *CALIBRATE[2:], "--json")
    assert result.exit_code == 0, result.output
    assert f"warning: skipped {broken}" in " ".join(result.stderr.split())
    assert [video["video"] for video in json.loads(result.stdout)["videos"]] == [str(SAMPLE)]
    both = run_cli("calibrate", str(broken), str(broken), *CALIBRATE[2:])
    error_line(both, 2, "none of the 2 videos can be read", before_loading=True)


def test_a_threshold_that_would_stop_merging_is_warned_about(monkeypatch):
    from framefusion.apps import calibrate

    monkeypatch.setattr(calibrate, "proposed_threshold", lambda videos: 0.995)
    result = run_cli(*CALIBRATE, "--json")
    assert result.exit_code == 0, result.output
    assert "would stop merging" in result.stderr and json.loads(result.stdout)["stops_merging"] is True
