"""`framefusion profiles` and `framefusion models`: what a user can choose from."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from framefusion_cli import options as opt
from framefusion_cli.console import run_guarded, stdout


def register(app: typer.Typer) -> None:
    app.command(name="profiles")(profiles)
    app.command(name="models")(models)


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
