"""PNG plots of results (`--plot`): the checks made before a model loads, and the bench plot. Drawing is the CLI's
job; the library only computes the results."""

from __future__ import annotations

from pathlib import Path

from framefusion.errors import InputError
from framefusion.pipeline.results import TIMING_FIELDS


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise InputError("a plot needs matplotlib: pip install 'framefusion[plot]' (or leave the plot out)",
                         setting="plot") from error


def check_plot_path(path: str | Path) -> Path:
    """A writable .png path, checked before any model is loaded."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InputError("the plot is a PNG: name the file with .png", setting="plot", value=str(target))
    if not target.parent.exists():
        raise InputError(f"the folder {target.parent} does not exist; create it or choose another path",
                         setting="plot", value=str(target))
    require_matplotlib()
    return target


def save_bench_plot(result, path: str | Path) -> Path:
    """A PNG with the tokens each decoder layer processed per profile, and each profile's timing breakdown.

    result: a framefusion.apps.bench.BenchResult.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot

    figure, (tokens_axis, time_axis) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for run in result.results:
        tokens_axis.step(range(len(run.tokens.per_layer)), run.tokens.per_layer, where="mid",
                         label=f"{run.profile} (cost {run.tokens.cost:.2f})")
    tokens_axis.set_xlabel("decoder layer")
    tokens_axis.set_ylabel("tokens")
    tokens_axis.set_ylim(bottom=0)
    tokens_axis.set_title("Tokens per layer")
    tokens_axis.legend()

    parts = [name for name in TIMING_FIELDS if name != "total"]  # stacked, they add up to the total
    names = [run.profile for run in result.results]
    bottoms = [0.0] * len(names)
    for part in parts:
        values = [getattr(run.timings, part) for run in result.results]
        time_axis.bar(names, values, bottom=bottoms, label=part.replace("_", " "))
        bottoms = [bottom + value for bottom, value in zip(bottoms, values)]
    time_axis.set_ylabel("seconds (median)")
    time_axis.set_title(f"Time · {result.machine.get('gpu') or result.machine.get('cpu')}")
    time_axis.legend()
    figure.suptitle(f"{result.model} · {result.reference.tokens.frames} frames")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    pyplot.close(figure)
    return target
