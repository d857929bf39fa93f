"""Figures of the emergent-misalignment experiment, drawn from the results dictionary of
:func:`personaspace.em.experiment.run_em_experiment` (or its ``results.json``).

``figures/em_rates.html``: EM rate by condition under both conventions, with bootstrap 95 % intervals;
``figures/trait_cosines.html``: per-trait cosine between the aligned and the corrupted model's vectors.
Both embed plotly.js and open offline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personaspace.errors import PersonaspaceError
from personaspace.viz.plots import _go, trait_cosine_bars, write_figure

__all__ = ["em_rate_bars", "write_em_figures"]

CONVENTIONS = ("betley", "model_organisms")


def em_rate_bars(results: Mapping[str, Any]):
    """EM rate per condition, one bar group per convention, with the bootstrap 95 % interval as error bars."""
    go = _go()
    fig = go.Figure()
    for conv in CONVENTIONS:
        xs = [row["condition"] for row in results["em"]]
        ys = [row[conv]["rate"] for row in results["em"]]
        lo = [row[conv]["rate"] - row[conv]["ci95"][0] for row in results["em"]]
        hi = [row[conv]["ci95"][1] - row[conv]["rate"] for row in results["em"]]
        fig.add_bar(x=xs, y=ys, name=conv, error_y=dict(type="data", array=hi, arrayminus=lo))
    fig.update_layout(title=f"EM rate by condition (judge {results['judge']})", yaxis_title="EM rate", barmode="group")
    return fig


def write_em_figures(results: Mapping[str, Any], run_dir: str | os.PathLike) -> list[Path]:
    """Write ``figures/em_rates.html`` and, when the sets had per-trait cosines, ``figures/trait_cosines.html``.

    Returns the files written (none when plotly is not installed).
    """
    try:
        _go()
    except ImportError:  # plotly is a dependency; stay usable without it
        return []
    figdir = Path(run_dir).expanduser() / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    written = write_figure(em_rate_bars(results), figdir / "em_rates.html", png=False)  # plotly.js embedded
    corrupt = results.get("geometry", {}).get("corrupt")
    if corrupt:
        try:
            written += write_figure(trait_cosine_bars(corrupt), figdir / "trait_cosines.html", png=False)
        except PersonaspaceError:  # sets of different widths have no per-trait cosines; the table has the numbers
            pass
    return written
