"""SmolVLM / SmolVLM2 (`smolvlm` classes): the processor writes a video as an intro line, then per frame
"\nFrame from MM:SS:<fake_token_around_image><global-img> P x <image> <fake_token_around_image>",
P = (image_size / patch_size)^2 / scale_factor^2.

Frames are image tokens; a video is found as consecutive runs of exactly P of them with a frame label between
(see frame_runs.py). Tiles of a split image are separated by two or three marker tokens only, and stay type -1.
"""

from __future__ import annotations

from torch import nn

from framefusion.adapters.base import VideoInputs
from framefusion.adapters.frame_runs import FramesAsImagesAdapter


class SmolVLMAdapter(FramesAsImagesAdapter):
    family = "smolvlm"
    model_types = ("smolvlm",)
    default_similarity_lower_bound = 0.5
    similarity_source = "none published for SmolVLM: the authors' default of 0.5"
    importance_queries = 1
    # Between frames: <fake_token_around_image>, "\nFrame from MM:SS:" (several tokens), <fake_token_around_image>,
    # <global-img>. Between tiles of one image: <fake_token_around_image><row_i_col_j>, after a newline at most.
    min_frame_gap = 6

    def language_model(self, model: nn.Module) -> nn.Module:
        return self.multimodal_model(model).text_model  # SmolVLM names its decoder stack text_model

    def tokens_per_frame(self, model: nn.Module, video_index: int, num_tokens: int, video: VideoInputs) -> int:
        vision = model.config.vision_config
        patches_per_side = vision.image_size // vision.patch_size
        return (patches_per_side // model.config.scale_factor) ** 2
