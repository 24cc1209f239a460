"""Frame dedup for the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): how a subset of a video's temporal patches
is encoded and its features put back (see Family.encode_frames).

The unit is a temporal patch (2 frames). pixel_values_videos holds t * h * w patch rows, each temporal patch's h * w
rows together; video_grid_thw is [[t, h, w]]. The vision tower attends within one temporal patch only, so a patch's
features do not depend on the others. Every output holds its temporal patches' rows together along dimension 0:
pooler_output (a tuple per video of [t * P, d]), Qwen3-VL's deepstack_features (a list per layer of such tuples),
last_hidden_state [t * h * w, d_vit].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framefusion.families.frame_features import FrameAxis, select_unit_inputs, spread_output

_ROWS_TOGETHER = FrameAxis(dim=0)
_OUTPUT_LAYOUT = {name: _ROWS_TOGETHER
                  for name in ("pooler_output", "last_hidden_state", "hidden_states", "deepstack_features")}


def temporal_patch_inputs(video_inputs: dict[str, Any], units: Sequence[int], num_units: int) -> dict[str, Any]:
    """The video inputs of one video for the listed temporal patches only, with the grid they now make."""
    grid = video_inputs.get("video_grid_thw")
    if grid is None or tuple(grid.shape) != (1, 3):
        raise ValueError(f"frame dedup encodes one video at a time; got video_grid_thw {grid}")
    patches, height, width = (int(value) for value in grid[0])
    if patches != num_units:
        raise ValueError(f"the video has {patches} temporal patches, not {num_units}")
    selected = select_unit_inputs(video_inputs, {"pixel_values_videos": _ROWS_TOGETHER}, units, num_units)
    selected["video_grid_thw"] = grid.new_tensor([[len(units), height, width]])
    return selected


def spread_temporal_patch_features(features: Any, take: Sequence[int], num_encoded: int) -> Any:
    """The encoder output of num_encoded temporal patches laid out for len(take) of them."""
    return spread_output(features, take, num_encoded, _OUTPUT_LAYOUT)
