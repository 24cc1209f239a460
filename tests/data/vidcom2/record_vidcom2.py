"""Record vLLM's VidCom2 masks on small seeded float32 inputs, for tests/test_vidcom2.py.

    python tests/data/vidcom2/record_vidcom2.py --reference /path/to/vidcom2.py [--output tests/data/vidcom2/cases.pt]

`--reference` is vLLM's `vllm/multimodal/video_prune/vidcom2.py` at commit 0f17ee061e413bf8ab7927f926f69cdff24dc63e,
saved as it is (it imports only torch). It is imported from that path and run unchanged; its git blob hash is
checked so that no other version is recorded by mistake. See README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
from pathlib import Path

import torch

VLLM_COMMIT = "0f17ee061e413bf8ab7927f926f69cdff24dc63e"
REFERENCE_BLOB = "830e47bc055f4eb5917e1543e162980ff8f99d81"  # `git hash-object` of the file at VLLM_COMMIT
MERGE_SIZE = 2  # vLLM takes the grid before the spatial merge; Qwen's merge is 2x2

# (name, frames T, tokens per frame P, channels C, pruning rate q, first seed tried)
CASES = [
    ("one frame", 1, 16, 12, 0.5, 0),
    ("two frames", 2, 9, 8, 0.3, 0),
    ("qwen-like 7x7 grid", 8, 49, 16, 0.75, 0),
    ("many thin frames", 16, 16, 12, 0.9, 0),
    ("large frames", 4, 64, 16, 0.5, 0),
    ("rate 0 keeps all", 6, 12, 10, 0.0, 0),
    ("light pruning, odd channel count", 5, 20, 9, 0.1, 0),
    ("floor of one token per frame", 8, 4, 8, 0.99, 0),
    ("int truncation: 1000 * 0.1 -> 99", 10, 100, 4, 0.9, 0),
    ("a frame left empty", 16, 16, 12, 0.9, 100),
    ("rate 0.25", 12, 25, 12, 0.25, 0),
    ("rate 0.6", 6, 30, 6, 0.6, 0),
]
# With fewer than 4 channels only one is scored, and a normalised 1-channel token is +1 or -1: nearly every score
# ties. Recorded all the same, flagged, so that tests check what ties leave determined (count, scores kept).
TIE_CASES = [
    ("one channel (ties)", 4, 8, 1, 0.5, 0),
    ("one scored channel of three (ties)", 6, 30, 3, 0.6, 0),
]


def load_reference(path: Path):
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    if blob != REFERENCE_BLOB:
        raise SystemExit(f"{path}: git blob {blob}, expected {REFERENCE_BLOB} (vLLM {VLLM_COMMIT})")
    spec = importlib.util.spec_from_file_location("vllm_vidcom2_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_video(frames: int, per_frame: int, channels: int, seed: int) -> torch.Tensor:
    """[T * P, C] float32: a static background with a slow drift, a few fast-changing positions, a scene cut half way
    and one frame that stands out, so that frames differ in how typical they are."""
    generator = torch.Generator().manual_seed(seed)
    scene = torch.randn(per_frame, channels, generator=generator)
    speed = torch.rand(per_frame, 1, generator=generator) ** 3  # most positions slow, a few fast
    offsets = torch.randn(channels, generator=generator)
    video = []
    for frame in range(frames):
        if frames > 2 and frame == frames // 2:
            scene = torch.randn(per_frame, channels, generator=generator)
        scene = scene + speed * torch.randn(per_frame, channels, generator=generator)
        tokens = scene + offsets
        if frames > 2 and frame == frames // 3:
            tokens = tokens + 1.5 * torch.randn(per_frame, channels, generator=generator)
        video.append(tokens)
    # Channels of different scales, so that the low-variance pick is decided with margin.
    scales = torch.linspace(0.5, 2.0, channels) if channels > 1 else torch.ones(1)
    return (torch.cat(video) * scales).float()


def mask_of(reference, embeddings: torch.Tensor, frames: int, per_frame: int, rate: float) -> torch.Tensor:
    grid = (frames, MERGE_SIZE, per_frame * MERGE_SIZE)  # (T, H, W) with (H // 2) * (W // 2) = P
    return reference.compute_retention_mask(embeddings, grid, MERGE_SIZE, rate)


def free_of_near_ties(reference, embeddings: torch.Tensor, frames: int, per_frame: int, rate: float,
                      seed: int) -> bool:
    """Whether float64 and two jittered float32 runs choose the same tokens as the float32 run."""
    mask = mask_of(reference, embeddings, frames, per_frame, rate)
    generator = torch.Generator().manual_seed(seed + 10_000)
    others = [mask_of(reference, embeddings.double(), frames, per_frame, rate)]
    for _ in range(2):
        jitter = 1e-5 * embeddings.abs().mean() * torch.randn(embeddings.shape, generator=generator)
        others.append(mask_of(reference, embeddings + jitter, frames, per_frame, rate))
    return all(torch.equal(mask, other) for other in others)


def leaves_a_frame_empty(mask: torch.Tensor, per_frame: int) -> bool:
    return bool((mask.reshape(-1, per_frame).sum(dim=1) == 0).any())


def record(reference) -> list[dict]:
    cases = []
    for name, frames, per_frame, channels, rate, first_seed in CASES + TIE_CASES:
        ties = (name, frames, per_frame, channels, rate, first_seed) in TIE_CASES
        for seed in range(first_seed, first_seed + 200):
            embeddings = synthetic_video(frames, per_frame, channels, seed)
            if not ties and not free_of_near_ties(reference, embeddings, frames, per_frame, rate, seed):
                continue
            before = embeddings.clone()
            mask = mask_of(reference, embeddings, frames, per_frame, rate)
            assert torch.equal(before, embeddings)
            if name == "a frame left empty" and not leaves_a_frame_empty(mask, per_frame):
                continue
            count = reference.compute_retained_tokens_count(per_frame, frames, rate)
            assert int(mask.sum()) == count, (name, int(mask.sum()), count)
            cases.append({"name": name, "seed": seed, "embeddings": embeddings, "per_frame": per_frame,
                          "pruning_rate": rate, "mask": mask.clone(), "kept_count": count, "ties": ties})
            print(f"{name}: T={frames} P={per_frame} C={channels} q={rate} seed={seed} kept={count}")
            break
        else:
            raise SystemExit(f"{name}: no seed without near ties")
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="vLLM's vidcom2.py at " + VLLM_COMMIT)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("cases.pt"))
    arguments = parser.parse_args()
    torch.manual_seed(0)
    reference = load_reference(arguments.reference)
    source = arguments.reference.read_bytes()
    torch.save({"reference": {"repository": "vllm-project/vllm", "commit": VLLM_COMMIT,
                              "path": "vllm/multimodal/video_prune/vidcom2.py", "git_blob": REFERENCE_BLOB,
                              "sha256": hashlib.sha256(source).hexdigest(), "torch": str(torch.__version__)},
                "cases": record(reference)}, arguments.output)
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
