"""Figures of the emergent-misalignment experiment, drawn from the results dictionary of
:func:`personaspace.em.experiment.run_em_experiment` (or its ``results.json``).

``figures/em_rates.html``: EM rate by condition under both conventions, with bootstrap 95 % intervals;
``figures/trait_cosines.html``: per-trait cosine between the aligned and the corrupted model's vectors.
Both open offline: they load the ``plotly.min.js`` written once beside them (:mod:`personaspace.viz.html`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personaspace.viz.plots import _go, _layout, trait_cosine_bars, write_figure

__all__ = ["em_rate_bars", "corrupt_trait_cosine_bars", "write_em_figures"]

CONVENTIONS = ("betley", "model_organisms")
CONVENTION_COLORS = {"betley": "#4c72b0", "model_organisms": "#dd8452"}


def em_rate_bars(results: Mapping[str, Any]):
    """EM rate per condition, one bar group per convention, with the bootstrap 95 % interval as error bars."""
    go = _go()
    fig = go.Figure()
    for conv in CONVENTIONS:
        xs = [row["condition"] for row in results["em"]]
        ys = [row[conv]["rate"] for row in results["em"]]
        lo = [row[conv]["rate"] - row[conv]["ci95"][0] for row in results["em"]]
        hi = [row[conv]["ci95"][1] - row[conv]["rate"] for row in results["em"]]
        fig.add_bar(x=xs, y=ys, name=conv, error_y=dict(type="data", array=hi, arrayminus=lo, color="#333333"),
                    marker_color=CONVENTION_COLORS[conv])
    fig.update_xaxes(tickangle=-30)
    fig.update_yaxes(title="EM rate (95 % CI)", rangemode="tozero")
    return _layout(fig, f"EM rate by condition (judge {results['judge']})", height=520, barmode="group",
                   legend=dict(title="convention", orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
                   margin=dict(t=110))


def _corrupt_labels(results: Mapping[str, Any]) -> tuple[str, str]:
    model = str(results.get("model") or "model")
    return f"{model} (aligned)", "after the corrupt fine-tune"


def corrupt_trait_cosine_bars(results: Mapping[str, Any]):
    """Per-trait cosine between the aligned and the corrupted model's vectors (the two sides named so),
    or None when the results have no per-trait cosines (no geometry, or sets of different widths)."""
    corrupt = results.get("geometry", {}).get("corrupt")
    if not corrupt or not corrupt.get("per_trait"):
        return None
    corrupt = {"layer_a": results.get("layer"), "layer_b": results.get("layer"), **corrupt}
    return trait_cosine_bars(corrupt, labels=_corrupt_labels(results))


def write_em_figures(results: Mapping[str, Any], run_dir: str | os.PathLike, *, png: bool | None = False) -> list[Path]:
    """Write ``figures/em_rates.html`` and, when the sets had per-trait cosines, ``figures/trait_cosines.html``
    (with ``figures/plotly.min.js`` beside them; ``png`` as in :func:`~personaspace.viz.plots.write_figure`).

    Returns the figure files written (none when plotly is not installed).
    """
    try:
        _go()
    except ImportError:  # plotly is a dependency; stay usable without it
        return []
    figdir = Path(run_dir).expanduser() / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    written = write_figure(em_rate_bars(results), figdir / "em_rates.html", png=png)  # plotly.min.js beside
    fig = corrupt_trait_cosine_bars(results)  # None when the sets share no trait
    if fig is not None:
        written += write_figure(fig, figdir / "trait_cosines.html", png=png)
    return written
