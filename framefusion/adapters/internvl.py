"""InternVL (HF-native `internvl` classes): the processor writes a video as
"Frame1: <img> P x <IMG_CONTEXT> </img>\nFrame2: ...", P = (image_size / patch_size)^2 * downsample_ratio^2.

Frames are image tokens; a video is found as consecutive runs of exactly P of them with a frame label between
(see frame_runs.py). The markers and labels are type -1, so are images (their runs are P x tiles, or lone).
"""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import VideoInputs
from framefusion.adapters.frame_runs import FramesAsImagesAdapter


class InternVLAdapter(FramesAsImagesAdapter):
    family = "internvl"
    model_types = ("internvl",)
    default_similarity_lower_bound = 0.5
    similarity_source = "FrameFusion authors' InternVL2.5 example"
    importance_queries = 1
    # "</img>", a newline, "FrameK", ":", " ", "<img>": a frame label is at least this long, adjacent images are shorter.
    min_frame_gap = 4

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches = (vision.image_size[0] // vision.patch_size[0]) * (vision.image_size[1] // vision.patch_size[1])
        return int(patches * model.config.downsample_ratio**2)
