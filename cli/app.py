"""The `framefusion` command: the app, its version flag, and its commands (one module each). Commands parse, call
the library and render; no logic a library user would need."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated, Any, Iterator, Optional

import typer
from typer.core import TyperCommand

from framefusion import __version__
from framefusion_cli import ask, bench, cache, calibrate, caption, chat, doctor, listing
from framefusion_cli.console import EXIT_USAGE, print_error, stdout
from framefusion_cli.placeholders import ReadableHelpCommand, ReadableHelpGroup


class OneLineUsageErrors(ReadableHelpGroup):
    """Usage errors (a missing argument, an unknown option, a value of the wrong type) as one line, like every other
    error, instead of click's usage block."""

    def main(self, args: Any = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: click raises usage errors to us, and returns an exit code for an Exit.
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        except Exception as error:
            if not _is_usage_error(error):
                raise
            message = error.format_message().rstrip(".")
            if message:  # none when the help was shown instead (a group called without its command)
                context = getattr(error, "ctx", None)
                where = context.command_path if context is not None else "framefusion"
                print_error(f"{message} (see `{where} --help`)")
            sys.exit(error.exit_code or EXIT_USAGE)
        sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(error: Exception) -> bool:
    # Typer 0.2x vendors click (typer._click), older releases use click itself: recognise click's errors by name.
    return any(kind.__name__ == "ClickException" for kind in type(error).__mro__)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="framefusion",
    help="Ask questions about local videos with a video LLM, several times faster with FrameFusion.",
    epilog="Exit status: 0 success, 1 processing failed, 2 bad input or usage, 130 interrupted. Errors are one line; "
           "--debug shows the traceback.",
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


def _reflowed(doc: Optional[str]) -> Optional[str]:
    """A docstring as help text: each paragraph one line (the terminal wraps it), paragraphs kept apart."""
    if doc is None:
        return None
    paragraphs = [" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n")]
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def _every_command(typer_app: typer.Typer) -> Iterator[Any]:
    yield from typer_app.registered_commands
    for group in typer_app.registered_groups:
        yield from _every_command(group.typer_instance)


# The order of `framefusion --help`.
for command in (ask, listing, caption, bench, calibrate, chat, cache, doctor):
    command.register(app)
for registered in _every_command(app):
    registered.help = registered.help or _reflowed(registered.callback.__doc__)
    # Placeholders a user reads in every command's help (framefusion_cli.placeholders); groups name their class.
    if registered.cls in (None, TyperCommand):  # Typer's default: no command asked for a class of its own
        registered.cls = ReadableHelpCommand
