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

Stages run in the pipeline's order: frame-dedup; earlytom inside the vision encoder (it also selects the tokens
before the LLM, so it takes the place of the next ones and of frame-dedup); one stage between the vision encoder and
the LLM (evs, vidcom2, fastvid or holitom); one inside the LLM (framefusion or inner-merge). The flat form of older
profiles (`method:` and its settings at the top) is one `framefusion` stage, or none for `method: none`.
"""

from __future__ import annotations

from typing import Any, Callable

from framefusion.methods import frame_dedup

# Where each kind acts, in the order the pipeline meets those places; a profile has at most one stage in each.
PLACES = {"before the vision encoder": ("frame-dedup",),
          "inside the vision encoder": ("earlytom",),
          "before the LLM": ("evs", "vidcom2", "fastvid", "holitom"),
          "inside the LLM": ("framefusion", "inner-merge")}
STAGE_KINDS = tuple(kind for kinds in PLACES.values() for kind in kinds)
BEFORE_LLM_KINDS = PLACES["before the LLM"]
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "frame-dedup": {"mode": frame_dedup.DEFAULT_MODE, "max_difference": frame_dedup.DEFAULT_MAX_DIFFERENCE,
                    "sensitivity": frame_dedup.DEFAULT_SENSITIVITY},
    # The same defaults as framefusion.EVS, VidCom2, FastVID, HoliTom and InnerMerge (tests/test_profiles.py).
    "evs": {"pruning_rate": 0.75, "per_video": False},
    "vidcom2": {"pruning_rate": 0.75},
    "fastvid": {"retain_ratio": None, "variant": None},  # and pooling_head, only where it is given
    "holitom": {"retain_ratio": 0.10, "tau": 0.65},
    "earlytom": {"retain_ratio": 0.2, "tau": 0.5, "max_window": 6, "ema": 0.9, "layers": None},
    "inner-merge": {"layer": None, "ratio": 0.5},
}
# framefusion.runtime.before_llm.FASTVID_VARIANTS, kept here so that reading profiles needs no torch (tested equal).
FASTVID_VARIANTS = ("parallel", "segmentwise")


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


def _share(key: str, meaning: str, *, optional: bool = False) -> Callable:
    def check(value: object, number: Callable[[object], float]) -> float | None:
        if value is None and optional:
            return None
        share = number(value)
        if not 0 <= share <= 1:
            raise StageError(f"must be in [0, 1] ({meaning}), got {value!r}", key)
        return share
    return check


def _per_video(value: object, number: Callable[[object], float]) -> bool:
    if not isinstance(value, bool):
        raise StageError(f"must be true (budget each video on its own) or false (the prompt's videos together), "
                         f"got {value!r}", "per_video")
    return value


def _variant(value: object, number: Callable[[object], float]) -> str | None:
    if value is not None and value not in FASTVID_VARIANTS:
        raise StageError(f"must be one of {', '.join(FASTVID_VARIANTS)} or null (the one measured on the model's "
                         f"family), got {value!r}", "variant")
    return value


def _pooling_head(value: object, number: Callable[[object], float]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StageError(f"must name a SigLIP checkpoint with its attention-pooling head, a hub id or a folder "
                         f"(google/siglip-so400m-patch14-384 for LLaVA-OneVision), got {value!r}", "pooling_head")
    return value


def _cosine(value: object, number: Callable[[object], float]) -> float:
    cosine = number(value)
    if not -1 <= cosine <= 1:
        raise StageError(f"must be a cosine similarity in [-1, 1], got {value!r}", "tau")
    return cosine


def _layer(value: object, number: Callable[[object], float]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StageError(f"must be a decoder layer number >= 1, or null (layer 18 of 28 scaled to the model's depth), "
                         f"got {value!r}", "layer")
    return value


def _max_window(value: object, number: Callable[[object], float]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise StageError(f"must be a whole number of frames >= 2 (segments stay shorter), got {value!r}", "max_window")
    return value


def _tower_layers(value: object, number: Callable[[object], float]) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or any(isinstance(layer, bool) or not isinstance(layer, int) or layer < 0 for layer in value)):
        raise StageError(f"must be a list of vision tower layer indices >= 0, or null (8, 21, 23 of 26 scaled to the "
                         f"tower's depth), got {value!r}", "layers")
    return value


_STAGE_VALIDATORS = {
    "frame-dedup": {"mode": _mode, "max_difference": _max_difference, "sensitivity": _sensitivity},
    "evs": {"pruning_rate": _pruning_rate, "per_video": _per_video},
    "vidcom2": {"pruning_rate": _pruning_rate},
    "fastvid": {"retain_ratio": _share("retain_ratio", "the share of each frame's tokens kept", optional=True),
                "variant": _variant, "pooling_head": _pooling_head},
    "holitom": {"retain_ratio": _share("retain_ratio", "the share of the video tokens kept"), "tau": _cosine},
    "earlytom": {"retain_ratio": _share("retain_ratio", "the share of the video tokens kept"), "tau": _cosine,
                 "max_window": _max_window, "ema": _share("ema", "the smoothing of the segment similarity"),
                 "layers": _tower_layers},
    "inner-merge": {"layer": _layer, "ratio": _share("ratio", "the share of the video tokens folded away")},
}


def parse_stages(stages: object, *, number: Callable[[object], float],
                 framefusion_settings: Callable[[dict], dict[str, Any]]) -> dict[str, Any]:
    """Validate a `stages:` list into the flat profile values: `method` and its settings (from the framefusion stage;
    method "none" without one), frame-dedup's `max_difference`, `dedup_mode` and `dedup_sensitivity` (None without the
    stage; the sensitivity None in exact mode, which has none), `before_llm` and `inner_merge` (each the stage as a
    mapping with its kind and every setting, None without one).

    number: validates a finite number; framefusion_settings: validates a framefusion stage's keys (as the flat form).
    Raises StageError with the stage's index in the message."""
    if not isinstance(stages, list):
        raise StageError("must be a list of stages, each a mapping with a 'kind'")
    values: dict[str, Any] = {"max_difference": None, "dedup_mode": None, "dedup_sensitivity": None,
                              "before_llm": None, "inner_merge": None}
    places = list(PLACES)
    last_place, last_kind = -1, None
    for index, stage in enumerate(stages):
        where = f"stage {index + 1}"
        if not isinstance(stage, dict) or "kind" not in stage:
            raise StageError(f"{where} must be a mapping with a 'kind' ({', '.join(STAGE_KINDS)})")
        kind = stage["kind"]
        if kind not in STAGE_KINDS:
            raise StageError(f"{where}: unknown kind {kind!r}; use one of {', '.join(STAGE_KINDS)}", "kind")
        place = next(index for index, kinds in enumerate(PLACES.values()) if kind in kinds)
        if place < last_place:
            raise StageError(f"{where} ({kind}) cannot come after {last_kind}: stages run in the order "
                             f"{' -> '.join(places)}", "kind")
        if place == last_place:
            raise StageError(f"{where} ({kind}): a profile has one stage {places[place]} and {last_kind} is "
                             f"already there ({', '.join(PLACES[places[place]])}: pick one)", "kind")
        if kind == "earlytom" and last_kind == "frame-dedup":
            raise StageError(f"{where} (earlytom) merges repeated frames itself: drop the frame-dedup stage", "kind")
        if last_kind == "earlytom" and kind in BEFORE_LLM_KINDS:
            raise StageError(f"{where} ({kind}): earlytom selects the tokens before the LLM itself; drop one of them",
                             "kind")
        last_place, last_kind = place, kind
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
        elif kind == "inner-merge":
            values["inner_merge"] = {"kind": kind, **checked}
        else:
            values["before_llm"] = {"kind": kind, **checked}
    values.setdefault("method", "none")
    return values
