"""The GPU checks, run by scripts/gpu_check.sh on a lent GPU machine (or on CPU with --dry-run):

1. speed: every built-in profile side by side (framefusion.apps.bench.run_bench) on random:llava-video-7b-qwen2 in
   bfloat16 at 32, 64 and 128 frames of the still-then-moving synthetic scene, made in memory;
2. kernels: sdpa's flash and memory-efficient kernels keep the same tokens as its math kernel (FrameFusion profile);
3. dtype: bfloat16 keeps the same tokens as float32, and its first-token logits agree within tolerance.

Writes gpu_check.json (everything measured) into --out and prints a summary; exit 0 when every check passes, 1 when
one fails, 2 when no CUDA device is visible (without --dry-run). A time budget skips what would not fit, and says so.

    python scripts/gpu_check.py --out DIR                # on the GPU machine (gpu_check.sh sets the path up)
    python scripts/gpu_check.py --dry-run --out DIR      # here: a tiny model, float32/bfloat16 on CPU, fewer frames
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

# Thresholds of the parity checks. Kernels compute the same attention in another order, bfloat16 keeps 8 bits of
# mantissa: a token whose similarity or importance sits at a threshold may flip, a few may, not many.
KERNEL_MIN_OVERLAP = 0.99
DTYPE_MIN_OVERLAP = 0.95
DTYPE_MIN_LOGIT_COSINE = 0.98
QUESTION = "What happens in this video?"


def stand_in_for_missing_pyav() -> None:
    """The GPU machine has no PyAV and the check never decodes a file (its frames are made in memory), but
    framefusion.video imports `av` when it loads. A module that names the problem on first use stands in for it."""
    try:
        import av  # noqa: F401
        return
    except ImportError:
        pass

    class _MissingPyAV(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            # AttributeError, so that hasattr() and inspect, which look at every module, read "absent".
            raise AttributeError(f"PyAV is not installed here (av.{name} was used); the GPU check makes its frames "
                                 "in memory and must not decode files")

    sys.modules["av"] = _MissingPyAV("av")


def missing_packages() -> list[str]:
    """What the check needs from the machine itself (too large or too machine-specific to carry as wheels)."""
    import importlib.util

    needed = {"torch": "torch", "torchvision": "torchvision (transformers' video processors)", "PIL": "pillow",
              "jinja2": "jinja2 (chat templates)", "numpy": "numpy"}
    return [name for module, name in needed.items() if importlib.util.find_spec(module) is None]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="folder for gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, random:tiny-llava-onevision, 4 and 8 frames")
    parser.add_argument("--model", default=None, help="default random:llava-video-7b-qwen2 (dry run: tiny)")
    parser.add_argument("--frames", default=None, help="comma-separated frame counts (default 32,64,128)")
    parser.add_argument("--budget-seconds", type=float, default=270.0, help="skip what would start after this")
    return parser.parse_args()


class Report:
    """Everything measured, in the order it ran, and whether each check passed."""

    def __init__(self, budget_seconds: float):
        self.started = time.perf_counter()
        self.budget_seconds = budget_seconds
        self.data: dict[str, Any] = {"checks": {}, "bench": [], "skipped": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def time_left(self, what: str, needs_seconds: float) -> bool:
        if self.elapsed() + needs_seconds <= self.budget_seconds:
            return True
        self.data["skipped"].append(f"{what}: {self.elapsed():.0f} s spent, about {needs_seconds:.0f} s more needed")
        return False

    def check(self, name: str, passed: bool, **details: Any) -> None:
        self.data["checks"][name] = {"passed": bool(passed), **details}
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {json.dumps(details, default=str)[:400]}", flush=True)

    def guarded(self, name: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as error:  # a check that crashes fails with its traceback, the others still run
            self.check(name, False, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.data["checks"].values())


def make_clip(frames: int, side: int) -> Any:
    from framefusion.video.synthetic import render_still_then_moving_frames
    from framefusion.video import VideoClip

    fps = 8.0
    pixels = render_still_then_moving_frames(seconds=frames / fps, fps=fps, width=side, height=side)
    return VideoClip.from_frames(pixels, fps, path=f"<still-then-moving {frames} frames>")


def environment(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


# --- 1. every built-in profile, side by side ---------------------------------------------------------------------
def bench_profiles(report: Report, qa: Any, frame_counts: list[int], side: int, rounds: tuple[int, int]) -> None:
    from framefusion.apps.bench import run_bench
    from framefusion.profiles.catalog import builtin_profiles

    profiles = list(builtin_profiles().values())
    repeat, warmup = rounds
    seconds_per_round = None
    for frames in frame_counts:
        needs = 0.0 if seconds_per_round is None else seconds_per_round * (repeat + warmup) * frames / frame_counts[0]
        if not report.time_left(f"bench at {frames} frames", needs):
            continue
        started = time.perf_counter()
        def progress(message: str, frames: int = frames) -> None:
            print(f"  {frames} frames: {message}", flush=True)

        result = run_bench(qa, make_clip(frames, side), profiles, repeat=repeat, warmup=warmup, max_new_tokens=8,
                           question=QUESTION, on_progress=progress)
        seconds_per_round = (time.perf_counter() - started) / (repeat + warmup) * frame_counts[0] / frames
        payload = result.to_dict()
        report.data["bench"].append(payload)
        print_bench(payload)
        baseline = payload["results"][0]
        dedup = next((run for run in payload["results"] if run["profile"] == "dedup"), None)
        if dedup is not None:
            # The still half is encoded once; the answer must be the baseline's (exact dedup changes no feature).
            report.check(f"dedup answers as baseline at {frames} frames",
                         dedup["answer"] == baseline["answer"]
                         and dedup["tokens"]["frames_encoded"] < baseline["tokens"]["frames_encoded"],
                         frames_encoded=dedup["tokens"]["frames_encoded"], frames=frames,
                         vision_ratio=round(dedup["timings"]["vision"] / max(baseline["timings"]["vision"], 1e-9), 3))


def print_bench(payload: dict[str, Any]) -> None:
    print(f"\n{payload['model']} · {payload['frames']} frames · {payload['machine']['dtype']} · "
          f"{payload['machine']['gpu'] or payload['machine']['cpu']}")
    print(f"{'profile':18} {'enc':>5} {'prompt':>7} {'final':>7} {'vision':>8} {'prefill':>8} {'generate':>8} "
          f"{'total':>8}  speedup total (limit)")
    for run in payload["results"]:
        tokens, timings = run["tokens"], run["timings"]
        speedup = payload["speedup"][run["profile"]]
        print(f"{run['profile']:18} {tokens['frames_encoded']:>5} {tokens['prompt']:>7} {tokens['final']:>7} "
              f"{timings['vision']:>8.3f} {timings['prefill']:>8.3f} {timings['generate']:>8.3f} "
              f"{timings['total']:>8.3f}  {speedup['total']:.2f}x ({speedup['total_limit']:.2f}x)")
    print(flush=True)


# --- 2. sdpa kernels ----------------------------------------------------------------------------------------------
def kept_tokens(qa: Any, prepared: Any) -> tuple[list[int], list[int], Any]:
    """(kept positions, tokens per layer, last-position logits of the prefill) of one answer under qa's profile."""
    captured: list[Any] = []
    head = qa.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, output: captured.append(output[0, -1].float().cpu()))
    try:
        result = qa.answer(prepared, QUESTION, max_new_tokens=1)
    finally:
        hook.remove()
    return list(result.tokens.kept_positions), list(result.tokens.per_layer), captured[0]


def overlap(first: list[int], second: list[int]) -> float:
    union = set(first) | set(second)
    return len(set(first) & set(second)) / len(union) if union else 1.0


def check_kernels(report: Report, qa: Any, frames: int, side: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from framefusion.profiles.catalog import get_profile

    qa.use_profile(get_profile("framefusion"))
    prepared = qa.prepare_video(make_clip(frames, side))
    with sdpa_kernel([SDPBackend.MATH]):
        reference, reference_layers, _ = kept_tokens(qa, prepared)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        name = f"sdpa {backend.name.lower()} keeps the math kernel's tokens"

        def compare(backend=backend, name=name) -> None:
            try:
                with sdpa_kernel([backend]):
                    kept, layers, _ = kept_tokens(qa, prepared)
            except RuntimeError as error:
                if qa.device.type == "cuda":  # on the GPU every kernel must run: a refusal is a finding
                    raise
                report.data["skipped"].append(f"{name}: {str(error).splitlines()[0]} ({qa.device.type})")
                return
            share = overlap(reference, kept)
            report.check(name, share >= KERNEL_MIN_OVERLAP, overlap=round(share, 5), identical=kept == reference,
                         kept=len(kept), math_kept=len(reference), per_layer_equal=layers == reference_layers)

        report.guarded(name, compare)


# --- 3. bfloat16 against float32 ----------------------------------------------------------------------------------
def check_dtype_parity(report: Report, low: Any, model: str, device: str, frames: int, side: int) -> None:
    import torch

    from framefusion.pipeline.video_qa import open_video_qa
    from framefusion.profiles.catalog import get_profile

    clip = make_clip(frames, side)
    high = open_video_qa(model, get_profile("baseline"), device=device, dtype="float32")  # the same random weights
    try:
        for profile in ("baseline", "framefusion"):
            outcomes = []
            for qa in (high, low):
                qa.use_profile(get_profile(profile))
                outcomes.append(kept_tokens(qa, qa.prepare_video(clip)))
            (kept32, _, logits32), (kept16, _, logits16) = outcomes
            cosine = float(torch.nn.functional.cosine_similarity(logits32, logits16, dim=0))
            share = overlap(kept32, kept16)
            report.check(f"bfloat16 matches float32 ({profile})",
                         share >= DTYPE_MIN_OVERLAP and cosine >= DTYPE_MIN_LOGIT_COSINE,
                         kept_overlap=round(share, 5), logit_cosine=round(cosine, 5),
                         same_top_token=bool(logits32.argmax() == logits16.argmax()),
                         max_abs_logit_difference=float((logits32 - logits16).abs().max()))
    finally:
        del high
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def main() -> int:
    arguments = parse_arguments()
    stand_in_for_missing_pyav()
    if missing := missing_packages():
        print(f"gpu_check: this Python lacks {', '.join(missing)}; install them or run on a machine that has them",
              file=sys.stderr)
        return 2
    import torch

    if not arguments.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch; this check needs an NVIDIA GPU "
              "(run it with --dry-run to try its Python part on the CPU)", file=sys.stderr)
        return 2
    from framefusion.pipeline.video_qa import open_video_qa
    from framefusion.profiles.catalog import get_profile

    dry = arguments.dry_run
    model = arguments.model or ("random:tiny-llava-onevision" if dry else "random:llava-video-7b-qwen2")
    frame_counts = [int(n) for n in (arguments.frames or ("4,8" if dry else "32,64,128")).split(",")]
    device = "cpu" if dry else "cuda"
    side = 112 if dry else 384
    report = Report(arguments.budget_seconds)
    arguments.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {model}, bfloat16 on {device}, frames {frame_counts}", flush=True)
    started = time.perf_counter()
    qa = open_video_qa(model, get_profile("baseline"), device=device, dtype="bfloat16", frames=max(frame_counts))
    report.data.update(model=model, dry_run=dry, frames=frame_counts, load_seconds=time.perf_counter() - started,
                       environment=environment(qa.device))

    report.guarded("bench", lambda: bench_profiles(report, qa, frame_counts, side, (1, 1) if dry else (2, 1)))
    if report.time_left("sdpa kernels", 20):
        report.guarded("sdpa kernels", lambda: check_kernels(report, qa, frame_counts[0], side))
    if report.time_left("bfloat16 parity", 60):
        report.guarded("bfloat16 parity",
                       lambda: check_dtype_parity(report, qa, model, device, frame_counts[0], side))
    report.data["seconds"] = round(report.elapsed(), 1)
    report.data["passed"] = report.passed
    target = arguments.out / "gpu_check.json"
    target.write_text(json.dumps(report.data, indent=1, default=str))
    for skipped in report.data["skipped"]:
        print(f"[SKIP] {skipped}")
    print(f"gpu_check: {'all checks passed' if report.passed else 'SOME CHECKS FAILED'} in {report.elapsed():.0f} s; "
          f"details in {target}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
