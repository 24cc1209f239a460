"""framefusion chat: follow-ups continue from the KV cache and equal a fresh run on the whole conversation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framefusion.apps.chat import ChatSession
from framefusion.model_zoo import load_model
from framefusion.pipeline.video_qa import VideoQA
from framefusion.profiles.catalog import get_profile
from framefusion.video import read_video

from cli_checks import run_cli

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.mp4"


def session(family: str, profile: str) -> ChatSession:
    loaded = load_model(f"random:tiny-{family}", dtype=torch.float32, device="cpu")
    qa = VideoQA(loaded.model, loaded.processor, model_name=loaded.name, profile=get_profile(profile))
    return ChatSession(qa, qa.prepare_video(read_video(str(SAMPLE), num_frames=8)), max_new_tokens=6)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-onevision", "qwen3-vl"])
def test_a_baseline_follow_up_equals_one_fresh_prefill_of_the_whole_conversation(family):
    chat = session(family, "baseline")
    chat.ask("What happens?")
    conversation = chat._conversation
    first_ids = conversation.token_ids
    follow_up = chat.ask("And then?")
    # The same token ids in one fresh prefill, video included: the same greedy tokens.
    qa = chat.qa
    new_ids = chat._conversation.token_ids[:, first_ids.shape[1]:]
    prompt_ids = chat._conversation.token_ids[:, : first_ids.shape[1] + new_ids.shape[1] - follow_up.new_tokens]
    inputs = qa._processor_inputs(chat.prepared.clip, "What happens?", None)
    inputs["input_ids"] = prompt_ids
    inputs["attention_mask"] = torch.ones_like(prompt_ids)
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat(
            [types, torch.zeros(1, prompt_ids.shape[1] - types.shape[1], dtype=types.dtype)], dim=1)
    with torch.inference_mode():
        fresh = qa.model.generate(**inputs, **qa.generation_kwargs(max_new_tokens=6))
    assert fresh[0, prompt_ids.shape[1]:].tolist() == chat._conversation.token_ids[0, prompt_ids.shape[1]:].tolist()
    assert follow_up.tokens["prompt"] == prompt_ids.shape[1]


def test_follow_ups_compute_only_their_own_tokens_and_reset_starts_over():
    chat = session("qwen2-vl", "framefusion")
    first = chat.ask("What happens?")
    second = chat.ask("And then?")
    assert first.tokens["report"]["final"] < first.tokens["prompt"]  # the first prefill was reduced
    assert second.tokens["prefill"] < first.tokens["prompt"] / 4
    assert second.tokens["prompt"] > first.tokens["prompt"]
    # The cache grew by exactly this turn's prefill and answer (the last answer token is not cached yet).
    assert second.tokens["cached_first_layer"] == (
        first.tokens["cached_first_layer"] + second.tokens["prefill"] + second.new_tokens - 1)
    chat.reset()
    again = chat.ask("What happens?")
    assert again.turn == 1 and again.answer == first.answer and again.tokens["prompt"] == first.tokens["prompt"]


def test_chat_command_reads_questions_from_stdin_and_prints_a_json_line_per_turn(tmp_path):
    saved = tmp_path / "conversation.json"
    result = run_cli("chat", SAMPLE, "--model", "random:tiny-qwen2-vl", "--frames", "8", "--max-new-tokens", "4",
                     "--device", "cpu", "--json",
                     input=f"What happens?\n\n/tokens\nAnd then?\n/save {saved}\n/exit\nnever asked\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    turns = [line for line in lines if "turn" in line]
    assert [turn["turn"] for turn in turns] == [1, 2]
    assert [turn["question"] for turn in turns] == ["What happens?", "And then?"]
    assert turns[1]["tokens"]["prefill"] < turns[0]["tokens"]["prompt"] / 4
    assert set(turns[0]["timings"]) >= {"prefill", "generate", "total"}
    assert json.loads(saved.read_text())["turns"][1]["answer"] == turns[1]["answer"]


def test_chat_refuses_bad_input_before_loading(tmp_path):
    result = run_cli("chat", tmp_path / "missing.mp4", "--model", "random:tiny-qwen2-vl", input="hi\n")
    assert result.exit_code == 2
    assert "missing.mp4" in result.stderr and "Traceback" not in result.output
