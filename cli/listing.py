"""`framefusion profiles` and `framefusion models`: what a user can choose from."""

from __future__ import annotations

import json
from typing import Any

import typer
import yaml
from rich.table import Table
from rich.text import Text

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
        # Two columns, so that it reads at 80: each profile's stages as a user writes them in a profiles file.
        table = Table(title="Reduction profiles", title_justify="left", show_lines=True)
        table.add_column("profile", no_wrap=True)
        table.add_column("what it does, and its stages")
        for name, item in found.items():
            stages = [_stage_line(stage) for stage in item.stages()] or ["(no stage: nothing reduced)"]
            table.add_row(Text.assemble((name, "bold"), "\n", (str(item.source), "dim")),
                          Text.assemble(item.description, "\n", ("\n".join(stages), "cyan")))
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
        for column in ("family", "model types", "default\nS_th", "source of S_th", "importance\nqueries",
                       "frame\nmultiple"):
            table.add_column(column)
        for item in families:
            table.add_row(item["family"], ", ".join(item["model_types"]), f"{item['similarity_lower_bound']}",
                          item["similarity_source"], str(item["importance_queries"]), str(item["frame_multiple"]))
        stdout.print(table)
        if refused:
            stdout.print("Refused (FrameFusion cannot run on them; applying it says why): " + ", ".join(
                f"{item['family']} ({', '.join(item['model_types'])})" for item in refused), highlight=False)
        stdout.print(_aliases_table(aliases))
        stdout.print(_random_models_table(randoms))

    run_guarded(debug, work)


def _random_models_table(randoms: Any) -> Table:
    table = Table(title="Random-weight models (no download)", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("shape of (for speed)", overflow="fold")
    for info in randoms:
        size = "tiny" if info.parameter_count is None else f"{info.parameter_count / 1e9:.2f} B"
        table.add_row(info.spec, size, info.shape_of or "[dim]built offline (tests, demos)[/dim]")
    return table


def _stage_line(stage: dict[str, Any]) -> str:
    """One stage as YAML's flow style spells it: `- kind: frame-dedup, max_difference: 0`."""
    values = ", ".join(f"{key}: {'family default' if value is None else _yaml_scalar(value)}"
                       for key, value in stage.items())
    return f"- {values}"


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _plain(items: Any) -> Any:
    if isinstance(items, dict):
        return {str(key): _plain(value) for key, value in items.items()}
    if isinstance(items, (list, tuple)):
        return [_plain(value) for value in items]
    if hasattr(items, "__dataclass_fields__"):
        from dataclasses import asdict

        return _plain(asdict(items))
    return items if isinstance(items, (str, int, float, bool, type(None))) else str(items)


def _aliases_table(aliases: dict[str, str]) -> Table:
    table = Table(title="Aliases", title_justify="left")
    table.add_column("alias", no_wrap=True)
    table.add_column("hub id")
    for alias, hub_id in aliases.items():
        table.add_row(alias, hub_id)
    return table
