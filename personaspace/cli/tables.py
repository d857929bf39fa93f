"""Terminal output shared by the CLI commands: progress bars and summary tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class ExtractionProgress:
    """One bar per pipeline stage, driven by ``update(stage, done, total)`` callbacks."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ExtractionProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        """A one-line note above the bars (e.g. "resuming ...: 3 of 4 batches done, 120 of 160 answers judged")."""
        self.progress.console.print(message, markup=False, highlight=False)

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))


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
    t = Table(title=f"{summary['trait']} on {summary['model']}  (judge: {summary['judge']})", show_lines=False)
    t.add_column("")
    t.add_column("value")
    dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
    t.add_row("pairs kept", f"{summary['kept']} of {summary['pairs']}  (dropped: {dropped})")
    if summary.get("unscored"):
        t.add_row("unscored", f"{summary['unscored']} answers (judge errors): rerun the same command to retry them")
    th = summary["thresholds"]
    t.add_row("thresholds", f"pos >= {th['pos_trait_min']}, neg < {th['neg_trait_below']}, coherence >= {th['coherence_min']}")
    for side, scores in summary["mean_scores"].items():
        t.add_row(f"mean {side} scores", f"trait {scores['trait']}, coherence {scores['coherence']}")
    for position, sep in summary["separation"].items():
        if sep["best"] is None:
            t.add_row(f"{position}", "too few kept pairs for a held-out AUROC")
            continue
        t.add_row(
            f"{position}",
            f"held-out AUROC best {sep['best']:.3f} at layer {sep['best_layer']} ({sep['folds']}-fold by question)  "
            f"{sparkline(sep['per_layer'])}",
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
