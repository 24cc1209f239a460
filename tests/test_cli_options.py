"""Every option of `ask` and `chat` does what its help says, through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_checks import printed_json, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"  # 6 s at 8 frames/s
BASE = ["ask", str(SAMPLE), "What happens?", "--model", "random:tiny-qwen2-vl", "--max-new-tokens", "6", "--no-cache",
        "--json"]


def ask(*extra: str) -> dict:
    return printed_json(run_cli(*BASE, *extra))


def test_sampling_with_the_same_seed_repeats_and_another_seed_differs():
    sampled = ["--frames", "4", "--temperature", "1.5"]
    first, again = ask(*sampled, "--seed", "1"), ask(*sampled, "--seed", "1")
    assert first["answer"] == again["answer"]
    others = {ask(*sampled, "--seed", str(seed))["answer"] for seed in (2, 3, 4)}
    assert others - {first["answer"]}  # random weights, 6 tokens at temperature 1.5: some seed differs


def test_greedy_answers_ignore_the_seed():
    assert ask("--frames", "4", "--seed", "1")["answer"] == ask("--frames", "4", "--seed", "2")["answer"]


def test_a_system_prompt_enters_the_prompt():
    plain, told = ask("--frames", "4"), ask("--frames", "4", "--system", "You describe videos in one short line.")
    assert told["tokens"]["prompt"] > plain["tokens"]["prompt"]


def test_the_default_frame_count_and_sampling_by_rate_and_span():
    assert ask()["tokens"]["frames"] == 32
    assert ask("--fps", "1")["tokens"]["frames"] == 6  # 6 s at 1 frame/s
    assert ask("--fps", "2", "--end", "2")["tokens"]["frames"] == 4  # the first 2 s at 2 frames/s


@pytest.mark.parametrize("flag, restored", [((), True), (("--no-reference-positions",), False)])
def test_reference_positions_are_restored_unless_turned_off(flag, restored, monkeypatch):
    from framefusion import has_reference_positions
    from framefusion.pipeline import video_qa

    seen = []
    real = video_qa.VideoQA.answer

    def recording(qa, *args, **kwargs):
        seen.append(has_reference_positions(qa.model))
        return real(qa, *args, **kwargs)

    monkeypatch.setattr(video_qa.VideoQA, "answer", recording)
    for profile in ("baseline", "framefusion"):  # every profile, baseline included, so comparisons stay fair
        ask("--frames", "4", "--profile", profile, *flag)
    assert seen == [restored, restored]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_attention_backend_is_the_one_asked_for(attn, monkeypatch):
    from framefusion.pipeline import video_qa

    seen = []
    real = video_qa.VideoQA.__init__

    def recording(qa, model, *args, **kwargs):
        seen.append(model.config._attn_implementation)
        real(qa, model, *args, **kwargs)

    monkeypatch.setattr(video_qa.VideoQA, "__init__", recording)
    ask("--frames", "4", "--attn", attn)
    assert seen == [attn]


def test_chat_in_plain_text_answers_and_resets():
    result = run_cli("chat", SAMPLE, "--model", "random:tiny-qwen2-vl", "--frames", "4", "--max-new-tokens", "3",
                     "--no-cache", input="What happens?\n/reset\nAnd then?\n/tokens\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("A:") == 2
    assert "conversation reset" in result.stderr
    assert "Turn 1" in result.stdout  # /tokens after the reset shows the new conversation's first turn
