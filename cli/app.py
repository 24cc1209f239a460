"""The `framefusion` command: parses options, calls the library, renders. No logic a library user would need."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from framefusion import __version__
from framefusion.errors import FrameFusionError, InputError
from framefusion_cli import options as opt
from framefusion_cli.render import render_comparison, render_results

app = typer.Typer(
    name="framefusion",
    help="Ask questions about local videos with a video LLM, several times faster with FrameFusion.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)
stdout = Console()
stderr = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def run_guarded(debug: bool, work: Callable[[], Any]) -> Any:
    """Run a command body; turn our errors into one line on stderr and an exit code (tracebacks with --debug).
    The library's warnings (a feature cache that cannot be used, a decoder fallback) print as one line each."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning
            return work()
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            stderr.print_exception()
        text = error.describe(opt.flag_for_setting) if isinstance(error, FrameFusionError) else str(error)
        message = " ".join(text.split()) or type(error).__name__
        code = EXIT_USAGE if isinstance(error, InputError) else EXIT_FAILED
        if not isinstance(error, FrameFusionError):
            message = f"{type(error).__name__}: {message}" + ("" if debug else " (run with --debug for the traceback)")
        # escape: a message may hold brackets (pip install 'framefusion[ray]') that are not rich markup.
        stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)


def _one_line_warning(message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}", highlight=False,
                 soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"framefusion {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """Ask questions about local videos with a video LLM, several times faster with FrameFusion."""


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(help="The video file.", show_default=False)],
    questions: Annotated[List[str], typer.Argument(help="One or more questions about the video.", show_default=False)],
    model: opt.ModelOption = opt.DEFAULT_MODEL,
    revision: opt.RevisionOption = None,
    profile: opt.ProfileOption = "framefusion",
    profiles_file: opt.ProfilesFileOption = None,
    frames: opt.FramesOption = None,
    fps: opt.FpsOption = None,
    max_frames: opt.MaxFramesOption = 64,
    start: opt.StartOption = None,
    end: opt.EndOption = None,
    max_new_tokens: opt.MaxNewTokensOption = 128,
    temperature: opt.TemperatureOption = 0.0,
    seed: opt.SeedOption = None,
    system: opt.SystemOption = None,
    device: opt.DeviceOption = "auto",
    dtype: opt.DtypeOption = "auto",
    attn: opt.AttnOption = "sdpa",
    backend: opt.BackendOption = "auto",
    compare: Annotated[Optional[str], typer.Option(
        help="Also run this profile on the same input and show both side by side.")] = None,
    json_output: opt.JsonOption = False,
    debug: opt.DebugOption = False,
    trust_remote_code: opt.TrustRemoteCodeOption = False,
    hub_kernels: opt.HubKernelsOption = False,
    no_reference_positions: opt.NoReferencePositionsOption = False,
    no_cache: opt.NoCacheOption = False,
) -> None:
    """Answer questions about a video and show what FrameFusion did to the tokens, and the time it took."""

    def work() -> None:
        from framefusion.model_zoo.memory import reporting_out_of_memory
        from framefusion.pipeline.video_qa import ask_video
        from framefusion.pipeline.feature_cache import FeatureCache
        from framefusion.pipeline.preflight import RunSettings, check_run, open_run, prepare_video_file
        from framefusion.profiles.catalog import get_profile

        # Everything that can be checked without the model is checked first.
        for question in questions:
            if not question.strip():
                raise InputError("a question is empty: ask something about the video")
        settings = RunSettings(
            model=model, profile=profile, profiles_file=profiles_file, revision=revision, frames=frames, fps=fps,
            max_frames=max_frames, start=start, end=end, device=device, dtype=dtype, attn_implementation=attn,
            backend=backend, trust_remote_code=trust_remote_code, hub_kernels=hub_kernels,
            reference_positions=not no_reference_positions)
        checked = check_run(settings, [video], extra_profiles=[compare] if compare else [])
        compared = get_profile(compare, profiles_file) if compare else None

        log(f"loading {model} ...")
        loading_started = time.perf_counter()
        qa = open_run(checked)
        load_seconds = time.perf_counter() - loading_started
        prepared = prepare_video_file(qa, settings, video, None if no_cache else FeatureCache())

        generation = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system)
        stream = not json_output and compared is None
        on_text = _streamer(questions) if stream else None
        with reporting_out_of_memory(frames=prepared.clip.num_frames, dtype=qa.model.dtype, device=qa.device):
            results = ask_video(qa, prepared, list(questions), on_text=on_text, **generation)
        results[0].timings.load = load_seconds
        if stream:
            stdout.print()
        compared_results = []
        if compared is not None:
            if compared.pre_vision_stages() != qa.profile.pre_vision_stages():
                # The compared profile encodes the video differently (frame dedup): its own encoding, timed.
                qa.use_profile(compared)
                prepared = prepare_video_file(qa, settings, video, None if no_cache else FeatureCache())
            qa.use_profile(compared)
            with reporting_out_of_memory(frames=prepared.clip.num_frames, dtype=qa.model.dtype, device=qa.device):
                compared_results = ask_video(qa, prepared, list(questions), **generation)

        if json_output:
            payload = [result.to_dict() for result in results + compared_results]
            print(json.dumps(payload[0] if len(payload) == 1 else payload, ensure_ascii=False))
        elif compared is not None:
            render_comparison(stdout, results, compared_results)
        else:
            render_results(stdout, results, answers_streamed=True)

    run_guarded(debug, work)


def _streamer(questions: List[str]) -> Callable[[int, str], None]:
    current = {"index": -1}

    def on_text(index: int, text: str) -> None:
        if index != current["index"]:
            if current["index"] >= 0:
                stdout.print()
            current["index"] = index
            if len(questions) > 1:
                stdout.print(f"[bold]Q: {questions[index]}[/bold]")
            stdout.print("[bold]A:[/bold] ", end="")
        stdout.print(text, end="", highlight=False, markup=False)

    return on_text


def log(message: str) -> None:
    """Progress notes: on stderr, so stdout stays clean for --json."""
    stderr.print(f"[dim]{message}[/dim]", highlight=False)


@app.command()
def profiles(
    profiles_file: opt.ProfilesFileOption = None,
    json_output: opt.JsonOption = False,
    debug: opt.DebugOption = False,
) -> None:
    """List the reduction profiles: built-in, per-user and from --profiles-file."""

    def work() -> None:
        from framefusion.profiles.catalog import load_profiles

        found = load_profiles(profiles_file)
        if json_output:
            print(json.dumps({name: dict(p.settings(), description=p.description, source=str(p.source))
                              for name, p in found.items()}))
            return
        table = Table(title="Reduction profiles", title_justify="left")
        for column in ("name", "description", "settings", "source"):
            table.add_column(column)
        for name, item in found.items():
            settings = ", ".join(f"{key}={'family default' if value is None else value}"
                                 for key, value in item.settings().items())
            table.add_row(name, item.description, settings, str(item.source))
        stdout.print(table)

    run_guarded(debug, work)


@app.command()
def models(json_output: opt.JsonOption = False, debug: opt.DebugOption = False) -> None:
    """List the supported model families, aliases of published checkpoints and random: models."""

    def work() -> None:
        from framefusion.families import registered_families
        from framefusion.model_zoo import list_aliases, list_random_models

        registered = registered_families()
        families = [{"family": f.name, "similarity_lower_bound": f.default_similarity_lower_bound,
                     "similarity_source": f.similarity_source, "importance_queries": f.importance_queries,
                     "frame_multiple": f.frame_multiple, "model_types": list(f.model_types)}
                    for f in registered if not f.refuses]
        refused = [{"family": f.name, "model_types": list(f.model_types)} for f in registered if f.refuses]
        aliases = list_aliases()
        randoms = list_random_models()
        if json_output:
            print(json.dumps({"families": families, "refused": refused, "aliases": _plain(aliases),
                              "random": _plain(randoms)}))
            return
        table = Table(title="Model families", title_justify="left")
        for column in ("family", "model types", "default S_th", "source of S_th", "importance queries",
                       "frame multiple"):
            table.add_column(column)
        for item in families:
            table.add_row(item["family"], ", ".join(item["model_types"]), f"{item['similarity_lower_bound']}",
                          item["similarity_source"], str(item["importance_queries"]), str(item["frame_multiple"]))
        stdout.print(table)
        if refused:
            stdout.print("Refused (FrameFusion cannot run on them; applying it says why): " + ", ".join(
                f"{item['family']} ({', '.join(item['model_types'])})" for item in refused), highlight=False)
        stdout.print(_listing("Aliases", aliases))
        stdout.print(_listing("Random-weight models (no download)", randoms))

    run_guarded(debug, work)


def _plain(items: Any) -> Any:
    if isinstance(items, dict):
        return {str(key): _plain(value) for key, value in items.items()}
    if isinstance(items, (list, tuple)):
        return [_plain(value) for value in items]
    if hasattr(items, "__dataclass_fields__"):
        from dataclasses import asdict

        return _plain(asdict(items))
    return items if isinstance(items, (str, int, float, bool, type(None))) else str(items)


def _listing(title: str, items: Any) -> Table:
    table = Table(title=title, title_justify="left")
    rows = _plain(items)
    if isinstance(rows, dict):
        table.add_column("name")
        table.add_column("is")
        for key, value in rows.items():
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    else:
        table.add_column("name")
        for value in rows:
            table.add_row(value if isinstance(value, str) else json.dumps(value))
    return table


def _register_commands() -> None:
    from framefusion_cli import bench, cache, calibrate, caption, chat, doctor

    caption.register(app)
    bench.register(app)
    calibrate.register(app)
    chat.register(app)
    cache.register(app)
    doctor.register(app)


_register_commands()
