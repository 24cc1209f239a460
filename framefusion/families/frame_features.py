"""Helpers the families use to encode a subset of a video's frames and put the features back in place (frame dedup,
framefusion/methods/frame_dedup.py): cut the processor's video inputs down to some frames, and spread an encoder output over
every frame again.

A "unit" is what the vision encoder takes as one frame: a frame, or a Qwen-VL temporal patch of 2 frames. Tensors hold
their units one after the other along one dimension, each unit the same number of rows, sometimes followed by rows
that belong to no frame (LLaVA-OneVision's newline token): `FrameAxis` says where.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FrameAxis:
    """Units lie along `dim`, one after the other, each the same number of rows, then `trailing` rows of no unit.

    dim_in_sequence: the dimension instead when the tensor comes inside a tuple or list (one per video, per layer),
    where a release drops the batch dimension it has otherwise (LLaVA-NeXT-Video's pooler_output: [1, T * P, d] on
    transformers 5.24, a tuple per video of [T, P, d] on 5.18). None: `dim` either way.
    """

    dim: int
    trailing: int = 0
    dim_in_sequence: int | None = None

    def dim_for(self, in_sequence: bool) -> int:
        return self.dim_in_sequence if in_sequence and self.dim_in_sequence is not None else self.dim


def positions_in(encoded: Sequence[int], sources: Sequence[int]) -> list[int]:
    """For each unit, the position among the encoded units of the unit it takes its features from.

    encoded: ascending unit indices that were encoded; sources: for each unit, an index found in `encoded`.
    """
    position = {unit: index for index, unit in enumerate(encoded)}
    missing = sorted({source for source in sources if source not in position})
    if missing:
        raise ValueError(f"units {missing} take features from units that are not encoded (encoded: {list(encoded)})")
    return [position[source] for source in sources]


def gather_units(tensor: torch.Tensor, units: Sequence[int], num_units: int, axis: FrameAxis,
                 in_sequence: bool = False) -> torch.Tensor:
    """The rows of the listed units, in that order (repeats allowed), then the trailing rows unchanged.

    tensor: `num_units` units along axis.dim (plus axis.trailing rows); units: indices into those units.
    in_sequence: the tensor is an element of a tuple or list (see FrameAxis.dim_in_sequence).
    """
    dim = axis.dim_for(in_sequence)
    length = tensor.shape[dim] - axis.trailing
    if num_units < 1 or length < 0 or length % num_units:
        raise ValueError(f"a tensor of shape {tuple(tensor.shape)} does not hold {num_units} units along dimension "
                         f"{dim} (plus {axis.trailing} trailing rows)")
    body = tensor.narrow(dim, 0, length).unflatten(dim, (num_units, length // num_units))
    index = torch.tensor(list(units), dtype=torch.long, device=tensor.device)
    gathered = body.index_select(dim, index).flatten(dim, dim + 1)
    if axis.trailing:
        gathered = torch.cat([gathered, tensor.narrow(dim, length, axis.trailing)], dim=dim)
    return gathered


def select_unit_inputs(video_inputs: Mapping[str, Any], axes: Mapping[str, FrameAxis], units: Sequence[int],
                       num_units: int) -> dict[str, Any]:
    """The processor's video inputs with the tensors named in `axes` cut down to `units`; the others unchanged."""
    selected = dict(video_inputs)
    for key, axis in axes.items():
        if key not in selected:
            raise ValueError(f"the video inputs hold no {key!r} (they hold {sorted(video_inputs)})")
        selected[key] = gather_units(selected[key], units, num_units, axis)
    return selected


def spread_output(features: Any, take: Sequence[int], num_encoded: int, layout: Mapping[str, FrameAxis]) -> Any:
    """An encoder output (a transformers ModelOutput) of `num_encoded` units, laid out again for len(take) units:
    unit i gets the rows of encoded unit take[i]. Every field present must be in `layout`; tuples and lists (per
    video, per layer) are followed down to their tensors, None entries kept.
    """
    unknown = sorted(name for name in features if name not in layout)
    if unknown:
        raise ValueError(f"cannot spread the encoder output's {', '.join(unknown)} over the frames: its layout is "
                         f"unknown ({type(features).__name__})")
    spread = {name: _spread_value(value, take, num_encoded, layout[name]) for name, value in features.items()}
    return type(features)(**spread)


def _spread_value(value: Any, take: Sequence[int], num_encoded: int, axis: FrameAxis, in_sequence: bool = False) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return gather_units(value, take, num_encoded, axis, in_sequence)
    if isinstance(value, (tuple, list)):
        return type(value)(_spread_value(item, take, num_encoded, axis, True) for item in value)
    raise TypeError(f"cannot spread a {type(value).__name__} over the frames")
