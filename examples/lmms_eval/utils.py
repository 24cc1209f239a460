"""doc_to_* functions of the framefusion_smoke task (framefusion_smoke.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

VIDEOS = Path(__file__).resolve().parent / "videos"
_LETTER = re.compile(r"\b([A-D])\b")


def doc_to_visual(doc: dict) -> list[str]:
    return [str(VIDEOS / doc["video"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(doc["options"])
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def answer_letter(response: str) -> str | None:
    """The option letter a response gives: its first standalone A-D ("B", "B.", "(B) ..."), else None."""
    found = _LETTER.search(response.strip())
    return found.group(1) if found else None


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"accuracy": float(answer_letter(results[0]) == doc["answer"])}
