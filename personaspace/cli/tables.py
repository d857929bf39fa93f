"""Terminal output shared by the CLI commands: summary tables (rich). Progress bars have one home for the
CLI and the API: :mod:`personaspace._util.progress`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from personaspace._util.progress import Progress


def progress_bars(console: Any) -> Progress:
    """A command's progress display (the API's, :mod:`personaspace._util.progress`): bars on stderr when it
    is a terminal (``PERSONASPACE_PROGRESS=0/1`` forces them off/on); the lines it carries (e.g.
    "resuming ...") go to ``console`` when there are no bars."""
    return Progress(echo=lambda line: console.print(line, markup=False, highlight=False))


def fit_table(title: str | None = None, columns: Sequence[str] = (), *, keep: Sequence[str] = (), **options: Any) -> Table:
    """A table that fits an 80-column terminal without cutting anything off.

    The columns named in ``keep`` (what the user types back: model, trait, question and backend names,
    layer labels) are never wrapped or shortened; every other column wraps at spaces and folds a word
    longer than its width onto the next line rather than ending it with an ellipsis.
    """
    unknown = set(keep) - set(columns)
    if unknown:
        raise ValueError(f"keep names columns the table does not have: {sorted(unknown)}")
    table = Table(title=title, **options)
    for name in columns:
        table.add_column(name, no_wrap=name in keep, overflow="fold")
    return table


def markdown_blocks(text: str) -> list[Any]:
    """A markdown report (``compare.md``, ``results.md``) for the terminal: its pipe tables as tables that fit
    (the first column, the row names, kept whole), every other paragraph as plain text."""
    from rich.text import Text

    blocks: list[Any] = []
    for is_table, group in itertools.groupby(text.strip().splitlines(), key=lambda line: line.strip().startswith("|")):
        lines = list(group)
        if not is_table or len(lines) < 2:
            prose = "\n".join(lines).strip("\n")
            if prose:
                blocks.append(Text(prose))
            continue
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
        head, rows = cells[0], [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
        table = fit_table(None, head, keep=head[:1])
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        blocks.append(table)
    return blocks


def markdown_tables(text: str) -> list[Table]:
    """Only the tables of :func:`markdown_blocks`."""
    return [b for b in markdown_blocks(text) if isinstance(b, Table)]


def sparkline(values: list[float]) -> str:
    """Unicode sparkline of a per-layer curve."""
    bars = "▁▂▃▄▅▆▇█"
    finite = [v for v in values if v == v]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(bars[min(7, int((v - lo) / span * 7.999))] if v == v else " " for v in values)


def extraction_table(summary: dict) -> Table:
    """Kept/dropped counts, scores, per-layer norms and held-out separation of one extraction."""
    t = fit_table(f"{summary['trait']} on {summary['model']}  (judge: {summary['judge']})", ("", "value"))
    dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
    t.add_row("pairs kept", f"{summary['kept']} of {summary['pairs']}  (dropped: {dropped})")
    if summary.get("unscored"):
        t.add_row("unscored", f"{summary['unscored']} answers (judge errors): rerun the same command to retry them")
    th = summary["thresholds"]
    t.add_row("thresholds", f"pos >= {th['pos_trait_min']}, neg < {th['neg_trait_below']}, coherence >= {th['coherence_min']}")
    for side, scores in summary["mean_scores"].items():
        t.add_row(f"mean {side} scores", f"trait {scores['trait']}, coherence {scores['coherence']}")
    head = summary.get("headline")
    if head:  # the unconfounded number first: answers alone, other instructions and questions
        if head.get("auroc") is None:
            t.add_row("answer-only", f"no held-out AUROC ({head.get('reason', 'too few kept pairs')})")
        else:
            per_layer = summary["separation_answer_only"]["response_avg"]["per_layer"]
            t.add_row(
                "answer-only AUROC",
                f"{head['auroc']:.3f} [{head['ci95'][0]:.3f}, {head['ci95'][1]:.3f}] at layer {head['layer']}, "
                f"n={head['n_pairs']} pairs; best {head['best']:.3f} at layer {head['best_layer']}  {sparkline(per_layer)}  "
                f"(answers re-read without system prompt; instruction pairs and questions held out)",
            )
    for position, sep in summary.get("separation_heldout_instructions", {}).items():
        if sep.get("best") is not None:
            t.add_row(f"{position}", f"AUROC best {sep['best']:.3f} at layer {sep['best_layer']} "
                      f"(instruction pairs and questions held out)  {sparkline(sep['per_layer'])}")
    for position, sep in summary["separation"].items():
        label = f"{position} (shared instr.)" if head else position
        if sep["best"] is None:
            t.add_row(label, "too few kept pairs for a held-out AUROC")
            continue
        t.add_row(
            label,
            f"AUROC best {sep['best']:.3f} at layer {sep['best_layer']} ({sep['folds']}-fold by question; every fold "
            f"shares the contrast instructions)  {sparkline(sep['per_layer'])}",
        )
    every = summary.get("separation_all_pairs", {}).get("response_avg")
    if every and every["best"] is not None:
        t.add_row(
            "all pairs",
            f"held-out AUROC best {every['best']:.3f} at layer {every['best_layer']} (response_avg, every pair, no judge filter)  "
            f"{sparkline(every['per_layer'])}",
        )
    norms = summary["norms"].get("response_avg", [])
    if norms:
        t.add_row("norm by layer", f"{sparkline(norms)}  ({norms[0]:.2f} .. {norms[-1]:.2f})")
    return t
