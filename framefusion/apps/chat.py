"""A conversation about one video: the first question runs the whole prefill (video included, reduced by the
profile); each follow-up continues from the KV cache the earlier turns left, so its prefill computes only its own
new tokens.

How a follow-up is fed to generate() (each point is a trap seen on transformers 5.x):
- the new input is only what the cache does not hold yet: the last generated token, the end of the assistant's turn
  and the new user turn. generate() would otherwise slice the input by `cache.get_seq_length()`, which is layer 0's
  length, shortened by FrameFusion;
- the attention mask covers the whole conversation, unreduced: generate() derives the rotary positions of the new
  tokens from it (and Qwen-VL adds the `rope_deltas` its prefill cached), so they sit where an unreduced prompt would;
- the runtime never reduces a continuation, and cuts a materialised mask to each layer's own cache length.

Trade-off: with pruning, follow-ups see only the video tokens the first question kept (pruning ranks tokens by the
attention of the first question). Merge-only profiles keep every frame's content (merged, not dropped) and suit long
conversations better; see docs/chat.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from framefusion.runtime import transformers_compat as compat
from framefusion.runtime.clock import Stopwatch
from framefusion.errors import InputError
from framefusion.pipeline.video_qa import VideoQA
from framefusion.pipeline.results import AskResult, Conversation, PreparedVideo, Timings

# Marks where the assistant's answer goes when the chat template renders a finished turn.
_ANSWER_MARK = "\u2063FRAMEFUSION-ANSWER\u2063"


@dataclass
class ChatTurn:
    """One question and its answer. tokens: `prompt` = the conversation's tokens so far before any reduction,
    `prefill` = tokens computed in this turn's prefill, `cached` = tokens held per layer after it (first and last
    layer), plus the first turn's full token report under `report`."""

    turn: int
    question: str
    answer: str
    tokens: dict[str, Any]
    timings: Timings
    new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "question": self.question, "answer": self.answer, "tokens": dict(self.tokens),
                "timings": self.timings.to_dict(), "new_tokens": self.new_tokens}


@dataclass
class ChatSession:
    """Questions about one prepared video, each continuing the conversation. `reset()` starts over from the video."""

    qa: VideoQA
    prepared: PreparedVideo
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None
    turns: list[ChatTurn] = field(default_factory=list)
    _conversation: Conversation | None = field(default=None, repr=False)
    _messages: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> ChatTurn:
        if not question.strip():
            raise InputError("the question is empty: ask something about the video")
        if self._conversation is None:
            turn = self._first_turn(question, on_text)
        else:
            turn = self._follow_up(question, on_text)
        self.turns.append(turn)
        return turn

    def reset(self) -> None:
        """Forget the conversation (and its cache); the next question starts from the video again."""
        self._conversation = None
        self._messages = []
        self.turns = []

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.qa.model_name, "profile": self.qa.profile.name, "video": str(self.prepared.clip.path),
                "turns": [turn.to_dict() for turn in self.turns]}

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        try:
            target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise InputError(f"cannot write the conversation ({error.strerror or error})", setting="save",
                             value=str(target)) from None
        return target

    # --- turns ---------------------------------------------------------------------------------------------------
    def _first_turn(self, question: str, on_text: Callable[[str], None] | None) -> ChatTurn:
        result: AskResult = self.qa.answer(
            self.prepared, question, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            seed=self.seed, system=self.system, on_text=on_text, keep_cache=True,
        )
        self._conversation = result.conversation
        self._messages = self._opening_messages(question) + [self._assistant(result.answer)]
        report = result.tokens.to_dict()
        tokens = {"prompt": result.tokens.prompt, "prefill": result.tokens.prompt, **self._cached(), "report": report}
        return ChatTurn(1, question, result.answer, tokens, result.timings, result.new_tokens)

    def _follow_up(self, question: str, on_text: Callable[[str], None] | None) -> ChatTurn:
        conversation = self._conversation
        assert conversation is not None
        qa = self.qa
        with Stopwatch(qa.device) as preprocess:
            new_ids = self._continuation_ids(question)
        all_ids = torch.cat([conversation.token_ids, new_ids], dim=1)
        # Not in the cache yet: the last generated token, then the new turn.
        uncached = all_ids[:, conversation.token_ids.shape[1] - 1 :]
        inputs: dict[str, Any] = {"input_ids": uncached, "attention_mask": torch.ones_like(all_ids)}
        if conversation.token_types is not None:
            text = torch.zeros(1, all_ids.shape[1] - conversation.token_types.shape[1],
                               dtype=conversation.token_types.dtype, device=conversation.token_types.device)
            inputs["mm_token_type_ids"] = torch.cat([conversation.token_types, text], dim=1)
        generation = qa.generation_kwargs(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                          seed=self.seed)
        streamer = qa.text_stream(on_text)
        clock = qa.forward_clock()
        try:
            with Stopwatch(qa.device) as generate_all, torch.inference_mode():
                output = qa.model.generate(**inputs, **compat.cache_kwargs(conversation.cache), **generation,
                                           streamer=streamer, return_dict_in_generate=True)
            generate_end = time.perf_counter()
        finally:
            clock.close()
        generated = output.sequences[0, uncached.shape[1]:]
        answer = qa.tokenizer.decode(generated, skip_special_tokens=True).strip()
        self._conversation = Conversation(torch.cat([all_ids, generated[None]], dim=1), compat.output_cache(output),
                                          inputs.get("mm_token_type_ids"))
        self._messages += [self._user(question), self._assistant(answer)]
        prefill = clock.durations[0] if clock.durations else generate_all.seconds
        timings = Timings(preprocess=preprocess.seconds, prefill=prefill,
                          generate=generate_end - clock.ends[0] if clock.ends else 0.0)
        timings.total = preprocess.seconds + generate_all.seconds
        tokens = {"prompt": int(all_ids.shape[1]), "prefill": int(uncached.shape[1]), **self._cached()}
        return ChatTurn(len(self.turns) + 1, question, answer, tokens, timings, int(generated.numel()))

    def _continuation_ids(self, question: str) -> torch.Tensor:
        """Token ids from the end of the last answer to the start of the next one, as the chat template writes them.

        The template renders the conversation with a mark in place of the last answer: what follows the mark (the end
        of the assistant's turn, the new user turn, the assistant prefix) is what the cache lacks. If the model already
        generated the end-of-turn token, it is not written twice.
        """
        processor = self.qa.processor
        done = self._messages[:-1] + [self._assistant(_ANSWER_MARK)]
        rendered = processor.apply_chat_template(done + [self._user(question)], add_generation_prompt=True,
                                                 tokenize=False)
        if _ANSWER_MARK not in rendered:
            raise InputError("this model's chat template cannot continue a conversation: ask each question on its own")
        tail = rendered.split(_ANSWER_MARK, 1)[1]
        tokenizer = self.qa.tokenizer
        last_generated = int(self._conversation.token_ids[0, -1])
        end_of_turn = tokenizer.decode([last_generated])
        if last_generated in _end_tokens(tokenizer, self.qa.model) and end_of_turn and tail.startswith(end_of_turn):
            tail = tail[len(end_of_turn):]
        ids = tokenizer(tail, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.qa.device)

    def _cached(self) -> dict[str, int]:
        cache = self._conversation.cache if self._conversation else None
        layers = self.qa.num_layers
        return {"cached_first_layer": compat.cached_length(cache, 0),
                "cached_last_layer": compat.cached_length(cache, layers - 1)}

    def _opening_messages(self, question: str) -> list[dict[str, Any]]:
        messages = []
        if self.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        return messages

    @staticmethod
    def _user(text: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": text}]}

    @staticmethod
    def _assistant(text: str) -> dict[str, Any]:
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _end_tokens(tokenizer: Any, model: torch.nn.Module) -> set[int]:
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ends if isinstance(ends, (list, tuple)) else [ends] if ends is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
