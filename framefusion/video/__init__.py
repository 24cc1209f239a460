"""Reading and sampling video frames.

One sampler for the whole project: `read_video` picks frames uniformly in time (the centres of equal time
slices), by timestamp, so variable-frame-rate files are sampled correctly, and it seeks rather than
decoding a whole long file. Two decoders: decord (fast, default when installed) and PyAV (everywhere, and the
fallback). Every file is first checked with PyAV (`probe_video`): decord can abort the process or quietly
substitute other frames on some broken files, so it only sees files that passed the check, and its answer
is checked against the probe before it is used.

Times in this package are seconds from the video's first frame. One module per concern:
clip (the result types), model_frames (what a model's processor accepts), sampling (pure rules), probe (file
checks), decord_reader and pyav_reader (the two decoders), reading (`read_video`, which ties them together).
"""

from framefusion.video.clip import VideoClip, VideoInfo
from framefusion.video.model_frames import (
    MAX_ASPECT_RATIO,
    MIN_MODEL_SIDE,
    check_frame_shape_for_model,
    enlarge_small_frames,
)
from framefusion.video.probe import probe_video
from framefusion.video.reading import decord_available, read_video, resolve_backend
from framefusion.video.sampling import (
    BACKENDS,
    DEFAULT_SAMPLING_FPS,
    TIME_EPSILON,
    check_sampling_arguments,
    frames_on_screen,
    resolve_time_span,
    sample_count,
    slice_centres,
)

__all__ = [
    "BACKENDS", "DEFAULT_SAMPLING_FPS", "MAX_ASPECT_RATIO", "MIN_MODEL_SIDE", "TIME_EPSILON", "VideoClip", "VideoInfo",
    "check_frame_shape_for_model", "check_sampling_arguments", "decord_available", "enlarge_small_frames",
    "frames_on_screen", "probe_video", "read_video", "resolve_backend", "resolve_time_span", "sample_count",
    "slice_centres",
]
