"""Redraw the shipped figures from the shipped results, as offline HTML and PNG snapshots (1200 px wide).

    .venv/bin/python scripts/figure_snapshots.py [--sweep RUN_DIR]

* ``docs/results/figures/cross_model.{html,png}`` from ``docs/results/cross_model.json`` (written by
  ``scripts/cross_model_report.py``, which recomputes the numbers; this script only redraws them);
* ``docs/results/em/figures/{em_rates,trait_cosines}.{html,png}`` from ``docs/results/em/results.json``
  (what ``personaspace experiment em`` draws, through ``personaspace.viz.em.write_em_figures``); the
  per-trait cosines come from ``docs/results/em/full_run/results.json`` when the first has no geometry;
* with ``--sweep RUN_DIR`` (a ``personaspace sweep`` run directory): ``docs/results/figures/sweep_heatmap.{html,png}``.

The persona-space PNGs (``docs/results/figures/persona_space_*.png``) come with their page from
``scripts/persona_space_report.py``. Every HTML file loads the ``plotly.min.js`` written once beside it and
opens offline. PNGs need headless Chromium (``apt-get install -y chromium``) or kaleido.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from personaspace.steering.search import SweepConfig, SweepResult  # noqa: E402
from personaspace.viz import plots  # noqa: E402
from personaspace.viz.em import corrupt_trait_cosine_bars, write_em_figures  # noqa: E402
from personaspace.viz.steering import sweep_figure  # noqa: E402


def load_sweep(run_dir: Path) -> SweepResult:
    d = json.loads((run_dir / "sweep.json").read_text())
    d = d.get("result", d)
    return SweepResult(config=SweepConfig(**d["config"]), model=d["model"], judge=d["judge"], vector=d["vector"],
                       baseline=d["baseline"], cells=d["cells"], recommendation=d["recommendation"],
                       control=d.get("control"), run_dir=run_dir)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, default=None, help="a personaspace sweep run directory to snapshot")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    args = ap.parse_args()
    started = time.time()
    figs = args.results / "figures"
    written: list[Path] = []
    cross = json.loads((args.results / "cross_model.json").read_text())
    written += plots.write_figure(plots.cross_model_figure(cross["comparison"], cross["rsa_by_layer"]), figs / "cross_model", png=True)
    em = json.loads((args.results / "em" / "results.json").read_text())
    written += write_em_figures(em, args.results / "em", png=True)
    full = args.results / "em" / "full_run" / "results.json"  # the end-to-end run, with the geometry stage
    if not em.get("geometry") and full.is_file():
        fig = corrupt_trait_cosine_bars(json.loads(full.read_text()))
        if fig is not None:
            written += plots.write_figure(fig, args.results / "em" / "figures" / "trait_cosines", png=True)
    if args.sweep is not None:
        written += plots.write_figure(sweep_figure(load_sweep(args.sweep)), figs / "sweep_heatmap", png=True)
    for path in written:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"{len(written)} files in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
