"""The `stages:` form of a profile: an ordered list of reduction stages, each where it acts in the pipeline.

    stages:
      - kind: frame-dedup        # before the vision encoder: repeated frames are encoded once
        mode: noise-aware        # exact (default: the pixels) | noise-aware (no region changed beyond the noise)
        sensitivity: 1.0         # noise-aware only: above 1 more frames count as changed, below 1 fewer
        max_difference: 0        # mean absolute RGB difference (0-255) still counted as a repeat; 0 = identical only
      - kind: evs                # between the vision encoder and the LLM: Efficient Video Sampling
        pruning_rate: 0.75       # fraction of the video tokens dropped, in [0, 1)
      - kind: framefusion        # inside the LLM
        method: framefusion      # framefusion | merge-only | prune-only, with that method's settings
        cost: 0.3

Stages run in the pipeline's order (frame-dedup, evs, framefusion), each at most once. The flat form of older
profiles (`method:` and its settings at the top) is one `framefusion` stage, or none for `method: none`.
"""

from __future__ import annotations

from typing import Any, Callable

from framefusion.methods import frame_dedup

# Kinds in the only order they can run: the pipeline meets them in this order.
STAGE_KINDS = ("frame-dedup", "evs", "framefusion")
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "frame-dedup": {"mode": frame_dedup.DEFAULT_MODE, "max_difference": frame_dedup.DEFAULT_MAX_DIFFERENCE,
                    "sensitivity": frame_dedup.DEFAULT_SENSITIVITY},
    "evs": {"pruning_rate": 0.75},
}


class StageError(Exception):
    """A stage is wrong; `key` names the stage setting at fault (None: the stage itself)."""

    def __init__(self, problem: str, key: str | None = None):
        super().__init__(problem)
        self.key = key


def _max_difference(value: object, number: Callable[[object], float]) -> float:
    difference = number(value)
    if not 0 <= difference <= 255:
        raise StageError(f"must be a mean RGB difference in [0, 255], got {value!r}", "max_difference")
    return difference


def _mode(value: object, number: Callable[[object], float]) -> str:
    if value not in frame_dedup.MODES:
        raise StageError(f"must be one of {', '.join(frame_dedup.MODES)}, got {value!r}", "mode")
    return str(value)


def _sensitivity(value: object, number: Callable[[object], float]) -> float:
    sensitivity = number(value)
    low, high = frame_dedup.SENSITIVITY_RANGE
    if not low <= sensitivity <= high:
        raise StageError(f"must be in [{low:g}, {high:g}] (above 1 more frames count as changed, below 1 fewer), "
                         f"got {value!r}", "sensitivity")
    return sensitivity


def _pruning_rate(value: object, number: Callable[[object], float]) -> float:
    rate = number(value)
    if not 0 <= rate < 1:
        raise StageError(f"must satisfy 0 <= pruning_rate < 1 (the fraction of video tokens dropped), got {value!r}",
                         "pruning_rate")
    return rate


_STAGE_VALIDATORS = {"frame-dedup": {"mode": _mode, "max_difference": _max_difference, "sensitivity": _sensitivity},
                     "evs": {"pruning_rate": _pruning_rate}}


def parse_stages(stages: object, *, number: Callable[[object], float],
                 framefusion_settings: Callable[[dict], dict[str, Any]]) -> dict[str, Any]:
    """Validate a `stages:` list into the flat profile values: `method` and its settings (from the framefusion stage;
    method "none" without one), frame-dedup's `max_difference`, `dedup_mode` and `dedup_sensitivity` (None without the
    stage; the sensitivity None in exact mode, which has none) and `evs_pruning_rate`.

    number: validates a finite number; framefusion_settings: validates a framefusion stage's keys (as the flat form).
    Raises StageError with the stage's index in the message."""
    if not isinstance(stages, list):
        raise StageError("must be a list of stages, each a mapping with a 'kind'")
    values: dict[str, Any] = {"max_difference": None, "dedup_mode": None, "dedup_sensitivity": None,
                              "evs_pruning_rate": None}
    last_position = -1
    for index, stage in enumerate(stages):
        where = f"stage {index + 1}"
        if not isinstance(stage, dict) or "kind" not in stage:
            raise StageError(f"{where} must be a mapping with a 'kind' ({', '.join(STAGE_KINDS)})")
        kind = stage["kind"]
        if kind not in STAGE_KINDS:
            raise StageError(f"{where}: unknown kind {kind!r}; use one of {', '.join(STAGE_KINDS)}", "kind")
        position = STAGE_KINDS.index(kind)
        if position <= last_position:
            raise StageError(
                f"{where} ({kind}) cannot come after {STAGE_KINDS[last_position]}: stages run in the order "
                f"{' -> '.join(STAGE_KINDS)}, each at most once", "kind")
        last_position = position
        settings = {key: value for key, value in stage.items() if key != "kind"}
        try:
            if kind == "framefusion":
                if "description" in settings:
                    raise StageError("a description belongs to the profile, not to a stage", "description")
                values.update(framefusion_settings(settings))
                continue
            validators = _STAGE_VALIDATORS[kind]
            for key in settings:
                if key not in validators:
                    raise StageError(f"unknown setting for {kind}; known: {', '.join(validators)}", key)
            chosen = {**STAGE_DEFAULTS[kind], **settings}
            checked = {key: validators[key](value, number) for key, value in chosen.items()}
            if kind == "frame-dedup" and checked["mode"] == "exact" and "sensitivity" in settings:
                raise StageError("applies to mode noise-aware only; add 'mode: noise-aware' or remove it",
                                 "sensitivity")
        except StageError as error:
            raise StageError(f"{where} ({kind}): {error}", error.key) from None
        if kind == "frame-dedup":
            values["max_difference"] = checked["max_difference"]
            values["dedup_mode"] = checked["mode"]
            values["dedup_sensitivity"] = checked["sensitivity"] if checked["mode"] != "exact" else None
        else:
            values["evs_pruning_rate"] = checked["pruning_rate"]
    values.setdefault("method", "none")
    return values
