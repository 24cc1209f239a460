"""Rendering of results for people: rich tables. No computing happens here."""

from __future__ import annotations

from typing import Sequence

from rich.columns import Columns
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from framefusion.pipeline.results import TIMING_FIELDS, AskResult

_BARS = " ▁▂▃▄▅▆▇█"
# Headings for the timing fields whose Python names a reader should not see as they are.
_TIMING_HEADINGS = {"decode_video": "decode", "prefill": "LLM prefill", "generate": "generation", "load": "load*"}
# Why frame dedup did not encode the other frames, by its test (TokenReport.frame_dedup).
_REUSED_BECAUSE = {"exact": "repeat the last encoded frame", "noise-aware": "within noise of the last encoded frame"}


def token_table(result: AskResult) -> Table:
    tokens = result.tokens
    table = Table(title=f"Tokens · {result.profile}", title_justify="left", show_edge=False)
    table.add_column("stage")
    table.add_column("layer", justify="right")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("frames sampled", "", "", f"{tokens.frames}")
    encoded = tokens.frames if tokens.frames_encoded is None else tokens.frames_encoded
    reason = _REUSED_BECAUSE.get(tokens.frame_dedup) if encoded < tokens.frames else None
    table.add_row(f"frames encoded ({tokens.frames - encoded} {reason})" if reason else "frames encoded", "",
                  f"{tokens.frames}", f"{encoded}")
    if tokens.frames_merged is not None:
        table.add_row("frames merged in the vision encoder", "", f"{encoded}", f"{tokens.frames_merged}")
    table.add_row("visual tokens", "", "", f"{tokens.visual:,}")
    table.add_row("prompt tokens", "", "", f"{tokens.prompt:,}")
    # Stages before the LLM (layer None) come first in the runtime's record, then each merge/prune at its layer.
    for stage in tokens.stages:
        layer = "" if stage.layer is None else str(stage.layer)
        table.add_row(stage.name, layer, f"{stage.before:,}", f"{stage.after:,}")
    table.add_row(Text("final", style="bold"), "", "", Text(f"{tokens.final:,}", style="bold"))
    # A requested cost is FrameFusion's budget: profiles without its stage request none.
    requested = f" (requested {tokens.requested_cost:g})" if result.settings.get("method", "none") != "none" else ""
    table.caption = f"cost {tokens.cost:.3f} achieved{requested}; {tokens.prompt - tokens.final:,} tokens removed"
    for stage in result.settings.get("stages", []):
        if "signals" in stage:
            table.caption += f"; {stage['kind']}'s {stage['signals']} (docs/methods.md)"
    return table


def per_layer_view(per_layer: Sequence[int], prompt: int) -> Text:
    """One bar per decoder layer: the tokens its attention saw, relative to the prompt."""
    if not per_layer:
        return Text("")
    bars = "".join(_BARS[max(1, round(count / max(prompt, 1) * (len(_BARS) - 1)))] for count in per_layer)
    return Text.assemble(("tokens per layer ", "dim"), (bars, "cyan"),
                         (f"  {per_layer[0]:,} → {per_layer[-1]:,} over {len(per_layer)} layers", "dim"))


def timing_table(result: AskResult) -> Table:
    timings = result.timings
    table = Table(title="Time (s)", title_justify="left", show_edge=False)
    for name in TIMING_FIELDS:
        table.add_column(_TIMING_HEADINGS.get(name, name), justify="right")
    table.add_row(*(f"{getattr(timings, name):.3f}" for name in TIMING_FIELDS))
    table.caption = f"{result.new_tokens} new tokens; * loading the model, once, not in the total"
    if result.cache == "hit":
        table.caption += "; decode and vision 0: the video's features came from the feature cache"
    return table


def result_panel(result: AskResult, show_answer: bool = True) -> Group:
    parts = []
    if show_answer:
        parts.append(Panel(result.answer or "(empty answer)", title=f"{result.profile}", title_align="left"))
    parts += [token_table(result), per_layer_view(result.tokens.per_layer, result.tokens.prompt),
              timing_table(result)]
    return Group(*parts)


def render_results(console: Console, results: Sequence[AskResult], answers_streamed: bool) -> None:
    for result in results:
        if len(results) > 1 and not answers_streamed:
            console.print(Text(f"Q: {result.question}", style="bold"))
        console.print(result_panel(result, show_answer=not answers_streamed))
        console.print()


def render_comparison(console: Console, first: Sequence[AskResult], second: Sequence[AskResult]) -> None:
    """Each question's two results side by side (stacked when the terminal is too narrow), then one summary line."""
    for index, (left, right) in enumerate(zip(first, second)):
        console.print(Text(f"Q{index + 1}: {left.question}" if len(first) > 1 else f"Q: {left.question}",
                           style="bold"))
        console.print(Columns([result_panel(left), result_panel(right)], equal=True, expand=True))
        console.print(comparison_summary(left, right), highlight=False)
        console.print()


def comparison_summary(result: AskResult, other: AskResult) -> Text:
    """`framefusion vs baseline: final tokens 370 vs 1,624 (0.23x); prefill 4.10x, total 1.26x faster`."""

    def faster(mine: float, theirs: float) -> str:
        return f"{theirs / mine:.2f}x" if mine > 0 else "—"

    tokens = result.tokens.final / max(other.tokens.final, 1)
    return Text.assemble(
        (f"{result.profile} vs {other.profile}: ", "bold"),
        f"final tokens {result.tokens.final:,} vs {other.tokens.final:,} ({tokens:.2f}x); ",
        f"prefill {faster(result.timings.prefill, other.timings.prefill)}, "
        f"total {faster(result.timings.total, other.timings.total)} faster")


def chat_turn_table(turn) -> Table:
    """The tokens and time of one chat turn (framefusion.apps.chat.ChatTurn)."""
    tokens, timings = turn.tokens, turn.timings
    table = Table(title=f"Turn {turn.turn}", title_justify="left", show_edge=False)
    # Two-line headings: the table reads at 80 columns.
    for name in ("conversation\ntokens", "prefilled\nnow", "cached\nlayer 0", "cached\nlast", "prefill\n(s)",
                 "generation\n(s)", "total\n(s)"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row(f"{tokens['prompt']:,}", f"{tokens['prefill']:,}", f"{tokens['cached_first_layer']:,}",
                  f"{tokens['cached_last_layer']:,}", f"{timings.prefill:.3f}", f"{timings.generate:.3f}",
                  f"{timings.total:.3f}")
    return table
