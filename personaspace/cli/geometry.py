"""``personaspace geometry VECTORS [VECTORS2]``: persona-space geometry, the SVV, and cross-set comparison.

:func:`geometry_report` does the work (also used by ``scripts/persona_space_report.py``): it
measures, writes ``geometry.json`` and the figures, and returns the numbers; the command prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from personaspace._util import stats as st
from personaspace.engine.layers import default_layer
from personaspace.vectors.store import VectorSet


def _round(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return round(x, nd) if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, nd) for v in x]
    if isinstance(x, np.floating):
        return _round(float(x), nd)
    return x


def single_set_report(vectors: VectorSet, layer: int, *, n_boot: int = 200, n_null: int = 200, seed: int = 0) -> dict[str, Any]:
    """Geometry of one set at ``layer``: cosines (raw, centred), the common component, PCA, valence, clusters.

    Every statistic carries a random-direction null (``n_null`` random sets of the same norms) and,
    when the extraction runs are on disk, a bootstrap CI over kept pairs (``n_boot`` replicates).
    """
    from personaspace.geometry import space as g
    traits = vectors.traits
    raw = g.cosine_matrix(vectors, layer)
    cen = g.cosine_matrix(vectors, layer, center=True)
    x = g.trait_matrix(vectors, layer)
    mean_unit = x.mean(0)

    def stats(vs: VectorSet) -> dict[str, float]:
        xm = g.trait_matrix(vs, layer)
        evr = g._pca_arrays(xm)[0]
        return {
            "mean_abs_cos_raw": g._mean_abs_offdiag(g._cosines(xm)),
            "mean_abs_cos_centered": g._mean_abs_offdiag(g._cosines(xm - xm.mean(0))),
            "common_component_norm": float(np.linalg.norm(xm.mean(0))),
            "pc1_explained": float(evr[0]),
        }

    observed = stats(vectors)
    nulls = [stats(g.random_set(vectors, seed=seed + 1000 + i)) for i in range(n_null)]
    summary = {k: {"value": v, "null_random": st.null_summary(v, [n[k] for n in nulls])} for k, v in observed.items()}

    report: dict[str, Any] = {
        "model": vectors.model,
        "layer": raw.layer,
        "traits": traits,
        "n_traits": len(traits),
        "d_model": vectors.d_model,
        "position": vectors.positions,
        "similarity_raw": raw.to_dict(),
        "similarity_centered": cen.to_dict(),
        "summary": summary,
        "cos_with_mean_trait": {t: float(np.dot(x[i], mean_unit) / max(np.linalg.norm(mean_unit), 1e-12)) for i, t in enumerate(traits)},
    }
    if len(traits) >= 3:
        pca = g.pca(vectors, layer)
        report["pca"] = pca.to_dict()
        report["clusters"] = g.cluster(vectors, layer, n_clusters=2).to_dict()
    labels = g.valence_labels(traits)
    have_valence = sum(v > 0 for v in labels.values()) >= 2 and sum(v < 0 for v in labels.values()) >= 2
    if have_valence:
        report["valence_separation_pc1"] = g.valence_separation(vectors, layer, seed=seed)
    if n_boot > 0:
        boot = g.bootstrap(vectors, n_boot, [layer], seed=seed)
        report["bootstrap"] = boot.info()
        if len(boot.fixed) < len(traits):
            # Basic intervals, as in compare: resampled vectors are noisier, so replicates run biased.
            reps = [stats(s) for s in boot]
            bounds = {"common_component_norm": (0.0, np.inf)}
            for k in summary:
                values = [r[k] for r in reps]
                summary[k].update(st.bootstrap_intervals(values, summary[k]["value"], bounds=bounds.get(k, (0.0, 1.0))))
                summary[k]["boot_mean"] = float(np.mean(values))
            mats = np.stack([g.cosine_matrix(s, layer).values for s in boot])
            lo, hi = np.quantile(mats, 0.025, axis=0), np.quantile(mats, 0.975, axis=0)
            report["similarity_raw"]["ci95_low"] = np.round(np.clip(2 * raw.values - hi, -1, 1), 4).tolist()
            report["similarity_raw"]["ci95_high"] = np.round(np.clip(2 * raw.values - lo, -1, 1), 4).tolist()
            if have_valence:
                names = list(labels)
                y = np.array([labels[t] for t in names])
                aucs = [g._separation_stat(g._pca_arrays(g.trait_matrix(s, layer, names))[2][:, 0], y) for s in boot]
                sep = report["valence_separation_pc1"]
                sep.update(st.bootstrap_intervals(aucs, sep["auroc"], bounds=(0.5, 1.0)))  # sign-free AUROC
            report["bootstrap"]["interval"] = st.BOOTSTRAP_INTERVALS
    return report


def geometry_report(
    vectors: VectorSet,
    vectors_b: VectorSet | None = None,
    *,
    layer: int | None = None,
    layer_b: int | None = None,
    out: str | Path | None = None,
    n_boot: int = 200,
    n_null: int = 1000,
    png: bool | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure one persona space (and compare it with a second one); write JSON and figures to ``out``."""

    from personaspace._util import checks
    from personaspace._util.io import write_json
    from personaspace.geometry import comparison as cmp
    from personaspace.geometry import space as g
    from personaspace.geometry.valence import svv_report
    from personaspace.viz import plots
    if out is not None:
        checks.writable_dir(out)  # before the bootstrap, not when the figures are written
    checks.non_negative_int("n_boot", n_boot)  # 0 = no bootstrap
    checks.positive_int("n_null", n_null)
    layer = default_layer(vectors.layers) if layer is None else g._check_layer(vectors, layer)
    result: dict[str, Any] = {"a": single_set_report(vectors, layer, n_boot=n_boot, n_null=min(n_null, 200), seed=seed)}
    profile = g.layer_profile(vectors)
    result["a"]["layer_profile"] = profile
    svv = None
    try:
        svv = svv_report(vectors, layer, n_perm=min(n_null, 200), seed=seed)
        result["a"]["svv"] = svv.to_dict()
    except Exception as exc:  # too few labelled traits: report why instead of failing the whole run
        from personaspace.errors import PersonaspaceError

        if not isinstance(exc, PersonaspaceError):
            raise
        result["a"]["svv"] = {"skipped": exc.message}
    comparison = curve = None
    if vectors_b is not None:
        comparison = cmp.compare_spaces(vectors, vectors_b, layer, layer_b, n_null=n_null, n_boot=n_boot, seed=seed)
        curve = cmp.rsa_by_layer(vectors, vectors_b, n_null=min(n_null, 200), seed=seed)
        result["comparison"] = comparison.to_dict()
        result["rsa_by_layer"] = curve
    result = _round(result, 5)
    if out is not None:
        out = Path(out)
        figs: dict[str, Any] = {
            "similarity_raw": plots.similarity_heatmap(g.cosine_matrix(vectors, layer)),
            "similarity_centered": plots.similarity_heatmap(g.cosine_matrix(vectors, layer, center=True)),
            "layer_profile": plots.layer_profile_plot(profile, model=vectors.model),
        }
        if len(vectors) >= 3:
            p = g.pca(vectors, layer)
            figs["pca_valence"] = plots.pca_scatter(p, "valence")
            figs["pca_family"] = plots.pca_scatter(p, "family")
        if svv is not None:
            figs["svv"] = plots.svv_agreement_plot(svv)
            svv.save(out / "svv")
        if comparison is not None:
            labels = None  # two sets of one model: name them by their positions
            if vectors_b is not None and vectors.model == vectors_b.model:
                labels = tuple(f"{v.model} {'/'.join(v.positions)}" for v in (vectors, vectors_b))
            figs["compare_heatmaps"] = plots.comparison_heatmaps(comparison, labels=labels)
            if comparison.per_trait:
                figs["trait_cosines"] = plots.trait_cosine_bars(comparison, labels=labels)
            figs["rsa_by_layer"] = plots.rsa_by_layer_plot(curve, labels=labels)
            two_models = vectors_b is not None and (vectors.d_model != vectors_b.d_model or len(vectors.layers) != len(vectors_b.layers))
            if two_models and curve is not None:  # other width or depth: the side-by-side view by relative depth
                figs["cross_model"] = plots.cross_model_figure(comparison, curve, labels=labels)
        files: list[str] = []
        for name, fig in figs.items():
            files += [str(f) for f in plots.write_figure(fig, out / name, png=png)]
        result["files"] = files
        write_json(out / "geometry.json", result)
    return result


def _fmt_null(entry: dict[str, Any], key: str = "null_random") -> str:
    n = entry.get(key)
    if not n:
        return ""
    return f"{n['mean']:.3f} [{n['q025']:.3f}, {n['q975']:.3f}] p={n['p']:.3g}"


def _fmt_ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci95")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "-"


def print_report(result: dict[str, Any], console: Any) -> None:
    """Print the key numbers of :func:`geometry_report` as rich tables."""
    from personaspace.cli.tables import fit_table

    a = result["a"]
    t = fit_table(f"{a['model']}: persona space at layer {a['layer']} ({a['n_traits']} traits, unit-norm rows)",
                  ("statistic", "value", "95% CI (bootstrap)", "random-direction null: mean [95%] p"), keep=("statistic",))
    for k, e in a["summary"].items():
        t.add_row(k, f"{e['value']:.3f}", _fmt_ci(e), _fmt_null(e))
    if "pca" in a:
        evr = a["pca"]["explained_variance_ratio"][:5]
        t.add_row("PCA explained (centred), PC1-5", ", ".join(f"{x:.3f}" for x in evr), "", "")
    vs = a.get("valence_separation_pc1")
    if vs:
        t.add_row(f"PC1 valence AUROC ({vs['n_positive']}+ / {vs['n_negative']}-)", f"{vs['auroc']:.3f}", _fmt_ci(vs),
                  f"label shuffle: {vs['null_mean']:.3f}, q95 {vs['null_q95']:.3f}, p={vs['p_perm']:.3g}")
    if "clusters" in a:
        t.add_row("2 clusters (centred cosine)", " | ".join(", ".join(gr) for gr in a["clusters"]["groups"]), "", "")
    console.print(t)
    boot = a.get("bootstrap")
    if boot:
        pairs = sorted(boot["pairs_per_trait"].values())
        line = (f"bootstrap: {boot['n_boot']} replicates over kept pairs ({pairs[0]}-{pairs[-1]} per trait)" if pairs
                else "bootstrap: no intervals")
        if boot["fixed_traits"]:
            line += (f"; no pair data at layer {a['layer']} for {', '.join(boot['fixed_traits'])} (held at their estimate: "
                     f"intervals too narrow); extraction runs or vectors saved with their pairs supply it")
        console.print(line)
    svv = a.get("svv", {})
    if "loto" in svv:
        s = fit_table(f"Semantic Valence Vector at layer {svv['layer']} (leave-one-trait-out valence sign)",
                      ("definition", "held-out correct", "95% CI (Wilson)", "label-shuffle null q95", "wrong"), keep=("definition",))
        for d, e in svv["loto"].items():
            s.add_row(d, f"{e['correct']}/{e['n']}", f"[{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]",
                      f"{e['null_q95']:.2f}" if e.get("null_q95") is not None else "-", ", ".join(e["wrong"]) or "-")
        console.print(s)
        console.print("SVV agreement (cosine): " + ", ".join(f"{k} {v:.3f}" for k, v in svv["agreement"].items()))
    elif svv:
        console.print(f"SVV skipped: {svv.get('skipped')}")
    c = result.get("comparison")
    if c:
        t2 = fit_table(f"{c['model_a']} (L{c['layer_a']}) vs {c['model_b']} (L{c['layer_b']}), {len(c['traits'])} shared traits",
                       ("metric", "value", "95% CI", "permuted-trait null", "random null"), keep=("metric",))
        for k, e in c["metrics"].items():
            t2.add_row(k, f"{e['value']:.3f}", _fmt_ci(e), _fmt_null(e, "null_permuted"), _fmt_null(e, "null_random"))
        console.print(t2)
        if c["per_trait"]:
            console.print("per-trait cosine: " + ", ".join(f"{t} {e['cosine']:.2f}" for t, e in c["per_trait"].items()))
    curve = result.get("rsa_by_layer")
    rsa_curve = np.array(curve["rsa_pearson"] if curve else [], dtype=float)  # None (rounded NaN) -> nan
    if curve and np.isfinite(rsa_curve).any():
        i = int(np.nanargmax(rsa_curve))
        console.print(f"RSA (Pearson) by layer, matched by relative depth: highest {curve['rsa_pearson'][i]:.3f} at "
                      f"{curve['model_a']} L{curve['layers_a'][i]} / {curve['model_b']} L{curve['layers_b'][i]} "
                      f"(permuted-trait null q95 there {curve['null_q95'][i]:.3f})")
    if result.get("files"):
        console.print(f"wrote {len(result['files'])} files, e.g. {result['files'][0]}")


def register(app: typer.Typer) -> None:
    @app.command("geometry")
    def geometry_cmd(
        vectors: str = typer.Argument(..., help="Vector directory, file, or model name (e.g. smollm2-135m-instruct)."),
        vectors2: Optional[str] = typer.Argument(None, help="A second set to compare with (another model or run)."),
        layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer of the first set (default: middle). Layer L = output of block L."),
        layer_b: Optional[int] = typer.Option(None, "--layer-b", help="Layer of the second set (default: same relative depth)."),
        position: str = typer.Option("response_avg", help="Position reduction of the vectors to load."),
        out: Optional[str] = typer.Option(None, help="Output directory for geometry.json and figures (default runs/geometry/<model>)."),
        n_boot: int = typer.Option(200, help="Bootstrap replicates over kept pairs (0 = none; needs the extraction runs)."),
        n_null: int = typer.Option(1000, help="Null-model draws (permutations / random sets)."),
        png: Optional[bool] = typer.Option(None, "--png/--no-png", help="Also write PNGs (default: when an exporter is available)."),
        seed: int = typer.Option(0, help="Seed of bootstrap and null draws."),
    ) -> None:
        """Persona-space geometry: cosines, PCA, clusters, valence separation, SVV; with a second set, RSA/CKA/Procrustes.

        The second set may come from another model (other width, other layer count): its layer is matched
        by relative depth, e.g. ``personaspace geometry smollm2-135m-instruct gemma3-270m``.
        """
        from rich.console import Console

        from personaspace._util import checks
        from personaspace.vectors.store import load_vectors

        console = Console()
        checks.non_negative_int("--n-boot", n_boot)
        checks.positive_int("--n-null", n_null)
        a = load_vectors(vectors, position)
        b = load_vectors(vectors2, position) if vectors2 else None
        target = Path(out) if out else Path("runs") / "geometry" / (
            a.model.replace("/", "--") + (f"--vs--{b.model.replace('/', '--')}" if b is not None else ""))
        with console.status("Measuring the persona space (bootstrap and nulls)..."):
            result = geometry_report(a, b, layer=layer, layer_b=layer_b, out=target, n_boot=n_boot, n_null=n_null, png=png, seed=seed)
        print_report(result, console)
        console.print(f"output: [bold]{target}[/bold]")
