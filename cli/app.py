"""The `framefusion` command: the app, its version flag, and its commands (one module each). Commands parse, call
the library and render; no logic a library user would need."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from framefusion import __version__
from framefusion_cli import ask, bench, cache, calibrate, caption, chat, doctor, listing
from framefusion_cli.console import stdout

app = typer.Typer(
    name="framefusion",
    help="Ask questions about local videos with a video LLM, several times faster with FrameFusion.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


# The order of `framefusion --help`.
for command in (ask, listing, caption, bench, calibrate, chat, cache, doctor):
    command.register(app)
