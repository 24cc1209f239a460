"""Frame dedup before the vision encoder: frames whose pixels repeat the last encoded ones are not encoded again.

A video often holds still stretches (a static shot, a paused screen recording). Their frames reach the vision encoder
as the same model input, and the encoder turns the same input into the same features: encoding them again is wasted
time. `plan_frame_dedup` decides, from the decoded frames alone, which frames to encode and which earlier encoded
frame each of the others reuses; the model family then encodes only those and copies the features into place
(`Family.encode_frames`), so the language model receives the sequence it would have received.

The unit is the family's frame multiple: a Qwen-VL temporal patch of 2 frames is encoded as one, so a group is
reused only when all of its frames repeat the last encoded group's. A unit is compared with the last ENCODED unit,
never with the previous (reused) one, so near-duplicates cannot drift away step by step.

max_difference: the mean absolute difference of the RGB values (0-255) between a unit's frames and the last encoded
unit's, at most which the unit is reused. 0 (the default) reuses bit-identical frames only, which changes nothing the
language model sees; above 0 near-duplicates are reused too, which changes the features a little.

Pure numpy: no model, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from framefusion.errors import InputError

DEFAULT_MAX_DIFFERENCE = 0.0


@dataclass(frozen=True)
class FramePlan:
    """Which units (frames, or groups of `unit_frames` frames) to encode and which each of the others reuses.

    sources: for each unit, the index of the encoded unit whose features it takes (its own index when encoded).
    num_frames: sampled frames; the last unit may hold fewer than unit_frames of them (the processor repeats the last
    frame to fill it).
    """

    sources: tuple[int, ...]
    unit_frames: int
    num_frames: int

    @property
    def encoded(self) -> list[int]:
        """Indices of the units that are encoded, ascending."""
        return sorted(set(self.sources))

    @property
    def encodes_every_unit(self) -> bool:
        return len(set(self.sources)) == len(self.sources)

    @property
    def frames_encoded(self) -> int:
        """Sampled frames the vision encoder sees (a whole unit counts unit_frames), comparable with num_frames."""
        return sum(min(self.unit_frames, self.num_frames - unit * self.unit_frames) for unit in self.encoded)


def check_max_difference(max_difference: float) -> float:
    """The setting as a float, or InputError when it is not a number from 0 to 255."""
    try:
        value = float(max_difference)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 255.0:
        raise InputError("must be a number from 0 (identical frames only) to 255 (mean absolute RGB difference)",
                         setting="max_difference", value=max_difference)
    return value


def mean_absolute_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Mean |first - second| over every value of two uint8 arrays of the same shape (RGB on 0-255)."""
    total = np.abs(first.astype(np.int16) - second.astype(np.int16)).sum(dtype=np.int64)
    return float(total) / first.size if first.size else 0.0


def frame_units(frames: np.ndarray, unit_frames: int) -> list[np.ndarray]:
    """The frames cut into units of `unit_frames` consecutive frames, the last filled by repeating the last frame
    (as the processors that pair frames do). frames: uint8 (T, H, W, 3); each unit (unit_frames, H, W, 3)."""
    if unit_frames < 1:
        raise ValueError(f"unit_frames must be at least 1, got {unit_frames}")
    units = []
    for start in range(0, len(frames), unit_frames):
        unit = frames[start : start + unit_frames]
        if len(unit) < unit_frames:
            unit = np.concatenate([unit, np.repeat(unit[-1:], unit_frames - len(unit), axis=0)])
        units.append(unit)
    return units


def plan_frame_dedup(frames: np.ndarray, max_difference: float = DEFAULT_MAX_DIFFERENCE,
                     unit_frames: int = 1) -> FramePlan:
    """Decide which units of `frames` (uint8 (T, H, W, 3), the frames the processor receives) to encode.

    A unit is reused when its mean absolute difference to the last encoded unit is at most `max_difference`; the
    first unit is always encoded.
    """
    max_difference = check_max_difference(max_difference)
    sources: list[int] = []
    last_encoded = -1
    reference: np.ndarray | None = None
    for index, unit in enumerate(frame_units(frames, unit_frames)):
        if reference is not None and _repeats(unit, reference, max_difference):
            sources.append(last_encoded)
            continue
        sources.append(index)
        last_encoded, reference = index, unit
    return FramePlan(tuple(sources), unit_frames, len(frames))


def _repeats(unit: np.ndarray, reference: np.ndarray, max_difference: float) -> bool:
    if unit.shape != reference.shape:
        return False
    if max_difference == 0.0:
        return bool(np.array_equal(unit, reference))
    return mean_absolute_difference(unit, reference) <= max_difference

