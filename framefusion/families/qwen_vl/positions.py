"""Qwen2-VL / Qwen2.5-VL multimodal rotary positions as the released checkpoints were trained with.

Both families give every token three rotary position ids (temporal, height, width). Text tokens carry the
same id three times and count up by one. A vision chunk (one image or one video) starts at the current
position; its ids spread over its grid of merged patches. Qwen's reference code (and transformers 4.x)
starts the text after a chunk at the largest of the chunk's ids + 1. transformers 5.x (seen on 5.23)
advances by `max(grid_h, grid_w) // spatial_merge_size` instead and so ignores the temporal extent: a video
with more temporal groups than rows or columns of merged patches overlaps the text that follows it, and
the cached `rope_deltas` used when decoding still start after the maximum. See docs/positions.md.

`restore_reference_positions(model)` replaces `get_rope_index` on the model instance with
`reference_rope_index` below; `remove_reference_positions(model)` puts the original back. Both can be
called any number of times.
"""

from __future__ import annotations

import inspect
import itertools
import types
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch

from framefusion.runtime import transformers_compat as compat
from framefusion.errors import InputError

TEXT_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN = 0, 1, 2

# Marks our replacement so that applying twice is the same as applying once.
_PATCH_MARKER = "_framefusion_reference_positions"
# Stands for "the instance had no get_rope_index of its own" (the usual case: it came from the class).
_NO_INSTANCE_ATTRIBUTE = object()


def vision_chunk_positions(
    start: int,
    grid_thw: Sequence[int] | torch.Tensor,
    spatial_merge_size: int,
    time_interval: float | torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position ids of one image or video chunk, in the order its tokens appear (t, then h, then w).

    grid_thw: (t, h, w) patch grid as the processor returns it; h and w are merged by spatial_merge_size.
    time_interval: temporal id step per temporal group (truncated to an integer after scaling, as
    transformers does). Returns LongTensor [3, t * (h // merge) * (w // merge)], offset by `start`.
    """
    grid_t = int(grid_thw[0])
    grid_h = int(grid_thw[1]) // spatial_merge_size
    grid_w = int(grid_thw[2]) // spatial_merge_size
    # Same arithmetic as transformers (arange * interval, then .long()) so that vision ids match it exactly.
    temporal = (torch.arange(grid_t, device=device) * time_interval).long() + start
    height = torch.arange(grid_h, device=device) + start
    width = torch.arange(grid_w, device=device) + start
    t_ids, h_ids, w_ids = torch.meshgrid(temporal, height, width, indexing="ij")
    return torch.stack([t_ids, h_ids, w_ids]).reshape(3, -1)


def _sample_positions(
    token_types: list[int],
    grids: dict[int, Iterator],
    time_intervals: dict[int, Iterator],
    spatial_merge_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Reference positions of one sample's non-padding tokens. token_types: [n] of 0/1/2. Returns [3, n].

    Grids and time intervals are shared iterators: each chunk consumes the next one of its kind, across
    the whole batch, as the processor orders them.
    """
    pieces = []
    next_position = 0
    for token_type, run in itertools.groupby(token_types):
        run_length = sum(1 for _ in run)
        if token_type == TEXT_TOKEN:
            pieces.append(torch.arange(run_length, device=device).expand(3, -1) + next_position)
            next_position += run_length
            continue
        # A run of vision tokens can hold several chunks back to back; split it by the grids' sizes.
        while run_length > 0:
            kind = "image" if token_type == IMAGE_TOKEN else "video"
            grid_thw = next(grids[token_type], None)
            if grid_thw is None:
                raise InputError(
                    f"More {kind} tokens than {kind}_grid_thw describes; pass the input_ids, grids and "
                    "mm_token_type_ids exactly as the processor returned them."
                )
            time_interval = next(time_intervals[token_type], None)
            if time_interval is None:
                raise InputError(
                    "Fewer second_per_grid_ts than videos; pass one per video, as the processor returns them."
                )
            chunk = vision_chunk_positions(next_position, grid_thw, spatial_merge_size, time_interval, device)
            if chunk.shape[1] > run_length:
                raise InputError(
                    f"A {kind} grid {tuple(int(x) for x in grid_thw)} needs {chunk.shape[1]} tokens but only "
                    f"{run_length} are left in the prompt; pass the processor's outputs unchanged."
                )
            pieces.append(chunk)
            run_length -= chunk.shape[1]
            # The reference rule: text resumes after the largest id of the chunk, whichever axis holds it.
            next_position = int(chunk.max()) + 1
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long, device=device)
    return torch.cat(pieces, dim=1)


def reference_rope_index(
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    spatial_merge_size: int,
    image_time_interval: float,
    video_time_intervals: Iterable[float | torch.Tensor],
    dtype: torch.dtype = torch.long,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference 3D rotary positions of a batch, with transformers' input and output conventions.

    mm_token_type_ids: [batch, seq] with 0 text, 1 image, 2 video. image_grid_thw / video_grid_thw:
    [n_images, 3] / [n_videos, 3], in the order the chunks appear in the batch. attention_mask: [batch, seq],
    0 marks padding; padded slots get position 0 (what transformers 5.x fills) and do not count.
    image_time_interval: temporal id step of every image. video_time_intervals: the temporal id step of each
    video, in order (an endless `itertools.repeat` when all videos share one).
    Returns position_ids [3, batch, seq] and rope_deltas [batch, 1] = max position + 1 - number of tokens,
    so that the n-th token of the sequence (counting from 0, padding excluded) decodes at n + rope_delta.
    """
    batch_size, seq_length = mm_token_type_ids.shape
    device = mm_token_type_ids.device
    grids = {
        IMAGE_TOKEN: iter(image_grid_thw if image_grid_thw is not None else []),
        VIDEO_TOKEN: iter(video_grid_thw if video_grid_thw is not None else []),
    }
    time_intervals = {
        IMAGE_TOKEN: itertools.repeat(image_time_interval),
        VIDEO_TOKEN: iter(video_time_intervals),
    }
    position_ids = torch.zeros(3, batch_size, seq_length, dtype=dtype, device=device)
    rope_deltas = []
    for sample in range(batch_size):
        keep = (
            attention_mask[sample].bool().to(device)
            if attention_mask is not None
            else torch.ones(seq_length, dtype=torch.bool, device=device)
        )
        token_types = mm_token_type_ids[sample][keep].tolist()
        positions = _sample_positions(token_types, grids, time_intervals, spatial_merge_size, device)
        position_ids[:, sample, keep] = positions.to(dtype)
        highest = int(positions.max()) if positions.numel() else -1
        rope_deltas.append(highest + 1 - len(token_types))
    return position_ids, torch.tensor(rope_deltas, dtype=torch.long, device=device).unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------
# Patching a model


def _qwen_vl_classes() -> dict[type, str]:
    """The inner model classes this module knows, mapped to their family name."""
    classes = {}
    try:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        classes[Qwen2VLModel] = "qwen2_vl"
    except ImportError:
        pass
    try:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

        classes[Qwen2_5_VLModel] = "qwen2_5_vl"
    except ImportError:
        pass
    return classes


def _find_inner_model(model: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
    """The Qwen2-VL / Qwen2.5-VL model that owns get_rope_index (the model itself or its `.model`)."""
    classes = _qwen_vl_classes()
    for candidate in (model, getattr(model, "model", None)):
        for cls, family in classes.items():
            if isinstance(candidate, cls):
                return candidate, family
    return None


def _time_intervals(inner: torch.nn.Module, family: str, second_per_grid_ts) -> tuple[float, Iterable]:
    """Temporal id steps: (for images, for each video in order). The only difference between the families.

    Qwen2-VL steps by 1 per temporal group. Qwen2.5-VL steps by tokens_per_second * seconds per group
    (the processor's second_per_grid_ts, 1 second when missing, as transformers does); its reference gives
    images no temporal step (irrelevant in practice: processors give an image a single temporal group).
    """
    if family == "qwen2_vl":
        return 1.0, itertools.repeat(1.0)
    tokens_per_second = inner.config.vision_config.tokens_per_second
    if second_per_grid_ts is None:
        return 0.0, itertools.repeat(tokens_per_second * 1)
    # Same factor, in the same order, as transformers' time_interval, so the vision ids match it exactly.
    return 0.0, [tokens_per_second * seconds for seconds in second_per_grid_ts]


def _token_types_from_ids(inner: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """mm_token_type_ids [batch, seq] derived from the image/video placeholder ids, when a caller gave none."""
    token_types = torch.zeros_like(input_ids, dtype=torch.int)
    token_types[input_ids == inner.config.image_token_id] = IMAGE_TOKEN
    token_types[input_ids == inner.config.video_token_id] = VIDEO_TOKEN
    return token_types


def _make_reference_get_rope_index(family: str, original):
    """A drop-in get_rope_index function (self first): same call signature as `original`, reference positions.

    Bound to the instance with types.MethodType (not a closure over it), so copy.deepcopy of a patched
    model binds the copy's method to the copy.
    """
    signature = inspect.signature(original)
    extra_kwargs_name = next(
        (name for name, p in signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )

    def get_rope_index(self, *args, **kwargs):
        # Bind by the original's signature: callers pass arguments by name, by position, and add extras
        # (generate forwards all its model kwargs) that are ignored.
        arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
        arguments.update(arguments.pop(extra_kwargs_name, {}) if extra_kwargs_name else {})
        input_ids = arguments["input_ids"]
        mm_token_type_ids = arguments.get("mm_token_type_ids")
        if mm_token_type_ids is None:
            mm_token_type_ids = _token_types_from_ids(self, input_ids)
        image_time_interval, video_time_intervals = _time_intervals(
            self, family, arguments.get("second_per_grid_ts")
        )
        return reference_rope_index(
            mm_token_type_ids.to(input_ids.device),
            image_grid_thw=arguments.get("image_grid_thw"),
            video_grid_thw=arguments.get("video_grid_thw"),
            attention_mask=arguments.get("attention_mask"),
            spatial_merge_size=self.config.vision_config.spatial_merge_size,
            image_time_interval=image_time_interval,
            video_time_intervals=video_time_intervals,
            dtype=input_ids.dtype,
        )

    setattr(get_rope_index, _PATCH_MARKER, True)
    return get_rope_index


def _differs_from_reference(inner: torch.nn.Module, family: str) -> bool:
    """Whether the model's own get_rope_index departs from the reference, on a video taller in time than wide.

    One text token, a video of 4 temporal groups x 1 x 1 merged patches, one text token. Returns False (and
    warns) when the check cannot run, e.g. a transformers version with another get_rope_index signature.
    """
    merge = inner.config.vision_config.spatial_merge_size
    token_types = torch.tensor([[TEXT_TOKEN] + [VIDEO_TOKEN] * 4 + [TEXT_TOKEN]], dtype=torch.int)
    input_ids = torch.zeros(token_types.shape, dtype=torch.long)
    video_grid_thw = torch.tensor([[4, merge, merge]])
    try:
        own_positions, _ = getattr(inner, compat.ROPE_INDEX_METHOD)(
            input_ids, mm_token_type_ids=token_types, video_grid_thw=video_grid_thw, attention_mask=None
        )
    except Exception as error:  # noqa: BLE001 - any failure means "cannot tell", reported below
        warnings.warn(
            f"Could not check {type(inner).__name__}.get_rope_index ({error}); leaving its positions as they are.",
            stacklevel=3,
        )
        return False
    image_time_interval, video_time_intervals = _time_intervals(inner, family, None)
    reference_positions, _ = reference_rope_index(
        token_types, None, video_grid_thw, None, merge, image_time_interval, video_time_intervals
    )
    return not torch.equal(own_positions.cpu(), reference_positions)


def remove_reference_positions(model: torch.nn.Module) -> bool:
    """Put back the model's own get_rope_index, exactly as it was before restore_reference_positions.

    model: a Qwen2-VL / Qwen2.5-VL model (the ...ForConditionalGeneration or its inner ...Model); anything
    else is left alone. Returns whether the model is one whose own positions differ from the reference
    (the same answer restore_reference_positions gives), whether or not it was patched.
    """
    found = _find_inner_model(model)
    if found is None:
        return False
    inner, family = found
    current = inner.__dict__.get(compat.ROPE_INDEX_METHOD)
    if current is not None and getattr(current, _PATCH_MARKER, False):
        previous = current.original_instance_attribute
        if previous is _NO_INSTANCE_ATTRIBUTE:
            delattr(inner, compat.ROPE_INDEX_METHOD)
        else:
            setattr(inner, compat.ROPE_INDEX_METHOD, previous)
        # Deltas cached by a forward under the other rule must not leak into the next decode.
        setattr(inner, compat.ROPE_DELTAS_ATTRIBUTE, None)
    return _differs_from_reference(inner, family)


def restore_reference_positions(model: torch.nn.Module) -> bool:
    """Make a Qwen2-VL / Qwen2.5-VL model compute rotary positions as Qwen's reference code does.

    Replaces get_rope_index on the inner model instance, which both the forward pass and generate() call.
    model: the ...ForConditionalGeneration or its inner ...Model. Idempotent; undo with
    remove_reference_positions. Returns True when the model is a Qwen2-VL / Qwen2.5-VL whose own positions
    differ from the reference (and is now patched); False, changing nothing, for any other model.
    """
    if not remove_reference_positions(model):
        return False
    inner, family = _find_inner_model(model)
    replacement = _make_reference_get_rope_index(family, getattr(inner, compat.ROPE_INDEX_METHOD))
    replacement.original_instance_attribute = inner.__dict__.get(compat.ROPE_INDEX_METHOD, _NO_INSTANCE_ATTRIBUTE)
    setattr(inner, compat.ROPE_INDEX_METHOD, types.MethodType(replacement, inner))
    setattr(inner, compat.ROPE_DELTAS_ATTRIBUTE, None)
    return True


def has_reference_positions(model: torch.nn.Module) -> bool:
    """Whether restore_reference_positions is in effect on this model."""
    found = _find_inner_model(model)
    if found is None:
        return False
    current = found[0].__dict__.get(compat.ROPE_INDEX_METHOD)
    return current is not None and getattr(current, _PATCH_MARKER, False)
