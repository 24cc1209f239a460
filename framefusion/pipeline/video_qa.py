"""Video question answering with one loaded model: decode -> preprocess -> vision -> prefill -> generate.

The CLI's `ask`, `caption` and `bench` are thin shells over `VideoQA`; everything a library user would need is here,
and every result is a plain object (`AskResult`) that renders to JSON with `to_dict()`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers.generation.streamers import TextStreamer

from framefusion.runtime import transformers_compat as compat
from framefusion.families import (
    Family,
    find_family,
    frame_multiple_for,
    restore_reference_positions,
    supported_families,
)
from framefusion.api import apply_framefusion, framefusion_handle, remove_framefusion
from framefusion.runtime.clock import ForwardClock, Stopwatch
from framefusion.errors import InputError, ProfileError, Suggestion
from framefusion.model_zoo.memory import reporting_out_of_memory
from framefusion.profiles.catalog import TOWER_READING_KINDS, Profile
from framefusion.runtime.reduction import FrameFusionStats
from framefusion.runtime.before_llm import signals_used
from framefusion.runtime.vision_merge import VisionPlan
from framefusion.pipeline.results import (
    AskResult,
    Conversation,
    PreparedVideo,
    Timings,
    TokenReport,
    TokenStage,
)
from framefusion.pipeline.encoding import encode_video
from framefusion.video import VideoClip, enlarge_small_frames

DEFAULT_FRAMES = 32


class _TextStream(TextStreamer):
    """transformers' TextStreamer (prompt skipped, text released by whole words), handing text to `on_text`."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class VideoQA:
    """One loaded model answering questions about videos under a reduction profile.

    model, processor: a Hugging Face video model (eval mode) and its processor.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, *, model_name: str, profile: Profile,
                 reference_positions: bool = True):
        self.model = model
        self.processor = processor
        self.model_name = model_name
        # What the feature cache keys this model's features by (open_video_qa sets the full identity).
        self.identity = model_name
        self.reference_positions = reference_positions
        self.device = next(model.parameters()).device
        # None for a model FrameFusion does not support: it still runs, unreduced, under the baseline profile.
        self.adapter = find_family(model)
        self.family = self.adapter.name if self.adapter else None
        # A model of no known family encodes its video the default way.
        self.video_encoding = self.adapter or Family()
        self.language_model = self.adapter.language_model(model) if self.adapter else model.get_decoder()
        if reference_positions:
            # For every profile, baseline included, so that comparisons between profiles stay fair.
            restore_reference_positions(model)
        self.profile = profile
        self.use_profile(profile)

    # --- profile ------------------------------------------------------------------------------------------------
    def use_profile(self, profile: Profile) -> None:
        kwargs = profile.reduction_kwargs()
        if kwargs is None:
            remove_framefusion(self.model)
        else:
            try:
                apply_framefusion(self.model, **kwargs, reference_positions=self.reference_positions)
            except ValueError as error:
                raise InputError(f"profile {profile.name!r}: {error}") from error
        self.profile = profile

    @property
    def num_layers(self) -> int:
        return len(self.language_model.layers)

    # --- video --------------------------------------------------------------------------------------------------
    def prepare_video(self, clip: VideoClip, decode_seconds: float = 0.0, *,
                      profile: Profile | None = None) -> PreparedVideo:
        """Preprocess the clip's frames and run the vision encoder once, under the stages before the vision encoder
        of `profile` (default: the one set up). Every application prepares its videos here, so a stage added here
        reaches them all.

        frame-dedup (framefusion.methods.frame_dedup): frames that repeat the last encoded frame reuse its features
        instead of being encoded; in exact mode frames within `max_difference` mean absolute RGB difference (0:
        identical frames only), in noise-aware mode also frames where no region changed beyond the video's noise.
        The vision time includes deciding which frames to encode.
        """
        stages = (profile or self.profile).encoding_stages()
        # Processors reject or misread frames only a few pixels high or wide: enlarge those first.
        clip = enlarge_small_frames(clip)
        with Stopwatch(self.device) as preprocess:
            video_inputs = self._processor_inputs(clip, "?", None)
            video_inputs = {key: value for key, value in video_inputs.items()
                            if key not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        with Stopwatch(self.device) as vision, torch.inference_mode():
            modality, features, plan, vision_plan = encode_video(self, clip, video_inputs, stages)
        vision_seconds = vision.seconds if features is not None else 0.0
        skipped = features is not None and plan is not None and not plan.encodes_every_unit
        return PreparedVideo(clip, video_inputs, modality, features, decode_seconds, vision_seconds, preprocess.seconds,
                             frames_encoded=plan.frames_encoded if skipped else clip.num_frames,
                             frame_dedup=plan.mode if skipped else None, vision_plan=vision_plan)

    def _processor_inputs(self, clip: VideoClip, question: str, system: str | None) -> dict[str, torch.Tensor]:
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(
            text=[prompt], videos=compat.processor_videos(clip.frames), video_metadata=[clip.video_metadata()],
            do_sample_frames=False,
            return_tensors="pt",
        )
        return {key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                for key, value in inputs.items()}

    # --- one question -------------------------------------------------------------------------------------------
    def answer(self, prepared: PreparedVideo, question: str, *, max_new_tokens: int = 128,
               temperature: float = 0.0, seed: int | None = None, system: str | None = None,
               on_text: Callable[[str], None] | None = None, include_shared_work: bool = True,
               keep_cache: bool = False) -> AskResult:
        """Answer one question about a prepared video. Its prefill is its own: pruning depends on the question.

        include_shared_work: count the video's decode, preprocessing and vision time in this answer's timings (the
        first question of a video); later questions about the same video reuse that work and count only their own.
        keep_cache: keep the KV cache the answer left (result.conversation), for follow-up questions (framefusion.apps.chat).
        """
        if not question.strip():
            raise InputError("the question is empty: ask something about the video")
        with Stopwatch(self.device) as preprocess:
            inputs = self._processor_inputs(prepared.clip, question, system)
        model_inputs = dict(inputs)  # without pre-encoded features, generate() encodes the pixels itself
        if prepared.vision_features is not None:
            for key in prepared.video_inputs.keys() - set(self.video_encoding.prompt_video_keys):
                model_inputs.pop(key, None)
            model_inputs.update(compat.encoder_outputs_kwargs(prepared.vision_modality, prepared.vision_features))
        handle = framefusion_handle(self.model)
        if handle is not None:
            # The features may predate this profile; generate() will not pass the grid on to the forward.
            handle.use_video_grid(inputs.get("video_grid_thw"))
            handle.use_vision_plan(prepared.vision_plan)

        tokenizer = self.tokenizer
        generation = self.generation_kwargs(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        streamer = self.text_stream(on_text)

        clock = self.forward_clock()
        out_of_memory_advice = reporting_out_of_memory(
            frames=prepared.clip.num_frames, dtype=self.model.dtype, device=self.device)
        try:
            with out_of_memory_advice, Stopwatch(self.device) as generate_all, torch.inference_mode():
                generate_start = time.perf_counter()
                output = self.model.generate(**model_inputs, **generation, streamer=streamer,
                                             return_dict_in_generate=True)
            generate_end = time.perf_counter()
        finally:
            clock.close()
        prompt_length = inputs["input_ids"].shape[1]
        new_ids = output.sequences[0, prompt_length:]
        answer_text = tokenizer.decode(new_ids, skip_special_tokens=True).strip()

        prefill_seconds = clock.durations[0] if clock.durations else generate_all.seconds
        generate_seconds = generate_end - clock.ends[0] if clock.ends else 0.0
        shared_vision = prepared.vision_seconds if include_shared_work else 0.0
        # Without pre-encoded features, generate() ran the encoder for this answer before the language model's prefill.
        encoded_here = prepared.vision_features is None and clock.starts
        vision_in_generate = clock.starts[0] - generate_start if encoded_here else 0.0
        timings = Timings(
            decode_video=prepared.decode_seconds if include_shared_work else 0.0,
            preprocess=preprocess.seconds + (prepared.preprocess_seconds if include_shared_work else 0.0),
            vision=shared_vision + vision_in_generate,
            prefill=prefill_seconds,
            generate=generate_seconds,
        )
        timings.total = timings.decode_video + timings.preprocess + shared_vision + generate_all.seconds
        tokens = self._token_report(prepared.clip, inputs["input_ids"])
        tokens.frames_encoded = prepared.frames_encoded
        if isinstance(prepared.vision_plan, VisionPlan):
            tokens.frames_merged = prepared.vision_plan.frames
            tokens.frames_per_tower_layer = prepared.vision_plan.mean_layer_frames
        tokens.frame_dedup = prepared.frame_dedup
        return AskResult(
            answer=answer_text, question=question, model=self.model_name, profile=self.profile.name,
            video=str(prepared.clip.path), tokens=tokens, timings=timings, new_tokens=int(new_ids.numel()),
            settings=self._applied_settings(prepared.vision_plan), cache=prepared.cache,
            conversation=Conversation(output.sequences, compat.output_cache(output), inputs.get("mm_token_type_ids"))
            if keep_cache else None,
        )

    def text_stream(self, on_text: Callable[[str], None] | None) -> TextStreamer | None:
        """A streamer for generate() that hands the answer's text to on_text as it comes (None: no streaming)."""
        return _TextStream(self.tokenizer, on_text) if on_text else None

    def forward_clock(self) -> ForwardClock:
        """Times each forward of the language model from now on (the first of a generate() is its prefill)."""
        return ForwardClock(self.language_model, self.device)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def generation_kwargs(self, *, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> dict:
        """generate() settings: greedy at temperature 0 (the checkpoint's sampling defaults switched off)."""
        generation: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0)
        if temperature > 0:
            generation["temperature"] = temperature
            if seed is not None:
                torch.manual_seed(seed)
        else:
            generation.update(temperature=None, top_p=None, top_k=None)
        tokenizer = self.tokenizer
        generation["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return generation

    def _applied_settings(self, vision_plan: Any = None) -> dict[str, Any]:
        """The profile's settings as they ran on a video whose tower gave `vision_plan` (PreparedVideo.vision_plan)."""
        settings = self.profile.settings()
        handle = framefusion_handle(self.model)
        if handle is not None and "similarity_lower_bound" in settings:
            settings["similarity_lower_bound"] = handle.settings.similarity_lower_bound
        if handle is not None:
            for stage in settings.get("stages", []):
                _fill_applied(stage, handle.settings, vision_plan)
        return settings

    def _token_report(self, clip: VideoClip, input_ids: torch.Tensor) -> TokenReport:
        handle = framefusion_handle(self.model)
        # The adapter knows which token a frame's patches are written with (image tokens where frames are images).
        video_token_id = (self.adapter.video_token_id(self.model) if self.adapter
                          else getattr(self.model.config, "video_token_id", None))
        visual = int((input_ids == video_token_id).sum()) if video_token_id is not None else 0
        prompt = int(input_ids.shape[1])
        if handle is None:
            return TokenReport(frames=len(clip.frames), visual=visual, prompt=prompt, final=prompt, cost=1.0,
                               requested_cost=1.0, per_layer=[prompt] * self.num_layers, stages=[],
                               kept_positions=list(range(prompt)))
        stats: FrameFusionStats = handle.stats
        stages = [
            TokenStage(step.kind, step.where, step.layer, step.tokens_before, step.tokens_after)
            for step in stats.steps
        ]
        return TokenReport(
            frames=len(clip.frames), visual=visual, prompt=stats.prompt_tokens, final=stats.final_tokens,
            cost=stats.achieved_cost, requested_cost=stats.requested_cost, per_layer=list(stats.tokens_per_layer),
            stages=stages, kept_positions=list(stats.kept_positions), framefusion_seconds=stats.overhead_seconds,
        )


def ask_video(qa: VideoQA, clip: VideoClip | PreparedVideo, questions: list[str], *, decode_seconds: float = 0.0,
              on_text: Callable[[int, str], None] | None = None, **options: Any) -> list[AskResult]:
    """Answer several questions about one clip (or a video already prepared, e.g. from the feature cache): frames
    and vision features are shared, each prefill is its own. The profile's frame dedup, if any, applies to the clip."""
    for question in questions:
        if not question.strip():
            raise InputError("a question is empty: ask something about the video")
    prepared = clip if isinstance(clip, PreparedVideo) else qa.prepare_video(clip, decode_seconds)
    results = []
    for index, question in enumerate(questions):
        stream = (lambda text, index=index: on_text(index, text)) if on_text else None
        results.append(qa.answer(prepared, question, on_text=stream, include_shared_work=index == 0, **options))
    return results


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InputError("unknown device: use auto, cpu, cuda, cuda:N or mps", setting="device", value=device) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA GPU is available", setting="device", value=device,
                         suggestions=[Suggestion("run on the CPU", setting="device", value="cpu")])
    return resolved


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bfloat16 matmuls are several times slower than float32 on most CPUs.
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype: use auto, {', '.join(_DTYPES)}", setting="dtype", value=dtype)
    return _DTYPES[dtype]


def _fill_applied(stage: dict[str, Any], settings: Any, vision_plan: Any) -> None:
    """A stage's settings as they ran: the values left to the family or depth (None) filled from the applied
    settings, and for HoliTom and FastVID where their signals came from (the vision tower's, or substitutes)."""
    applied = {"inner-merge": settings.inner_merge, "framefusion": settings}.get(stage["kind"], settings.before_llm)
    if applied is not None and getattr(applied, "kind", stage["kind"]) == stage["kind"]:
        for key, value in stage.items():
            if value is None and hasattr(applied, key):
                filled = getattr(applied, key)
                stage[key] = list(filled) if isinstance(filled, tuple) else filled
    if stage["kind"] in TOWER_READING_KINDS:
        stage["signals"] = signals_used(stage["kind"], vision_plan)


def check_frame_count(family: str | None, frames: int | None) -> None:
    """Frames must be a multiple of the family's frame multiple (2 where the processor pairs frames into temporal
    patches: an odd count would repeat the last frame). family: a family name, or None when unknown."""
    if frames is not None and frames < 1:
        raise InputError("must be at least 1", setting="frames", value=frames)
    multiple = frame_multiple_for(family)
    if frames is not None and frames % multiple:
        in_pairs = multiple == 2
        groups, fix = ("pairs", "an even count") if in_pairs else (f"groups of {multiple}", f"a multiple of {multiple}")
        fitting = frames + multiple - frames % multiple
        raise InputError(f"{family} takes frames in {groups}", setting="frames", value=frames,
                         suggestions=[Suggestion(f"use {fix}", setting="frames", value=fitting)])


def open_video_qa(model_spec: str, profile: Profile, *, device: str = "auto", dtype: str = "auto",
                  attn_implementation: str = "sdpa", revision: str | None = None, trust_remote_code: bool = False,
                  hub_kernels: bool = False, reference_positions: bool = True, frames: int | None = None,
                  frame_size: tuple[int, int] | None = None) -> VideoQA:
    """Load a model (hub id, local path, alias or random:*) and set it up under `profile`.

    hub_kernels: let transformers replace layer forwards by kernels from the hub (off by default).
    frames, frame_size ((width, height) of the video): what the memory estimate made before loading assumes;
    without frames only the weights are checked. Raises InputError with the estimate and what to change when the
    model and the KV cache of `frames` frames do not fit in the device's free memory.
    """
    from framefusion.model_zoo.memory import check_memory_fits
    from framefusion.model_zoo import load_model, parse_model_spec

    spec = parse_model_spec(model_spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_memory_fits(spec, dtype=torch_dtype, device=torch_device, frames=frames, frame_size=frame_size,
                      attn_implementation=attn_implementation, revision=revision)
    loaded = load_model(spec, dtype=torch_dtype, device=str(torch_device),
                        attn_implementation=attn_implementation, revision=revision,
                        trust_remote_code=trust_remote_code, hub_kernels=hub_kernels)
    if find_family(loaded.model) is None and profile.reduction_kwargs() is not None:
        raise InputError(
            f"{loaded.name} is a {type(loaded.model).__name__}, which FrameFusion does not support yet "
            f"(supported families: {', '.join(supported_families())})",
            suggestions=[Suggestion("run it unreduced", setting="profile", value="baseline")],
        )
    qa = VideoQA(loaded.model, loaded.processor, model_name=loaded.name, profile=profile,
                 reference_positions=reference_positions)
    qa.identity = model_identity(spec, loaded.name, revision, loaded.model.config)
    return qa


def model_identity(spec: Any, name: str, revision: str | None, config: Any) -> str:
    """What names the weights a model runs with, for the feature cache: its name, revision and resolved commit, a
    local folder's weight files (name, size, time), and the transformers release that runs it."""
    from framefusion.model_zoo import SpecKind

    parts: dict[str, Any] = {"name": name, "revision": revision, "commit": compat.checkpoint_commit(config),
                             "transformers": compat.installed_version()}
    if spec.kind is SpecKind.LOCAL:
        folder = Path(spec.target)
        parts["weights"] = [(path.name, path.stat().st_size, path.stat().st_mtime_ns)
                            for path in sorted(folder.iterdir()) if path.suffix in (".safetensors", ".bin")]
    return json.dumps(parts, sort_keys=True)
