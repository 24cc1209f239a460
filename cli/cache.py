"""`framefusion cache info` and `framefusion cache clear`: the vision-feature cache (framefusion.pipeline.feature_cache)."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Optional

import typer

from framefusion.errors import InputError
from framefusion_cli import options as opt
from framefusion_cli.console import run_guarded, stdout
from framefusion_cli.placeholders import ReadableHelpGroup

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise InputError("use a number and a unit: 45s, 90m, 12h, 30d or 2w", setting="older_than", value=text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(help="The vision-feature cache that lets a second question about a video skip decoding "
                                 "and the vision encoder ($FRAMEFUSION_CACHE/features).", no_args_is_help=True)
    app.add_typer(cache_app, name="cache", cls=ReadableHelpGroup)

    @cache_app.command()
    def info(json_output: opt.JsonOption = False, debug: opt.DebugOption = False) -> None:
        """Entries, size and folder of the feature cache."""

        def work() -> None:
            from framefusion.pipeline.feature_cache import FeatureCache

            facts = FeatureCache().info()
            if json_output:
                print(json.dumps({"folder": facts.folder, "entries": facts.entries, "bytes": facts.bytes,
                                  "max_bytes": facts.max_bytes}))
            else:
                stdout.print(f"{facts.entries} entries, {facts.bytes / 1e6:.1f} MB of {facts.max_bytes / 1e9:.0f} GB "
                             f"in {facts.folder}", highlight=False)

        run_guarded(debug, work)

    @cache_app.command()
    def clear(
        model: Annotated[Optional[str], typer.Option(
            "--model", "-m", help="Only the entries of this model (the name `ask` reports).")] = None,
        older_than: Annotated[Optional[str], typer.Option(
            "--older-than", help="Only entries unused for longer than this: 45s, 90m, 12h, 30d, 2w.")] = None,
        yes: Annotated[bool, typer.Option(
            "--yes", "-y", help="Clear every entry without asking (needed when stdin is not a terminal).")] = False,
        debug: opt.DebugOption = False,
    ) -> None:
        """Remove feature-cache entries: all of them, or those of one model, or those unused for a while."""

        def work() -> None:
            from framefusion.pipeline.feature_cache import FeatureCache

            seconds = parse_age(older_than) if older_than is not None else None
            cache = FeatureCache()
            if model is None and seconds is None and not yes:
                entries = cache.info().entries
                if entries and not (sys.stdin.isatty() and typer.confirm(f"remove all {entries} entries?")):
                    raise InputError("clearing every entry needs --yes, or a --model or --older-than filter")
            removed = cache.clear(model=model, older_than_seconds=seconds)
            if model is not None and removed == 0 and model not in cache.models():
                held = ", ".join(cache.models()) or "none"
                raise InputError(f"no entry of this model in the cache (models there: {held})", setting="model",
                                 value=model)
            stdout.print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}", highlight=False)

        run_guarded(debug, work)
