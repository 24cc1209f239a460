"""`framefusion chat VIDEO`: an interactive conversation about one video (framefusion.apps.chat does the work)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.prompt import Prompt

from framefusion.errors import InputError
from framefusion_cli.console import announce_loading, log, run_guarded, stderr, stdout
from framefusion_cli.options import run_settings, shared_options

COMMANDS_HELP = "/tokens (token counts and timings of the last turn), /reset, /save FILE, /exit"
# Lines that end the conversation rather than ask the model.
END_COMMANDS = ("/exit", "/quit", "exit", "quit")


def register(app: typer.Typer) -> None:
    app.command(name="chat")(chat)


@shared_options("loading", "profile", "sampling", "generation", "output", "no_reference_positions", "no_cache")
def chat(
    video: Annotated[Path, typer.Argument(help="The video file.", show_default=False)],
    show_tokens: Annotated[bool, typer.Option(
        "--show-tokens", help="Show the token counts and timings after every answer.")] = False,
    save: Annotated[Optional[Path], typer.Option(
        "--save", help="Also write the conversation as JSON to this file at the end.")] = None,
    *,
    options: SimpleNamespace,
) -> None:
    """Talk about a video: follow-up questions continue from the kept (reduced) KV cache, so each computes only
    its own new tokens. Reads one question per line from stdin when it is not a terminal. Commands: /tokens,
    /reset, /save FILE, /exit."""
    json_output = options.json_output

    def work() -> None:
        from framefusion.apps.chat import ChatSession
        from framefusion.pipeline.preflight import check_run, open_run, prepare_video_file
        from framefusion_cli.render import chat_turn_table

        settings = run_settings(options)
        checked = check_run(settings, [video])
        announce_loading(settings.model)
        qa = open_run(checked)
        prepared = prepare_video_file(qa, settings, video, settings.cache())
        session = ChatSession(qa, prepared, **settings.generation())
        interactive = sys.stdin.isatty() and not json_output
        if interactive:
            stdout.print(f"[dim]Ask about {video.name}. {COMMANDS_HELP}.[/dim]")
        for line in _questions(interactive):
            command, _, argument = line.partition(" ")
            if command.lower() in END_COMMANDS:
                break
            if command.startswith("/"):
                # A mistyped command is a note; the conversation goes on.
                try:
                    run_command(session, command, argument.strip())
                except InputError as error:
                    said = error.problem if error.setting is None else f"{command} {error.value}: {error.problem}"
                    stderr.print(f"[yellow]{escape(said)}[/yellow]", highlight=False, soft_wrap=True)
                continue
            on_text = None if json_output else (lambda text: stdout.print(text, end="", highlight=False))
            if not json_output:
                stdout.print("[bold]A:[/bold] ", end="")
            turn = session.ask(line, on_text=on_text)
            if json_output:
                print(json.dumps(turn.to_dict(), ensure_ascii=False), flush=True)
            else:
                stdout.print()
                if show_tokens:
                    stdout.print(chat_turn_table(turn))
        if save is not None:
            log(f"saved to {session.save(save)}")

    def run_command(session, command: str, argument: str) -> None:
        from framefusion_cli.render import chat_turn_table

        if command == "/reset":
            session.reset()
            log("conversation reset: the next question starts from the video")
        elif command == "/tokens":
            if not session.turns:
                raise InputError("no answer yet: ask a question first")
            if not json_output:
                stdout.print(chat_turn_table(session.turns[-1]))
        elif command == "/save":
            if not argument:
                raise InputError("/save needs a file name, e.g. /save chat.json")
            log(f"saved to {session.save(argument)}")
        else:
            raise InputError(f"unknown command {command}: {COMMANDS_HELP}")

    run_guarded(options.debug, work)


def _questions(interactive: bool):
    """Lines to act on: from a rich prompt on a terminal, else stdin line by line (blank lines skipped)."""
    if interactive:
        while True:
            try:
                line = Prompt.ask("[bold]Q[/bold]").strip()
            except EOFError:
                return
            if line:
                yield line
    else:
        for line in sys.stdin:
            if line.strip():
                yield line.strip()
