"""`framefusion calibrate VIDEO...`: parses options, runs `framefusion.apps.calibrate.calibrate`, renders the result."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from framefusion.errors import InputError, VideoError
from framefusion_cli.console import announce_loading, log, run_guarded, stderr, stdout
from framefusion_cli.options import flag_for_setting, run_settings, shared_options

SaveProfileOption = Annotated[Optional[str], typer.Option(
    "--save-profile", metavar="NAME",
    help="Save a framefusion profile with the proposed S_th under this name, in the per-user profiles file "
         "(or --profiles-file, created if missing); use it with `ask --profile NAME`.")]
CostOption = Annotated[float, typer.Option(
    "--cost", help="The cost of the saved profile (share of the dense video-token compute).")]
PlotOption = Annotated[Optional[Path], typer.Option(
    "--plot", help="Also write a PNG of the per-layer distribution (needs the `plot` extra).")]


def register(app: typer.Typer) -> None:
    """Add the `calibrate` command to `app`."""
    app.command(name="calibrate")(calibrate)


@shared_options("loading", "sampling", "profiles_file", "output")
def calibrate(
    videos: Annotated[Optional[List[Path]], typer.Argument(
        help="Video files, or folders whose videos are all used.", show_default=False)] = None,
    save_profile: SaveProfileOption = None,
    cost: CostOption = 0.3,
    plot: PlotOption = None,
    *,
    options: SimpleNamespace,
) -> None:
    """Measure, on your own videos, how similar each video token is to the same place in the previous frame, layer
    by layer, and propose FrameFusion's similarity threshold S_th by the authors' rule: the mean over videos of the
    median similarity at the input embeddings, where the first merge happens."""
    model, profiles_file = options.model, options.profiles_file

    def work() -> None:
        from framefusion.apps import calibrate as library
        from framefusion.api import minimum_cost
        from framefusion.pipeline.preflight import check_run, open_run
        from framefusion.profiles.catalog import save_profile as write_profile
        from framefusion_cli.plots import check_plot_path

        # Everything that can be checked without the model is checked first (the same checks as ask).
        paths = library.collect_videos(videos or [])
        # --profiles-file is where the proposed profile is saved, not where the run reads its profile.
        settings = run_settings(options, profile="baseline", profiles_file=None)
        frame_count = settings.frame_count
        if frame_count is not None and frame_count < 2:
            raise InputError("calibration compares frames with the previous one: sample at least 2",
                             setting="frames", value=frame_count)
        # An unreadable video is reported and left out, as caption does; only when none can be read is it an error.
        checked = check_run(settings)
        readable, unreadable = [], []
        for path in paths:
            try:
                check_run(settings, [path])
                readable.append(path)
            except VideoError as error:
                unreadable.append((path, error))
        if not readable:
            if len(unreadable) == 1:
                raise unreadable[0][1]
            raise InputError(f"none of the {len(unreadable)} videos can be read: "
                             f"{', '.join(str(path) for path, _ in unreadable)}")
        for path, error in unreadable:
            stderr.print(f"[yellow]warning:[/yellow] skipped {escape(str(path))}: "
                         f"{escape(error.describe(flag_for_setting))}", highlight=False, soft_wrap=True)
        paths = readable
        if save_profile is not None:
            check_saved_profile(save_profile, cost, profiles_file)
        if plot is not None:
            check_plot_path(plot)

        announce_loading(model)
        qa = open_run(checked)
        if save_profile is not None and cost < minimum_cost(qa.num_layers):
            raise InputError(f"too small for a model with {qa.num_layers} decoder layers: the saved profile could not "
                             f"run; use at least {minimum_cost(qa.num_layers):.3f}", setting="cost", value=cost)
        result = library.calibrate(
            qa, paths, frames=frame_count, fps=settings.fps, max_frames=settings.max_frames, start=settings.start,
            end=settings.end, backend=settings.backend,
            on_video=lambda index, path: log(f"[{index + 1}/{len(paths)}] {path}"),
        )

        saved = None
        if save_profile is not None:
            written, replaced = write_profile(save_profile, result.profile_settings(cost), profiles_file)
            saved = {"name": save_profile, "file": str(written), "replaced": replaced}
        if plot is not None:
            write_plot(result, plot)
            log(f"plot written to {plot}")
        if result.stops_merging:
            stderr.print(f"[yellow]warning:[/yellow] S_th {result.similarity_lower_bound:.4f} would stop merging: "
                         "nearly no token is that similar to the previous frame's; these videos change too much for "
                         "FrameFusion's merge (its prune still runs)", highlight=False, soft_wrap=True)
        if options.json_output:
            print(json.dumps(dict(result.to_dict(), saved_profile=saved), ensure_ascii=False))
            return
        stdout.print(similarity_table(result))
        if len(result.videos) > 1:
            stdout.print(video_table(result))
        stdout.print(frame_change_table(result))
        stdout.print(Text.assemble(
            ("proposed S_th ", "bold"), (f"{result.similarity_lower_bound:.4f}", "bold cyan"),
            (f"  = the mean over the videos of the median at layer 0 (family default {result.family_default:g})",
             "dim"),
        ))
        if saved is not None:
            action = "replaced" if saved["replaced"] else "saved"
            file_option = f" --profiles-file {profiles_file}" if profiles_file is not None else ""
            stdout.print(f"{action} profile {save_profile!r} in {saved['file']}; use it with: framefusion ask VIDEO "
                         f"QUESTION --model {model} --profile {save_profile}{file_option}", highlight=False,
                         soft_wrap=True)  # a command to copy: never broken inside a path

    run_guarded(options.debug, work)


def check_saved_profile(name: str, cost: float, profiles_file: Optional[Path]) -> None:
    """The name, the cost and the target file of --save-profile, checked before the model loads."""
    from framefusion.profiles.catalog import parse_profiles, read_profiles_file, user_profiles_file

    parse_profiles({"profiles": {name: {"description": "check", "cost": cost}}}, "--save-profile")
    target = profiles_file if profiles_file is not None else user_profiles_file()
    if target is not None and Path(target).exists():
        read_profiles_file(Path(target))


def similarity_table(result: Any) -> Table:
    """Per layer: the distribution of the similarity to the previous frame (each figure a mean over videos)."""
    table = Table(title=f"Similarity to the same position in the previous frame · {result.model} · "
                        f"{len(result.videos)} video(s)", title_justify="left", show_edge=False)
    table.add_column("layer input")
    for name in ("p10", "p25", "median", "p75", "p90", "mean"):
        table.add_column(name, justify="right")
    for index, stats in enumerate(result.layers):
        label = "0 embeddings" if index == 0 else str(index)
        values = (f"{getattr(stats, name):.4f}" for name in ("p10", "p25", "median", "p75", "p90", "mean"))
        table.add_row(label, *values, style="bold" if index == 0 else None)
    table.caption = ("each video token (all frames but the first) against the same position in the previous frame, at "
                     "the input of each decoder layer; layer 0's input is where FrameFusion's first merge happens")
    return table


def video_table(result: Any) -> Table:
    table = Table(title="Videos", title_justify="left", show_edge=False)
    for column, justify in (("video", "left"), ("frames", "right"), ("video tokens", "right"),
                            ("median at layer 0", "right")):
        table.add_column(column, justify=justify)
    for video in result.videos:
        table.add_row(video.video, str(video.frames), f"{video.video_tokens:,}", f"{video.layers[0].median:.4f}")
    return table


def frame_change_table(result: Any) -> Table:
    """Per video: noise-aware frame dedup's noise floor, threshold and each frame's change score (for its
    sensitivity setting)."""
    table = Table(title="Frame changes · noise-aware frame dedup at sensitivity 1", title_justify="left",
                  show_edge=False)
    for column, justify in (("video", "left"), ("noise floor", "right"), ("threshold", "right"),
                            ("encoded", "right"), ("change per frame (* encoded)", "left")):
        table.add_column(column, justify=justify)
    for video in result.videos:
        plan = video.frame_changes
        if plan is None:
            continue
        encoded = set(plan.encoded)
        scores = " ".join(f"{score:.1f}{'*' if unit in encoded else ''}" for unit, score in enumerate(plan.change_scores))
        table.add_row(video.video, f"{plan.noise_floor:.2f}", f"{plan.threshold:.2f}",
                      f"{plan.frames_encoded}/{plan.num_frames}", scores)
    table.caption = ("change: the mean RGB difference of the most-changed region against the last encoded frame (a pair "
                     "of frames for models that encode frames in pairs); a frame is encoded above the threshold, which "
                     "a frame-dedup sensitivity s divides by s")
    return table


def write_plot(result: Any, path: Path) -> None:
    """A PNG: per layer the median similarity, the 25-75 % and 10-90 % bands, and the proposed S_th."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot

    layers = list(range(len(result.layers)))
    figure, axis = pyplot.subplots(figsize=(8, 4.5))
    axis.fill_between(layers, [s.p10 for s in result.layers], [s.p90 for s in result.layers], alpha=0.2, color="C0",
                      label="10-90 %")
    axis.fill_between(layers, [s.p25 for s in result.layers], [s.p75 for s in result.layers], alpha=0.35, color="C0",
                      label="25-75 %")
    axis.plot(layers, [s.median for s in result.layers], marker="o", label="median")
    axis.axhline(result.similarity_lower_bound, color="black", linestyle="--",
                 label=f"proposed S_th {result.similarity_lower_bound:.3f}")
    axis.axhline(result.family_default, color="grey", linestyle=":", label=f"family default {result.family_default:g}")
    axis.set_xlabel("decoder layer (its input; 0 = input embeddings)")
    axis.set_ylabel("cosine similarity to the previous frame")
    axis.set_title(f"{result.model} · {len(result.videos)} video(s)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
