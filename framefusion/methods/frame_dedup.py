"""Frame dedup before the vision encoder: frames that repeat the last encoded ones are not encoded again.

A video often holds still stretches (a static shot, a paused screen recording, a fixed camera filming an empty room).
Their frames reach the vision encoder as (nearly) the same model input: encoding them again is wasted time.
`plan_frame_dedup` decides, from the decoded frames alone, which frames to encode and which earlier encoded frame each
of the others reuses; the model family then encodes only those and copies the features into place
(`Family.encode_frames`), so the language model receives a sequence of the same length and layout.

The unit is the family's frame multiple: a Qwen-VL temporal patch of 2 frames is encoded as one, so a group is
reused only when all of its frames repeat the last encoded group's. A unit is compared with the last ENCODED unit,
never with the previous (reused) one, so a slow drift accumulates until it is encoded.

Two tests tell a repeat (`mode`):

- "exact": the pixels. max_difference is the mean absolute difference of the RGB values (0-255) between a unit's
  frames and the last encoded unit's, at most which the unit is reused; 0 (the default) reuses bit-identical frames
  only, which changes nothing the language model sees. Real camera footage (H.264/HEVC, sensor noise) never repeats
  bit for bit, so this test only fires on synthetic or screen-recorded video.
- "noise-aware": a frame repeats when no region of it changed beyond what codec and sensor noise explain. Frames are
  reduced to a grid of cells (RGB block means, at most WORKING_CELLS along the longer side); a region is a square of
  REGION_CELLS x REGION_CELLS cells (about 1/16 of the frame side), and a frame's change is the mean absolute RGB
  difference of its most-changed region (every region, stride one cell), so a small moving object is not averaged
  away by the still rest of the frame. The noise floor is learnt from the video itself: the median region change of
  each pair of consecutive sampled frames (a small moving object does not move a median), its lower quartile over
  the pairs (the quiet part of the video: a cut or a moving stretch does not raise it), at most NOISE_CEILING. A frame is a
  repeat when its change is at most (CHANGE_FLOOR + NOISE_MARGIN x noise floor) / sensitivity. Identical frames
  always repeat; max_difference, when above 0, also counts frames within that mean RGB difference as repeats. A
  skipped frame takes the features of a frame it differs from by noise only: the language model sees nearly, not
  exactly, what it would have seen.

Pure numpy: no model, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from framefusion.errors import InputError

MODES = ("exact", "noise-aware")
# A frame-dedup stage that names no mode compares pixels, as it did before the noise-aware test existed.
DEFAULT_MODE = "exact"
DEFAULT_MAX_DIFFERENCE = 0.0
DEFAULT_SENSITIVITY = 1.0
SENSITIVITY_RANGE = (0.1, 10.0)

# The noise-aware test. Every figure below is on the cell grid, a mean absolute RGB difference (0-255) as
# max_difference is.
# Cells along the frame's longer side: coarse enough that sensor noise averages out, fine enough that a region of
# REGION_CELLS x REGION_CELLS cells (~1/16 of the side, 0.4-0.7% of the area) matches a small object.
WORKING_CELLS = 64
REGION_CELLS = 4
# Pixels read per cell side, at most: a large frame is read on a sparse grid, so the test costs milliseconds.
SAMPLES_PER_CELL = 8
# The change a region may show on noise-free footage: a lossy codec renders a still scene a little differently from
# frame to frame, most at sharp edges (H.264 at crf 23-35 and HEVC show up to ~2.8 on small frames), while a moving
# object changes its regions by tens of levels.
CHANGE_FLOOR = 4.0
# How far above the noise floor a region change must go to count: the largest of thousands of noisy regions sits at
# about twice their median.
NOISE_MARGIN = 3.0
# The noise floor is never taken above this: a video without a quiet moment (a pan from start to end, a crowd)
# would otherwise teach the test that its motion is noise. Grainy night footage (sensor noise sigma 8) at 160x120
# measures ~2.2 here, its largest region change ~3.8.
NOISE_CEILING = 2.0
# Which quantile of the frame pairs' median region change is the noise floor: the quietest quarter of the video.
NOISE_QUANTILE = 0.25


@dataclass(frozen=True)
class FramePlan:
    """Which units (frames, or groups of `unit_frames` frames) to encode and which each of the others reuses.

    sources: for each unit, the index of the encoded unit whose features it takes (its own index when encoded).
    num_frames: sampled frames; the last unit may hold fewer than unit_frames of them (the processor repeats the last
    frame to fill it).
    mode: the test that decided ("exact" or "noise-aware"). The noise-aware test also leaves its figures, for tuning:
    change_scores (per unit, its largest region change against the last encoded unit at the time; 0 for the first),
    noise_floor and threshold (a unit whose change is at most the threshold is a repeat).
    """

    sources: tuple[int, ...]
    unit_frames: int
    num_frames: int
    mode: str = DEFAULT_MODE
    change_scores: tuple[float, ...] = ()
    noise_floor: float | None = None
    threshold: float | None = None

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

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "frames": self.num_frames, "frames_encoded": self.frames_encoded,
                "unit_frames": self.unit_frames, "sources": list(self.sources), "encoded": self.encoded,
                "noise_floor": _rounded(self.noise_floor), "threshold": _rounded(self.threshold),
                "change_scores": [_rounded(score) for score in self.change_scores]}


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


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"must be one of {', '.join(MODES)}", setting="mode", value=mode)
    return mode


def check_sensitivity(sensitivity: float) -> float:
    """The setting as a float, or InputError outside SENSITIVITY_RANGE."""
    low, high = SENSITIVITY_RANGE
    try:
        value = float(sensitivity)
    except (TypeError, ValueError):
        value = math.nan
    if not low <= value <= high:
        raise InputError(f"must be a number from {low:g} (fewer frames encoded) to {high:g} (more); "
                         f"{DEFAULT_SENSITIVITY:g} is the default", setting="sensitivity", value=sensitivity)
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


# --- the noise-aware test ------------------------------------------------------------------------------------------
def colour_cells(frames: np.ndarray) -> np.ndarray:
    """Each frame's RGB averaged over a grid of cells, at most WORKING_CELLS along the longer side.

    frames: (T, H, W, 3) RGB, values 0-255. Returns float32 (T, rows, cols, 3). Pixels past the last whole cell are
    left out (less than a cell); frames larger than the grid are read every `step` pixels, at most SAMPLES_PER_CELL
    per cell side."""
    frames = np.asarray(frames)
    count, height, width = frames.shape[:3]
    cell = max(1, -(-max(height, width) // WORKING_CELLS))
    step = max(1, cell // SAMPLES_PER_CELL)
    rows, cols = max(1, height // cell), max(1, width // cell)
    cells = np.empty((count, rows, cols, 3), dtype=np.float32)
    for index, frame in enumerate(frames):
        sampled = frame[::step, ::step, :3]
        cell_height, cell_width = sampled.shape[0] // rows, sampled.shape[1] // cols
        blocks = sampled[: rows * cell_height, : cols * cell_width].reshape(rows, cell_height, cols, cell_width, 3)
        cells[index] = blocks.sum(axis=(1, 3), dtype=np.int64) / (cell_height * cell_width)
    return cells


def region_changes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The mean absolute RGB difference of two cell grids (rows, cols, 3) over every square region of REGION_CELLS
    cells (fewer where the grid is smaller), stride one cell. Returns float64 (rows - r + 1, cols - r + 1)."""
    difference = np.abs(first.astype(np.float64) - second).mean(axis=-1)
    size_rows, size_cols = min(REGION_CELLS, difference.shape[0]), min(REGION_CELLS, difference.shape[1])
    total = np.pad(difference.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    sums = (total[size_rows:, size_cols:] - total[:-size_rows, size_cols:] - total[size_rows:, :-size_cols]
            + total[:-size_rows, :-size_cols])
    return sums / (size_rows * size_cols)


def largest_change(first: np.ndarray, second: np.ndarray) -> float:
    """The change of the most-changed region between two cell grids (mean absolute RGB difference)."""
    return float(region_changes(first, second).max())


def noise_floor(cells: np.ndarray) -> float:
    """The video's noise, from its cell grids (T, rows, cols, 3): the NOISE_QUANTILE of the median region change of each
    pair of consecutive frames (bit-identical pairs say nothing about noise and are left out), at most NOISE_CEILING.
    0 for fewer than two frames that differ."""
    medians = [float(np.median(region_changes(cells[index], cells[index + 1])))
               for index in range(len(cells) - 1) if not np.array_equal(cells[index], cells[index + 1])]
    if not medians:
        return 0.0
    return min(float(np.quantile(medians, NOISE_QUANTILE)), NOISE_CEILING)


def change_threshold(noise: float, sensitivity: float = DEFAULT_SENSITIVITY) -> float:
    """The largest region change a repeat may show, given the video's noise floor."""
    return (CHANGE_FLOOR + NOISE_MARGIN * noise) / sensitivity


# --- the plan --------------------------------------------------------------------------------------------------------
def plan_frame_dedup(frames: np.ndarray, max_difference: float = DEFAULT_MAX_DIFFERENCE, unit_frames: int = 1, *,
                     mode: str = DEFAULT_MODE, sensitivity: float = DEFAULT_SENSITIVITY) -> FramePlan:
    """Decide which units of `frames` (uint8 (T, H, W, 3), the frames the processor receives) to encode.

    exact: a unit is reused when its mean absolute difference to the last encoded unit is at most `max_difference`.
    noise-aware: also when no region of any of its frames changed beyond the threshold the video's noise sets
    (module docstring). The first unit is always encoded.
    """
    max_difference = check_max_difference(max_difference)
    units = frame_units(frames, unit_frames)
    if check_mode(mode) == "exact":
        sources = _walk(len(units), lambda unit, reference: _repeats(units[unit], units[reference], max_difference))
        return FramePlan(sources, unit_frames, len(frames))
    sensitivity = check_sensitivity(sensitivity)
    cells = colour_cells(frames)
    noise = noise_floor(cells)
    threshold = change_threshold(noise, sensitivity)
    cell_units = frame_units(cells, unit_frames)
    scores = [0.0]

    def repeats(unit: int, reference: int) -> bool:
        change = max(largest_change(frame, reference_frame)
                     for frame, reference_frame in zip(cell_units[unit], cell_units[reference]))
        scores.append(change)
        return change <= threshold or (max_difference > 0 and _repeats(units[unit], units[reference],
                                                                       max_difference))

    sources = _walk(len(units), repeats)
    return FramePlan(sources, unit_frames, len(frames), mode="noise-aware", change_scores=tuple(scores),
                     noise_floor=noise, threshold=threshold)


def _walk(count: int, repeats: Callable[[int, int], bool]) -> tuple[int, ...]:
    """For each of `count` units, the encoded unit it takes features from: the last encoded one when
    repeats(unit, last_encoded), else itself. The first is always encoded."""
    sources: list[int] = []
    last_encoded = -1
    for unit in range(count):
        if last_encoded >= 0 and repeats(unit, last_encoded):
            sources.append(last_encoded)
        else:
            sources.append(unit)
            last_encoded = unit
    return tuple(sources)


def _repeats(unit: np.ndarray, reference: np.ndarray, max_difference: float) -> bool:
    if unit.shape != reference.shape:
        return False
    if max_difference == 0.0:
        return bool(np.array_equal(unit, reference))
    return mean_absolute_difference(unit, reference) <= max_difference


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
