"""framefusion as an lmms-eval model: accuracy and speed of a reduction profile on real benchmarks.

    pip install -e ".[eval]"
    lmms-eval --model framefusion --model_args pretrained=qwen2-vl-7b,profile=framefusion,frames=32 \\
        --tasks videomme --batch_size 1 --output_path results/

lmms-eval (0.7.x) finds the model through the `lmms_eval.models` entry-point group (pyproject.toml), whose entry
resolves to `lmms_eval_manifest()`: a ModelManifest naming `FrameFusionLMM` as a *simple* model (prompt text from the
task's doc_to_text, video path from its doc_to_visual), so the class says `is_simple = True`.

Each request goes through the same pipeline as `framefusion ask` (`open_video_qa`, `VideoQA.prepare_video/answer`,
video reading in framefusion/video/). Per sample, lmms-eval's own metrics log (`log_metrics`) records the token
counts, the achieved cost and the LLM prefill time; at the end lmms-eval averages them into the results JSON, next to
the scores, under `throughput`: `avg_achieved_cost`, `avg_prefill_seconds`, `avg_prompt_tokens`, ... One run per
profile gives accuracy and speed side by side (docs/accuracy.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from framefusion.errors import InputError, VideoError

MODEL_ID = "framefusion"
CLASS_PATH = "framefusion.apps.lmms_eval.model.FrameFusionLMM"
DEFAULT_MAX_NEW_TOKENS = 128
# Placeholders some tasks write into the prompt text; the pipeline puts the video into the chat template itself.
_MEDIA_PLACEHOLDERS = ("<video>", "<image>")
# Frames a task gives as images carry no timestamps; one per second is what their rotary time positions assume.
FRAME_LIST_FPS = 1.0
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".wmv")


def lmms_eval_manifest() -> Any:
    """The entry point lmms-eval loads: framefusion as a simple (doc_to_visual) model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


class FrameFusionLMM(lmms):
    """A video LLM under a reduction profile, answering lmms-eval's generate_until requests one at a time.

    Model arguments (`--model_args key=value,...`) are those of `framefusion ask`: pretrained (hub id, local folder,
    alias or random:tiny-<family>), revision, profile, profiles_file, frames / fps / max_frames, start, end, backend,
    device, dtype, attn, system, trust_remote_code, hub_kernels, reference_positions; and warmup (answers run untimed before the
    first sample, so that the first prefill time is not a cold start).
    """

    is_simple = True  # must agree with the manifest: registered as simple_class_path

    def __init__(self, pretrained: str | None = None, profile: str = "framefusion",
                 profiles_file: str | None = None, frames: int | None = None, fps: float | None = None,
                 max_frames: int = 64, start: float | None = None, end: float | None = None, backend: str = "auto",
                 device: str | None = None, dtype: str = "auto", attn: str = "sdpa", revision: str | None = None,
                 system: str | None = None, trust_remote_code: bool = False, hub_kernels: bool = False,
                 reference_positions: bool = True,
                 warmup: int = 1, batch_size: int | str = 1, max_batch_size: int | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        from framefusion.families import default_model
        from framefusion.pipeline.preflight import check_run, open_run, run_settings

        if unknown:
            raise InputError(
                f"unknown model argument(s) {', '.join(sorted(unknown))}; framefusion takes pretrained, revision, "
                "profile, profiles_file, frames, fps, max_frames, start, end, backend, device, dtype, attn, system, "
                "trust_remote_code, hub_kernels, reference_positions, warmup"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise NotImplementedError("framefusion runs in one process; run lmms-eval without accelerate launch "
                                      "(one process per profile, or per GPU with different --tasks)")
        if str(batch_size) != "1":
            _logger().warning(f"framefusion answers one prompt at a time (FrameFusion reduces one prompt per "
                              f"prefill); batch_size={batch_size} is ignored")
        # The same settings, checks and loading as `framefusion ask` (framefusion.pipeline.preflight).
        self.settings = run_settings(
            model=str(default_model() if pretrained is None else pretrained), profile=str(profile),
            profiles_file=Path(profiles_file) if profiles_file else None, revision=revision,
            frames=_whole_number("frames", frames), fps=fps, max_frames=_whole_number("max_frames", max_frames),
            start=start, end=end, device=str(device or "auto"), dtype=str(dtype), attn_implementation=str(attn),
            backend=str(backend), trust_remote_code=bool(trust_remote_code), hub_kernels=bool(hub_kernels),
            reference_positions=bool(reference_positions),
        )
        self.sampling = dict(num_frames=self.settings.frame_count, fps=fps, max_frames=self.settings.max_frames,
                             start=start, end=end, backend=str(backend))
        self.system = system
        self.warmup = _whole_number("warmup", warmup)
        self.qa = open_run(check_run(self.settings))
        # The last video's frames and vision features, reused by the next question about the same file.
        self._prepared: tuple[Any, Any] | None = None

    # --- what lmms-eval calls --------------------------------------------------------------------------------------
    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError(
            "framefusion answers by generating text (generate_until); it computes no log-likelihoods: use a task "
            "whose output_type is generate_until (video multiple-choice tasks that ask for the option's letter are)"
        )

    def generate_until_multi_round(self, requests: list) -> list:
        raise NotImplementedError(
            "framefusion answers one question per prompt about one video; multi-round conversations are not "
            "supported: use a single-round (generate_until) task"
        )

    def generate_until(self, requests: list) -> list:
        from lmms_eval.api.instance import GenerationResult, TokenCounts
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="framefusion"):
            context, generation, doc_to_visual, doc_id, task, split = request.args
            video = self._one_video(doc_to_visual(self.task_dict[task][split][doc_id]), task, doc_id)
            options = _generation_options(dict(generation or {}))
            try:
                result = self._answer(video, _question(context), options["max_new_tokens"], options["temperature"])
            except VideoError as error:
                # One unreadable file in a benchmark of thousands: count it wrong and go on, loudly.
                _logger().error(f"{task} doc {doc_id}: {error}; answered with an empty string")
                results.append(GenerationResult(text=""))
                continue
            self._log_sample(task, doc_id, result)
            results.append(GenerationResult(
                text=_cut_at_stop_sequences(result.answer, options["until"]),
                token_counts=TokenCounts(input_tokens=result.tokens.prompt, output_tokens=result.new_tokens),
            ))
        return results

    # --- one sample --------------------------------------------------------------------------------------------
    def _one_video(self, visuals: Any, task: str, doc_id: Any) -> Any:
        """The sample's video: a file path, or a VideoClip when the task gives the frames as images."""
        items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        items = [item for item in items if item is not None]
        if len(items) == 1 and isinstance(items[0], (str, os.PathLike)) and \
                str(items[0]).lower().endswith(_VIDEO_SUFFIXES):
            return str(items[0])
        if len(items) >= 2 and all(_is_image(item) for item in items):
            return self._clip_from_images(items, f"{task}/{doc_id}")
        kinds = ", ".join(sorted({type(item).__name__ for item in items})) or "nothing"
        raise NotImplementedError(
            f"{task} doc {doc_id}: framefusion answers about one video per sample (a video file, or its frames as "
            f"images); this task's doc_to_visual gave {len(items)} item(s) ({kinds}). Single images and several "
            "videos per sample are not supported"
        )

    def _clip_from_images(self, images: list, name: str) -> Any:
        """Frames given as images, in the task's order, sampled as `read_video` samples a file: `frames` of them at
        the centres of equal slices, or with fps, every one up to max_frames. Their rate is unknown: 1 frame/s."""
        import numpy as np

        from framefusion.video import VideoClip

        count = len(images)
        wanted = self.sampling["num_frames"] or min(count, self.sampling["max_frames"])
        picks = np.minimum(((np.arange(wanted) + 0.5) * count / wanted).astype(int), count - 1)
        frames = np.stack([np.asarray(images[index].convert("RGB")) for index in picks])
        return VideoClip.from_frames(frames, fps=FRAME_LIST_FPS, path=name)

    def _answer(self, video: Any, question: str, max_new_tokens: int, temperature: float) -> Any:
        import time

        from framefusion.video import read_video

        first_question = self._prepared is None or self._prepared[0] != video or not isinstance(video, str)
        if first_question:
            started = time.perf_counter()
            clip = read_video(video, **self.sampling) if isinstance(video, str) else video
            self._prepared = (video, self.qa.prepare_video(clip, time.perf_counter() - started))
        prepared = self._prepared[1]
        for _ in range(self.warmup):
            self.qa.answer(prepared, question, max_new_tokens=1, system=self.system)
        self.warmup = 0
        return self.qa.answer(prepared, question, max_new_tokens=max_new_tokens, temperature=temperature,
                              system=self.system, include_shared_work=first_question)

    def _log_sample(self, task: str, doc_id: Any, result: Any) -> None:
        """One entry of lmms-eval's metrics log per sample; lmms-eval averages each number into the results JSON."""
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        tokens, timings = result.tokens, result.timings
        seconds = timings.prefill + timings.generate
        log_metrics(
            total_elapsed_time=seconds, total_gen_tokens=result.new_tokens,
            avg_speed=result.new_tokens / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "achieved_cost": tokens.cost, "requested_cost": tokens.requested_cost,
                "prefill_seconds": timings.prefill, "vision_seconds": timings.vision,
                "prompt_tokens": tokens.prompt, "video_tokens": tokens.visual, "final_tokens": tokens.final,
            },
        )
        _logger().debug(f"{task} doc {doc_id}: {tokens.prompt} -> {tokens.final} tokens, cost {tokens.cost:.3f}, "
                        f"prefill {timings.prefill:.4f} s")


def _question(context: str) -> str:
    for placeholder in _MEDIA_PLACEHOLDERS:
        context = context.replace(placeholder, "")
    question = context.strip()
    if not question:
        raise InputError("the task gave an empty prompt text (doc_to_text); framefusion needs a question")
    return question


def _generation_options(generation: dict[str, Any]) -> dict[str, Any]:
    """lmms-eval's generation kwargs -> what VideoQA.answer takes; what it cannot honour is refused, not ignored."""
    until = generation.pop("until", None)
    until = [until] if isinstance(until, str) else list(until or [])
    max_new_tokens = int(generation.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    sampling = bool(generation.pop("do_sample", False))
    temperature = float(generation.pop("temperature", 0.0) or 0.0) if sampling else 0.0
    if int(generation.pop("num_beams", 1) or 1) != 1:
        raise NotImplementedError("framefusion decodes greedily or by sampling, not with beam search (num_beams > 1)")
    top_p = generation.pop("top_p", None)
    if sampling and top_p not in (None, 1, 1.0):
        raise NotImplementedError("framefusion samples with temperature only; top_p < 1 is not supported")
    return {"until": [stop for stop in until if stop], "max_new_tokens": max_new_tokens, "temperature": temperature}


def _cut_at_stop_sequences(text: str, until: list[str]) -> str:
    cut = min((text.index(stop) for stop in until if stop in text), default=len(text))
    return text[:cut].strip()


def _is_image(item: Any) -> bool:
    return callable(getattr(item, "convert", None)) and hasattr(item, "size") and hasattr(item, "mode")


def _whole_number(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError("must be a whole number", setting=name, value=value)
    return int(value)


def _logger() -> Any:
    from loguru import logger

    return logger
