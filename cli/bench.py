"""`framefusion bench`: parses options, calls framefusion.apps.bench.run_bench, renders the result (its plot:
framefusion_cli.plots). Nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from framefusion.families import default_benchmark_shape
from framefusion_cli.console import announce_loading, log, run_guarded, stdout
from framefusion_cli.options import run_settings, shared_options

# Random weights at a published shape a built-in family names: measurable anywhere, nothing to download.
DEFAULT_BENCH_MODEL = f"random:{default_benchmark_shape()}"

ProfilesListOption = Annotated[str, typer.Option(
    "--profiles", metavar="PROFILES", help="Comma-separated profiles to compare; speedups are against the first.")]
RepeatOption = Annotated[int, typer.Option("--repeat", help="Measured rounds, interleaved across profiles (median).")]
WarmupOption = Annotated[int, typer.Option("--warmup", help="Rounds run first and not counted.")]
QuestionOption = Annotated[Optional[str], typer.Option("--question", help="The question every profile answers.")]
PlotOption = Annotated[Optional[Path], typer.Option(
    "--plot", help="Also write a PNG: tokens per layer and the timing breakdown (needs the `plot` extra).")]


def register(app: typer.Typer) -> None:
    """Add the `bench` command to `app`."""
    app.command(name="bench")(bench)


@shared_options("loading", "profiles_file", "sampling", "max_new_tokens", "output",
                model=DEFAULT_BENCH_MODEL, max_new_tokens=16)
def bench(
    video: Annotated[Optional[Path], typer.Argument(
        help="The video (default: a generated scene with static regions that merge and changing ones that are "
             "pruned).", show_default=False)] = None,
    profiles: ProfilesListOption = "baseline,framefusion",
    repeat: RepeatOption = 3,
    warmup: WarmupOption = 1,
    question: QuestionOption = None,
    plot: PlotOption = None,
    *,
    options: SimpleNamespace,
) -> None:
    """Measure reduction profiles side by side on one model and video: tokens, time, memory, speedups."""
    def work() -> None:
        from framefusion.apps import bench as library
        from framefusion.pipeline.video_qa import resolve_device, resolve_dtype
        from framefusion.pipeline.preflight import check_run, open_run, read_clip
        from framefusion.profiles.catalog import get_profile
        from framefusion_cli import plots

        # Everything that can be checked without the model is checked first.
        names = library.parse_profile_list(profiles)
        library.check_bench_arguments(names, repeat, warmup, options.max_new_tokens)
        chosen = [get_profile(name, options.profiles_file) for name in names]
        settings = run_settings(options, profile=names[0])
        checked = check_run(settings, [video] if video is not None else [])  # the same checks as ask
        if plot is not None:
            plots.check_plot_path(plot)
        torch_device = resolve_device(settings.device)
        torch_dtype = resolve_dtype(settings.dtype, torch_device)

        generated_folder = None
        try:
            source = video
            if source is None:
                source = library.synthetic_bench_video()
                generated_folder = source.parent
            announce_loading(settings.model)
            qa = open_run(checked)
            clip, decode_seconds = read_clip(settings, source)
            result = library.run_bench(
                qa, clip, chosen, repeat=repeat, warmup=warmup, max_new_tokens=settings.max_new_tokens,
                question=question or library.DEFAULT_QUESTION, decode_seconds=decode_seconds, dtype=torch_dtype,
                on_progress=log,
            )
        finally:
            if generated_folder is not None:
                shutil.rmtree(generated_folder, ignore_errors=True)
        if video is None:
            result.video = "(generated scene)"
        if plot is not None:
            plots.save_bench_plot(result, plot)
            log(f"plot written to {plot}")
        if options.json_output:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            stdout.print(render_bench(result))

    run_guarded(options.debug, work)


# --- rendering -----------------------------------------------------------------------------------------------------
def _megabytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MB"


_SHORT_WHERE = {"before_attention": " (pre-attn)", "before_llm": " (pre-LLM)"}


def _steps(run) -> str:
    parts = [f"{stage.kind}{_SHORT_WHERE.get(stage.where, '')}"
             + (f" @{stage.layer}" if stage.layer is not None else "") + f" −{stage.before - stage.after:,}"
             for stage in run.tokens.stages]
    return ", ".join(parts) or "—"


def tokens_table(result) -> Table:
    from framefusion.apps.bench import frames_encoded

    table = Table(title="Tokens", title_justify="left", show_edge=False)
    for column, justify in (("profile", "left"), ("frames encoded", "right"), ("prompt", "right"),
                            ("final", "right"), ("cost", "right"), ("steps (tokens removed)", "left")):
        table.add_column(column, justify=justify)
    for run in result.results:
        tokens = run.tokens
        table.add_row(run.profile, f"{frames_encoded(tokens):,}/{tokens.frames:,}", f"{tokens.prompt:,}",
                      f"{tokens.final:,}", f"{tokens.cost:.3f}", _steps(run))
    return table


def timings_table(result) -> Table:
    # Profiles side by side as columns, measures as rows: it reads at 80 columns for a handful of profiles.
    table = _by_profile(f"Time (s, median of {result.repeat})", [run.profile for run in result.results])
    rows = {"decode": [], "preprocess": [], "vision": [], "LLM prefill": [], "generation": [], "total": [],
            "FrameFusion (of prefill)": [], "peak memory": []}
    for run in result.results:
        timings = run.timings
        for name, seconds in zip(rows, (timings.decode_video, timings.preprocess, timings.vision, timings.prefill,
                                        timings.generate, timings.total)):
            rows[name].append(f"{seconds:.3f}")
        rows["FrameFusion (of prefill)"].append(
            f"{run.framefusion_seconds:.3f} ({run.framefusion_share_of_prefill:.0%})" if run.tokens.stages else "—")
        rows["peak memory"].append(_megabytes(run.peak_memory_bytes))
    for name, values in rows.items():
        table.add_row(name, *values, style="bold" if name == "total" else None)
    return table


def speedup_table(result) -> Table:
    runs = result.results[1:]
    table = _by_profile(f"Speedup over {result.reference.profile} (limit)", [run.profile for run in runs])
    speedups = [result.speedup[run.profile] for run in runs]
    table.add_row("vision", *(f"{s.vision:.2f}x ({s.vision_limit:.2f}x)" for s in speedups))
    table.add_row("prefill", *(f"{s.prefill:.2f}x ({s.prefill_limit:.2f}x)" for s in speedups))
    table.add_row("generation", *(f"{s.generate:.2f}x" for s in speedups))
    table.add_row("time to first token", *(f"{s.ttft:.2f}x ({s.ttft_limit:.2f}x)" for s in speedups))
    table.add_row("total", *(f"{s.total:.2f}x ({s.total_limit:.2f}x)" for s in speedups), style="bold")
    table.add_row("prefill / its limit", *(f"{s.prefill_of_limit:.0%}" for s in speedups))
    return table


def _by_profile(title: str, profiles: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("", no_wrap=True)
    for profile in profiles:
        table.add_column(profile, justify="right")
    return table


def render_bench(result) -> Group:
    machine = result.machine
    where = machine.get("gpu") or f"{machine.get('cpu')} ({machine.get('threads')} threads)"
    heading = Text.assemble((f"{result.model}", "bold"), f" · {result.reference.tokens.frames} frames · ",
                            f"{machine.get('dtype')} on {where} · {result.video}")
    parts = [heading, tokens_table(result), timings_table(result)]
    if len(result.results) > 1:
        parts.append(speedup_table(result))
    parts.append(Text("time to first token = vision + prefill; limits: vision by the frames encoded, prefill by "
                      "the tokens each layer processes, the end-to-end ones by Amdahl's law (those stages exactly "
                      "that much faster, decoding and preprocessing unchanged).", style="dim"))
    return Group(*parts)
