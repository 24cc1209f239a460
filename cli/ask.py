"""`framefusion ask VIDEO QUESTION...`: answer questions about a video and show the tokens and the time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Callable, List, Optional

import typer

from framefusion.errors import InputError
from framefusion_cli.console import announce_loading, run_guarded, stdout
from framefusion_cli.options import run_settings, shared_options
from framefusion_cli.render import render_comparison, render_results


def register(app: typer.Typer) -> None:
    app.command(name="ask")(ask)


@shared_options("loading", "profile", "sampling", "generation", "output",
                "no_reference_positions", "no_cache")
def ask(
    video: Annotated[Path, typer.Argument(help="The video file.", show_default=False)],
    questions: Annotated[List[str], typer.Argument(help="One or more questions about the video.", show_default=False)],
    compare: Annotated[Optional[str], typer.Option(
        help="Also run this profile on the same input and show both side by side (both encode the video: the "
             "feature cache is left out, so the two are timed alike).")] = None,
    *,
    options: SimpleNamespace,
) -> None:
    """Answer questions about a video and show what FrameFusion did to the tokens, and the time it took."""

    def work() -> None:
        from framefusion.model_zoo.memory import reporting_out_of_memory
        from framefusion.pipeline.preflight import check_run, open_run, prepare_video_file
        from framefusion.pipeline.video_qa import ask_video
        from framefusion.profiles.catalog import get_profile

        # Everything that can be checked without the model is checked first.
        for question in questions:
            if not question.strip():
                raise InputError("a question is empty: ask something about the video")
        settings = run_settings(options)
        checked = check_run(settings, [video], extra_profiles=[compare] if compare else [])
        compared = get_profile(compare, settings.profiles_file) if compare else None

        announce_loading(settings.model)
        loading_started = time.perf_counter()
        qa = open_run(checked)
        load_seconds = time.perf_counter() - loading_started
        # A comparison times both sides the same way: neither takes its features from the cache.
        cache = None if compared is not None else settings.cache()
        prepared = prepare_video_file(qa, settings, video, cache)

        stream = not options.json_output and compared is None
        on_text = _streamer(questions) if stream else None
        with reporting_out_of_memory(frames=prepared.clip.num_frames, dtype=qa.model.dtype, device=qa.device):
            results = ask_video(qa, prepared, list(questions), on_text=on_text, **settings.generation())
        results[0].timings.load = load_seconds
        if stream:
            stdout.print()
        compared_results = []
        if compared is not None:
            if compared.encoding_stages() != qa.profile.encoding_stages():
                # The compared profile encodes the video differently (frame dedup): its own encoding, timed.
                qa.use_profile(compared)
                prepared = prepare_video_file(qa, settings, video, None)
            qa.use_profile(compared)
            with reporting_out_of_memory(frames=prepared.clip.num_frames, dtype=qa.model.dtype, device=qa.device):
                compared_results = ask_video(qa, prepared, list(questions), **settings.generation())

        if options.json_output:
            # One shape whatever was asked: an object per answer, a line each (the profile's answers, then the
            # compared profile's), as chat --json prints its turns.
            for result in results + compared_results:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
        elif compared is not None:
            render_comparison(stdout, results, compared_results)
        else:
            render_results(stdout, results, answers_streamed=True)

    run_guarded(options.debug, work)


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
