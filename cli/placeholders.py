"""What `--help` shows where a value goes: nothing after a flag, `VIDEO QUESTIONS...` in the usage line, an element
type for an argument that takes several values.

Typer 0.2x writes a placeholder from the Python type of every parameter: `--json <bool>` (a flag takes no value),
`questions... <list[str]>`, and `{video}` for a required argument in the usage line. The command classes here keep
Typer's placeholders for values (`<int>`, `<path>`, or an option's own metavar) and replace those three. With older
Typer releases (which show TEXT, INTEGER and no placeholder for a flag) they change nothing visible.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_LIST_PLACEHOLDER = re.compile(r"<list\[(\w+)\]>")


class _Argument(TyperArgument):
    """An argument as the usage line names it (`VIDEO`, `[VIDEO]`, `QUESTIONS...`), and, when it takes several
    values, the type of one value in the help (`<str>`, not `<list[str]>`)."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = (self.metavar or self.name or "").upper()
        if not self.required:
            name = f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx: Any) -> Optional[str]:
        shown = super().display_type_rich(ctx)
        one_value = _LIST_PLACEHOLDER.fullmatch(shown or "")
        return f"<{one_value.group(1).lower()}>" if one_value else shown


def _readable(params: Iterable[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and not param.count and param.metavar is None:
            param.metavar = ""  # shown as is: no placeholder
        elif type(param) is TyperArgument:
            param.__class__ = _Argument  # Typer makes its parameters itself and takes no class for them


class _ReadablePlaceholders:
    """Applies the placeholders above to a command's parameters, its --help included (made on first use)."""

    params: list

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _readable(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _readable([option])
        return option


class ReadableHelpCommand(_ReadablePlaceholders, TyperCommand):
    """A command whose help shows the placeholders above (every `framefusion` command uses it)."""


class ReadableHelpGroup(_ReadablePlaceholders, TyperGroup):
    """A group of commands (`framefusion`, `framefusion cache`) whose help shows the placeholders above."""
