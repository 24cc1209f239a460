"""`framefusion calibrate`: the proposed S_th follows the authors' rule on the model's real hidden states, a saved
profile is what `ask` then runs, and bad input gets one line and exit code 2."""


import numpy as np
import pytest
import torch

from framefusion.apps.calibrate import calibrate, collect_videos
from framefusion.pipeline.video_qa import open_video_qa
from framefusion.profiles.catalog import builtin_profiles, load_profiles
from framefusion.video.synthetic import write_synthetic_video
from framefusion.video import read_video

from cli_checks import error_line, printed_json, run_cli

import videos as test_videos

MODEL = "random:tiny-qwen2-vl"
FRAMES = 8


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    # Different scenes and lengths, so that the two medians differ and the mean over videos is a real mean.
    return [write_synthetic_video(folder / "scene.mp4", seconds=2.0, fps=8, width=112, height=112, seed=0),
            test_videos.write_indexed_video(folder, "indexed.mp4", seconds=3.0, fps=8, width=112, height=112)]


@pytest.fixture(scope="module")
def baseline_qa():
    return open_video_qa(MODEL, builtin_profiles()["baseline"], device="cpu", dtype="float32")


def hand_computed_median_at_embeddings(qa, path) -> float:
    """The rule's per-video number, computed without framefusion's hooks or core: the model's own hidden_states[0]
    (its input embeddings), video tokens found by token id, frames of P tokens from the grid, cosines by torch."""
    clip = read_video(path, num_frames=FRAMES)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    prompt = qa.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = qa.processor(text=[prompt], videos=[[clip.frames]], video_metadata=[clip.video_metadata()],
                          do_sample_frames=False, return_tensors="pt")
    with torch.inference_mode():
        output = qa.model(**inputs, output_hidden_states=True)
    embeddings = output.hidden_states[0][0]
    video_rows = embeddings[inputs["input_ids"][0] == qa.model.config.video_token_id]
    _, height, width = (int(x) for x in inputs["video_grid_thw"][0])
    merge = qa.model.config.vision_config.spatial_merge_size
    per_frame = (height // merge) * (width // merge)
    cosines = torch.nn.functional.cosine_similarity(video_rows[per_frame:], video_rows[:-per_frame], dim=-1)
    return float(np.median(cosines.double().numpy()))


def test_proposed_threshold_is_the_mean_of_first_layer_medians_computed_by_hand(baseline_qa, two_videos):
    result = calibrate(baseline_qa, two_videos, frames=FRAMES)

    medians = [hand_computed_median_at_embeddings(baseline_qa, path) for path in two_videos]
    assert medians[0] != pytest.approx(medians[1], abs=1e-3)
    assert result.similarity_lower_bound == pytest.approx(sum(medians) / 2, abs=1e-5)
    assert [video.layers[0].median for video in result.videos] == pytest.approx(medians, abs=1e-5)
    assert result.layers[0].median == pytest.approx(result.similarity_lower_bound, abs=1e-12)
    assert len(result.layers) == len(baseline_qa.language_model.layers)
    # The first frame group has no predecessor: every other video token is compared, once.
    for video in result.videos:
        per_frame = video.video_tokens // (FRAMES // 2)
        assert video.compared_tokens == video.video_tokens - per_frame
    assert result.family == "qwen2-vl" and result.family_default == 0.5


def test_saved_profile_loads_and_ask_runs_with_its_threshold(two_videos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("FRAMEFUSION_PROFILES", raising=False)
    user_file = tmp_path / "config" / "framefusion" / "profiles.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("profiles:\n  mine:\n    description: An earlier profile of the user.\n    cost: 0.5\n")

    payload = printed_json(run_cli("calibrate", *two_videos, "--model", MODEL, "--frames", FRAMES,
                                   "--save-profile", "calibrated", "--json"))
    threshold = payload["similarity_lower_bound"]
    # The rule, read back from the report itself: the mean over the videos of each one's median at layer 0.
    video_medians = [video["per_layer_medians"][0] for video in payload["videos"]]
    assert threshold == pytest.approx(sum(video_medians) / len(video_medians), abs=1e-9)
    assert payload["per_layer_medians"][0] == threshold and len(payload["per_layer_medians"]) == 8
    assert [video["video"] for video in payload["videos"]] == [str(path) for path in two_videos]
    assert payload["saved_profile"] == {"name": "calibrated", "file": str(user_file), "replaced": False}

    profiles = load_profiles()
    assert profiles["mine"].cost == 0.5  # the user's own profile is still there
    assert profiles["calibrated"].similarity_lower_bound == round(threshold, 4)
    assert profiles["calibrated"].method == "framefusion" and profiles["calibrated"].cost == 0.3

    answer = printed_json(run_cli("ask", two_videos[0], "What happens?", "--model", MODEL, "--frames", FRAMES,
                                  "--profile", "calibrated", "--json", "--max-new-tokens", "2"))
    assert answer["profile"] == "calibrated"
    assert answer["settings"]["similarity_lower_bound"] == round(threshold, 4)
    assert answer["tokens"]["stages"][0]["name"].startswith("merge")


def test_profile_saved_into_a_new_profiles_file_with_plot(two_videos, tmp_path):
    profiles_file = tmp_path / "new" / "profiles.yaml"
    plot = tmp_path / "similarity.png"
    result = run_cli("calibrate", two_videos[0], "--model", MODEL, "--frames", FRAMES, "--save-profile", "mine",
                     "--cost", "0.4", "--profiles-file", profiles_file, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "proposed S_th" in result.stdout and "0 embeddings" in result.stdout
    assert f"--profile mine --profiles-file {profiles_file}" in " ".join(result.stdout.split())
    saved = load_profiles(profiles_file)["mine"]
    proposed = float(result.stdout.split("proposed S_th", 1)[1].split()[0])
    assert saved.cost == 0.4 and saved.similarity_lower_bound == round(proposed, 4)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_videos_is_a_usage_error():
    error_line(run_cli("calibrate", "--model", MODEL), 2, "no videos given")


def test_a_folder_without_videos_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    error_line(run_cli("calibrate", tmp_path, "--model", MODEL), 2, str(tmp_path), "no video files", "2 other file(s)")


def test_a_file_that_is_no_video_is_a_usage_error(tmp_path):
    broken = test_videos.broken_videos(tmp_path)["text_named_mp4"]
    error_line(run_cli("calibrate", broken, "--model", MODEL), 2, str(broken))


def test_a_model_without_adapter_is_a_usage_error(two_videos, monkeypatch):
    from framefusion.pipeline import video_qa as pipeline

    # As if the family were unknown to FrameFusion: the model loads and runs, but nobody knows its video layout.
    monkeypatch.setattr(pipeline, "find_family", lambda model: None)
    result = run_cli("calibrate", two_videos[0], "--model", MODEL, "--frames", FRAMES)
    error_line(result, 2, "no adapter", "qwen2-vl")


def test_folders_expand_to_their_videos(two_videos, tmp_path):
    folder = two_videos[0].parent
    assert collect_videos([folder]) == sorted(folder / name for name in ("indexed.mp4", "scene.mp4"))
