"""Hand-made Qwen2-VL video inputs: frames with a static background, a moving block and a noisy patch."""
import torch

IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, EOS = 300, 301, 302, 303, 304
PATCH, MERGE, TEMPORAL = 14, 2, 2
SIDE = 112


NOISE_LEVELS = (
    (0.0, 0.3, 0.6, 1.0),
    (1.5, 2.0, 3.0, 0.0),
    (0.0, 0.0, 0.0, 0.0),
    (0.1, 0.2, 0.4, 5.0),
)


def make_frames(num_frames: int, seed: int, block_speed: int = 14, noise_levels=NOISE_LEVELS) -> torch.Tensor:
    """[num_frames, 3, SIDE, SIDE] uint8: seeded static background, a 28x28 block moving right along row 2, and in
    each 28x28 cell (one merged token) fresh noise of that cell's level in every frame, so frames repeat in places.
    """
    generator = torch.Generator().manual_seed(seed)
    background = torch.rand(3, SIDE, SIDE, generator=generator) * 2 - 1
    block = torch.rand(3, 28, 28, generator=generator) * 2 - 1
    levels = torch.tensor(noise_levels).repeat_interleave(28, 0).repeat_interleave(28, 1)  # [SIDE, SIDE]
    frames = background.expand(num_frames, -1, -1, -1).clone()
    for index in range(num_frames):
        left = (index * block_speed) % (SIDE - 28)
        frames[index, :, 56:84, left : left + 28] = block
        frames[index] += levels * (torch.rand(3, SIDE, SIDE, generator=generator) * 2 - 1)
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [-1, 1] (exact in float32, so both transformers versions see the same values)."""
    return frames.to(torch.float32) / 127.5 - 1.0


def patchify(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [T, C, H, W] -> (pixel_values_videos [t*h*w, C*2*14*14], video_grid_thw [1, 3]) in Qwen2-VL's layout."""
    num_frames, channels, height, width = frames.shape
    grid_t, grid_h, grid_w = num_frames // TEMPORAL, height // PATCH, width // PATCH
    patches = frames.reshape(
        grid_t, TEMPORAL, channels, grid_h // MERGE, MERGE, PATCH, grid_w // MERGE, MERGE, PATCH
    )
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * TEMPORAL * PATCH * PATCH)
    return flat.contiguous(), torch.tensor([[grid_t, grid_h, grid_w]])


def make_input_ids(num_video_tokens: int, seed: int, before: int = 9, after: int = 7) -> torch.Tensor:
    """[1, L]: text, <|vision_start|>, video tokens, <|vision_end|>, text."""
    generator = torch.Generator().manual_seed(seed + 1000)
    text_before = torch.randint(0, 300, (before,), generator=generator)
    text_after = torch.randint(0, 300, (after,), generator=generator)
    ids = torch.cat(
        [
            text_before,
            torch.tensor([VISION_START]),
            torch.full((num_video_tokens,), VIDEO_TOKEN),
            torch.tensor([VISION_END]),
            text_after,
        ]
    )
    return ids.unsqueeze(0)


def make_case(num_frames: int, seed: int, **frame_options) -> dict:
    frames = make_frames(num_frames, seed, **frame_options)
    pixel_values_videos, video_grid_thw = patchify(normalise(frames))
    grid_t, grid_h, grid_w = video_grid_thw[0].tolist()
    num_video = grid_t * (grid_h // MERGE) * (grid_w // MERGE)
    input_ids = make_input_ids(num_video, seed)
    return {
        "frames": frames,
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixel_values_videos,
        "video_grid_thw": video_grid_thw,
    }
