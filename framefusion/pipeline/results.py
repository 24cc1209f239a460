"""What answering a question produces: timings, token counts per stage, the answer, and the prepared video.

Plain data: the pipeline (framefusion/pipeline/video_qa.py) fills them, the CLI renders them, `to_dict()` gives the JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from framefusion.video import VideoClip

if TYPE_CHECKING:
    import torch


@dataclass
class Timings:
    """Seconds, each measured around the real work, the device synchronised."""

    decode_video: float = 0.0
    preprocess: float = 0.0
    vision: float = 0.0
    prefill: float = 0.0
    generate: float = 0.0
    total: float = 0.0
    # Loading the model, once per command (on its first answer): reported so that a one-shot user sees where the
    # wall time goes, but not part of `total`, which is the work per answer.
    load: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 6) for key, value in asdict(self).items()}


# The timing fields in order, for every table, record and median that lists them.
TIMING_FIELDS: tuple[str, ...] = tuple(timing.name for timing in fields(Timings))


@dataclass
class TokenStage:
    """One token reduction step: kind "evs" (before the LLM: layer None), "merge" or "prune" (inside it, at `layer`),
    where it acted ("before_llm", "before_attention", "after_attention"), and the tokens before and after it."""

    kind: str
    where: str
    layer: int | None
    before: int
    after: int

    @property
    def name(self) -> str:
        """The step as people read it: "merge (before attention)", "prune", "evs (before the LLM)"."""
        return self.kind + {"before_attention": " (before attention)", "before_llm": " (before the LLM)"}.get(
            self.where, "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "where": self.where, "layer": self.layer,
                "before": self.before, "after": self.after}


@dataclass
class TokenReport:
    """Token counts of one prefill, from the frames to what the last layer kept."""

    frames: int
    visual: int
    prompt: int
    final: int
    cost: float
    requested_cost: float
    per_layer: list[int]
    stages: list[TokenStage]
    kept_positions: list[int] = field(default_factory=list, repr=False)
    framefusion_seconds: float = 0.0
    # Sampled frames the vision encoder saw (fewer than `frames` when frame dedup reused features); None: all.
    frames_encoded: int | None = None
    # Why the others were not encoded, the frame-dedup test that skipped them: "exact" (the same pixels as the last
    # encoded frame) or "noise-aware" (no region changed beyond the video's noise); None: every frame was encoded.
    frame_dedup: str | None = None
    # Frames left after EarlyTom merged frames inside the vision encoder, and the frames its layers ran on on average
    # (None: no merging there).
    frames_merged: int | None = None
    frames_per_tower_layer: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frames_encoded": self.frames if self.frames_encoded is None else self.frames_encoded,
            "frame_dedup": self.frame_dedup,
            "frames_merged": self.frames_merged,
            "frames_per_tower_layer": self.frames_per_tower_layer,
            "visual": self.visual,
            "prompt": self.prompt,
            "final": self.final,
            "cost": round(self.cost, 6),
            "requested_cost": self.requested_cost,
            "per_layer": list(self.per_layer),
            "stages": [stage.to_dict() for stage in self.stages],
        }


@dataclass
class AskResult:
    answer: str
    question: str
    model: str
    profile: str
    video: str
    tokens: TokenReport
    timings: Timings
    new_tokens: int = 0
    cache: str = "off"  # the vision-feature cache: "hit", "miss" or "off" (see framefusion.pipeline.feature_cache)
    # The profile's method and settings as applied (a family-default S_th resolved to its value).
    settings: dict[str, Any] = field(default_factory=dict)
    conversation: Conversation | None = field(default=None, repr=False)  # with answer(keep_cache=True) only

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "question": self.question,
            "model": self.model,
            "profile": self.profile,
            "settings": dict(self.settings),
            "video": self.video,
            "tokens": self.tokens.to_dict(),
            "timings": self.timings.to_dict(),
            "new_tokens": self.new_tokens,
            "cache": self.cache,
        }


@dataclass
class Conversation:
    """What a follow-up question continues from: every token id so far ([1, n]; the last generated one is not in the
    cache yet), the KV cache (reduced as the profile left it), and the prompt's multimodal token types, if any."""

    token_ids: torch.Tensor
    cache: Any
    token_types: torch.Tensor | None = None


@dataclass
class PreparedVideo:
    """A decoded clip and its vision features (None: generate() encodes them each time), shared by its questions."""

    clip: VideoClip
    video_inputs: dict[str, torch.Tensor]
    vision_modality: str
    vision_features: Any
    decode_seconds: float
    vision_seconds: float
    preprocess_seconds: float
    # Whether the features came from the feature cache: "hit", "miss" (encoded, then stored) or "off".
    cache: str = "off"
    # Sampled frames the vision encoder saw: all of them, or fewer when frame dedup reused features (None: all).
    frames_encoded: int | None = None
    # The frame-dedup test that skipped the frames not encoded ("exact", "noise-aware"); None: every frame encoded.
    frame_dedup: str | None = None
    # EarlyTom's Stage I result (framefusion.runtime.vision_merge.VisionPlan) when the profile merged frames in the
    # vision tower; its token selection before the LLM needs it. None otherwise.
    vision_plan: Any = None
