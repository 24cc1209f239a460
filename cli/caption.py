"""`framefusion caption FOLDER`: parses options, runs `framefusion.apps.caption.local.CaptionRun`, renders progress and summary."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from framefusion.errors import InputError
from framefusion_cli.console import announce_loading, run_guarded
from framefusion_cli.options import run_settings, shared_options

EXIT_SOME_FAILED, EXIT_INTERRUPTED = 1, 130


def register(app: typer.Typer) -> None:
    """Add the `caption` command to `app`."""
    app.command(name="caption")(caption)


@shared_options("loading", "profile", "frames", "fps", "max_frames", "backend", "max_new_tokens", "debug",
                "no_cache")
def caption(
    folder: Annotated[Path, typer.Argument(help="The folder that holds the videos.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o",
        help="Where the records go (appended; default captions.jsonl, or captions.csv with --format csv).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="What to ask about each video (default: describe it).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also caption the videos in subfolders.")] = False,
    output_format: Annotated[Optional[str], typer.Option(
        "--format", help="jsonl or csv (default: from --output's extension, else jsonl).")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        help="Seconds allowed for one video (decoding and the model); a slower one gets an error record.")] = None,
    engine: Annotated[str, typer.Option(
        help="local: this process; ray: a pool of Ray workers, each with the model loaded (pip install "
             "'framefusion\\[ray]').")] = "local",
    workers: Annotated[Optional[int], typer.Option(
        help="Ray workers (default: one per GPU with GPUs, else one per node).", show_default=False)] = None,
    address: Annotated[Optional[str], typer.Option(
        help="Join this Ray cluster (auto, or ray://host:10001) instead of starting a local instance.")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option(
        help="GPUs per Ray worker (default 1 when there are GPUs and --device is not cpu).",
        show_default=False)] = None,
    cpus_per_worker: Annotated[Optional[float], typer.Option(
        help="CPUs per Ray worker, also its torch threads (default: this machine's CPUs split between the "
             "workers; 1 on a cluster).", show_default=False)] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Try again the videos an earlier run found unreadable (else they are skipped; a "
                               "timeout or a model failure is always tried again).")
    ] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the summary as JSON on stdout (progress and logs go to stderr).")] = False,
    *,
    options: SimpleNamespace,
) -> None:
    """Caption every video in a folder, one record per video appended as it is done; re-running resumes.

    Exit status: 0 every video captioned, 1 some failed (see their error records), 2 bad usage, 130 interrupted.
    """
    stdout, stderr = Console(), Console(stderr=True)
    model, revision, max_new_tokens = options.model, options.revision, options.max_new_tokens

    def work() -> None:
        from framefusion.apps.caption.local import DEFAULT_PROMPT, CaptionRun, CaptionSettings, DecodeWorker
        from framefusion.model_zoo import parse_model_spec
        from framefusion.pipeline.preflight import check_run, open_run

        # Everything that can be checked without the model is checked first.
        if timeout is not None and not timeout > 0:
            raise InputError(f"--timeout must be a number of seconds > 0, got {timeout}")
        if engine not in ("local", "ray"):
            raise InputError(f"unknown --engine {engine!r}: use local or ray")
        ray_flags = {"--workers": workers, "--address": address, "--gpus-per-worker": gpus_per_worker,
                     "--cpus-per-worker": cpus_per_worker}
        if engine == "local" and any(value is not None for value in ray_flags.values()):
            given = ", ".join(flag for flag, value in ray_flags.items() if value is not None)
            raise InputError(f"{given}: only with --engine ray")
        if engine == "ray":
            from framefusion.apps.caption.ray_engine import import_ray

            import_ray()  # says how to install it, before anything else
        settings_of_run = run_settings(options)
        checked = check_run(settings_of_run)  # the same checks as ask; each video is checked when its turn comes
        chosen_profile, frame_count = checked.profile, settings_of_run.frame_count
        spec = parse_model_spec(model)
        model_name = spec.name + (f"@{revision}" if revision else "")
        destination = output if output is not None else Path(
            "captions.csv" if output_format == "csv" else "captions.jsonl")
        settings = CaptionSettings(
            model=model_name, profile=chosen_profile.name, prompt=DEFAULT_PROMPT if prompt is None else prompt,
            frames=frame_count if options.fps is None else None, fps=options.fps, max_frames=options.max_frames,
            max_new_tokens=max_new_tokens, backend=options.backend, timeout=timeout,
        )
        run = CaptionRun(folder, settings, destination, format=output_format, recursive=recursive,
                         retry_failed=retry_failed)
        if run.summary.repaired_bytes:
            stderr.print(f"[yellow]{destination}: removed a record torn by an earlier interruption "
                         f"({run.summary.repaired_bytes} bytes)[/yellow]", highlight=False)
        if not run.pending:
            finish(run.summary)
            return
        if engine == "ray":
            caption_on_ray(run, chosen_profile)
            return

        worker = DecodeWorker()
        try:
            # The first video decodes while the model loads.
            run.prefetch(worker)
            announce_loading(model)
            qa = open_run(checked)
            with ProgressEvents(stderr) as events:
                run.run(qa, events=events, worker=worker, cache=settings_of_run.cache())
        except KeyboardInterrupt:
            run.summary.interrupted = True
            finish(run.summary)
            raise typer.Exit(EXIT_INTERRUPTED)
        finally:
            worker.stop()
        finish(run.summary)

    def caption_on_ray(run: Any, chosen_profile: Any) -> None:
        from framefusion.apps.caption.ray_engine import ModelRecipe, RayOptions, caption_on_ray

        recipe = ModelRecipe(model, chosen_profile, device=options.device, dtype=options.dtype,
                             attn_implementation=options.attn, revision=revision,
                             trust_remote_code=options.trust_remote_code, hub_kernels=options.hub_kernels)
        pool = RayOptions(workers=workers, address=address, cpus_per_worker=cpus_per_worker,
                          gpus_per_worker=gpus_per_worker)
        if not options.debug:
            # Ray's C++ core logs routine notes at error level on stderr, Ray Data logs each run at info level;
            # the progress bar and the records say what happened, and --debug keeps them all. (Ray announces the
            # level it reads; ray_session keeps that line off stderr.)
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        try:
            # Ray prints worker failures on stdout, which belongs to --json.
            with ProgressEvents(stderr) as events, contextlib.redirect_stdout(sys.stderr):
                caption_on_ray(run, recipe, pool, events=events)
        except KeyboardInterrupt:
            run.summary.interrupted = True
            finish(run.summary)
            raise typer.Exit(EXIT_INTERRUPTED)
        finish(run.summary)

    def finish(summary: Any) -> None:
        if json_output:
            print(json.dumps(summary.to_dict(), ensure_ascii=False))
        else:
            render_summary(stderr if summary.interrupted else stdout, summary)
        if (summary.failed or summary.already_failed) and not summary.interrupted:
            raise typer.Exit(EXIT_SOME_FAILED)

    run_guarded(options.debug, work)


class ProgressEvents:
    """A rich progress bar (videos done / total, ETA, current file) on a terminal; nothing otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> "ProgressEvents":
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                console=self.console, transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def workers_planned(self, plan: Any) -> None:
        gpus = f", {plan.gpus:g} GPU" if plan.gpus else ""
        workers = "1 Ray worker" if plan.workers == 1 else f"{plan.workers} Ray workers"
        self.console.print(f"[dim]{workers}, each {plan.cpus:g} CPU{gpus}, model on {plan.device}[/dim]",
                           highlight=False)

    def started(self, pending: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("captioning", total=pending, current="")

    def video_started(self, video: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, current=escape(video))

    def video_finished(self, video: str, record: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if record.get("error"):
            self.progress.console.print(f"[red]failed:[/red] {escape(video)}: {escape(record['error'])}",
                                        highlight=False)
        self.progress.advance(self.task)


def render_summary(console: Console, summary: Any) -> None:
    """The end-of-run lines: captioned, failed (with names and reasons), skipped, tokens saved, time."""
    head = "[yellow]interrupted[/yellow]: " if summary.interrupted else ""
    console.print(
        f"{head}captioned {len(summary.captioned)}, failed {len(summary.failed)}, "
        f"skipped {len(summary.already_done)} already captioned and {len(summary.not_videos)} not videos; "
        f"{summary.tokens_saved:,} tokens saved; {summary.seconds:.1f} s -> {escape(summary.output)}",
        highlight=False,
    )
    for video, error in summary.failed:
        console.print(f"  [red]failed[/red] {escape(video)}: {escape(error)}", highlight=False, soft_wrap=True)
    if summary.already_failed:
        console.print(f"  {len(summary.already_failed)} failed in an earlier run as unreadable and were not tried "
                      "again (--retry-failed tries them)", highlight=False, soft_wrap=True)
