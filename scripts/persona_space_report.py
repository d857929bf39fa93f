"""Write docs/results/persona_space.md: the persona-space geometry of a model's precomputed vectors.

    .venv/bin/python scripts/persona_space_report.py [VECTORS] [--layer L] [--n-boot 500] [--n-null 1000]

Numbers, CIs and nulls come from ``personaspace.cli.geometry.geometry_report``; the interactive
HTML figures go to ``runs/persona_space/`` (with the ``plotly.min.js`` they load written once beside
them), PNG copies (headless Chromium or kaleido, 1200 px wide) to ``docs/results/figures/`` for the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from personaspace._util.io import write_text  # noqa: E402
from personaspace.cli.geometry import geometry_report  # noqa: E402
from personaspace.engine.layers import default_layer  # noqa: E402
from personaspace.geometry.space import _library_valence  # noqa: E402
from personaspace.vectors.store import load_vectors  # noqa: E402


def _answer_only(extra: dict) -> str:
    a = extra.get("answer_only_auroc")
    if not a:
        return "-"
    return f"{a['auroc']} [{a['ci95'][0]}, {a['ci95'][1]}] (L{a['layer']})"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ci(e: dict) -> str:
    c = e.get("ci95")
    return f"[{c[0]:.3f}, {c[1]:.3f}]" if c and c[0] is not None else "n/a"


def null(e: dict, key: str) -> str:
    n = e.get(key)
    return f"{n['mean']:.3f} (95%: {n['q025']:.3f} to {n['q975']:.3f}), p = {n['p']:.3g}" if n else "n/a"


def matrix_table(sim: dict) -> str:
    traits = sim["traits"]
    short = [t[:6] for t in traits]
    rows = [[f"**{t}**"] + [f"{v:+.2f}" for v in row] for t, row in zip(traits, sim["values"])]
    return table([""] + short, rows)


def _reading(a: dict, comp: dict | None) -> list[str]:
    """The page's conclusions, phrased from the numbers (so a rerun cannot leave stale claims)."""
    out = ["## Honest reading", ""]
    sep = a.get("valence_separation_pc1")
    if sep:
        out.append(f"- **Valence on PC1.** In-sample, PC1 orders the traits by valence better than chance (sign-free AUROC "
                   f"{sep['auroc']:.2f}, label-shuffle p = {sep['p_perm']:.3g}), driven by the clearest traits at each end "
                   f"(see the coordinate table); several traits sit near 0.")
    svv = a.get("svv", {})
    if "loto" in svv:
        parts = []
        for d, e in svv["loto"].items():
            parts.append(f"{d} {e['correct']}/{e['n']} (95% CI {e['ci95'][0]:.2f}-{e['ci95'][1]:.2f}, p = {e['p_perm']:.3g})")
        sig = any(e["p_perm"] < 0.05 for e in svv["loto"].values())
        out.append("- **Held-out valence sign.** Leaving each trait out: " + "; ".join(parts) + ". "
                   + ("At least one definition beats the label-shuffle null at p < 0.05." if sig else
                      "No definition beats the label-shuffle null at p < 0.05: with 16 traits, the evidence that an SVV "
                      "generalises to an unseen trait is weak on these vectors."))
        ag = svv["agreement"]
        out.append("- **SVV definitions agree only partly**: " + ", ".join(f"{k} {v:.2f}" for k, v in ag.items()) +
                   ". The contrast and probe directions are close (a regularised probe leans towards the class-mean "
                   "difference); PC1 is the direction of largest spread, which valence explains only in part.")
    s = a["summary"]
    out.append(f"- **Shared component.** The mean unit trait vector has norm {s['common_component_norm']['value']:.2f} "
               f"(random directions: {s['common_component_norm']['null_random']['mean']:.2f}); mean |cos| drops from "
               f"{s['mean_abs_cos_raw']['value']:.2f} raw to {s['mean_abs_cos_centered']['value']:.2f} centred, and "
               f"centring changes which pairs look alike (compare the two matrices).")
    if comp:
        m = comp["metrics"]
        out.append(f"- **Two runs.** RSA {m['rsa_pearson']['value']:.2f} is far above the permuted-trait null "
                   f"(95th pct. {m['rsa_pearson']['null_permuted']['q975']:.2f}). Linear CKA "
                   f"({m['cka_linear']['value']:.2f}) and Procrustes disparity ({m['procrustes_disparity']['value']:.2f}) are "
                   f"uninformative against random directions here (random sets of 16 near-orthogonal vectors give CKA "
                   f"{m['cka_linear']['null_random']['mean']:.2f}): read them against the permuted-trait null.")
    out.append("- **Data quality.** The vectors come from the offline judge with 4-37 kept pairs per trait "
               "(hallucination: 4); every interval above is wide for that reason. More samples or a stronger judge "
               "would tighten them.")
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vectors", nargs="?", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--n-null", type=int, default=1000)
    ap.add_argument("--compare-position", default="prompt_avg", help="second set: same model, other position ('' = none)")
    ap.add_argument("--page", default=str(ROOT / "docs" / "results" / "persona_space.md"))
    args = ap.parse_args()

    started = time.time()
    vs = load_vectors(args.vectors)
    other = load_vectors(args.vectors, args.compare_position) if args.compare_position else None
    layer = default_layer(vs.layers) if args.layer is None else args.layer
    html_dir = ROOT / "runs" / "persona_space"
    res = geometry_report(vs, other, layer=layer, out=html_dir, n_boot=args.n_boot, n_null=args.n_null)
    fig_dir = Path(args.page).parent / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for f in res.get("files", []):
        if f.endswith(".png"):
            target = fig_dir / f"persona_space_{Path(f).name}"
            shutil.copyfile(f, target)
            pngs[Path(f).stem] = target.name
    a = res["a"]
    meta = {t: vs[t].meta for t in vs.traits}
    lines = [
        f"# Persona-space geometry of {vs.model}",
        "",
        f"Generated by `scripts/persona_space_report.py` in {time.time() - started:.0f} s "
        f"({args.n_boot} bootstrap replicates over kept pairs, {args.n_null} null draws). Vectors: `{args.vectors}`, "
        f"position `{vs.positions[0]}`, layer **{a['layer']}** (output of block {a['layer']}, the middle layer). "
        f"Every trait vector is scaled to unit norm before any geometry; PCA is on the **centred** persona space "
        f"(mean trait vector subtracted). Interactive HTML versions of the figures: `runs/persona_space/` "
        f"(rerun the script; they load the `plotly.min.js` beside them and open offline).",
        "",
        "## Inputs",
        "",
        table(["trait", "valence", "kept pairs", "dropped", "judge", "answer-only AUROC [95% CI] (layer)"],
              [[t, _library_valence(t) or "-", str(m.n_kept), str(m.n_dropped), str(m.judge), _answer_only(m.extra)]
               for t, m in meta.items()]),
        "",
        "Answer-only AUROC: the kept answers re-read without system prompt, projected on a vector built from other "
        "instruction pairs and questions ([extraction results](extraction_" + vs.model + ".md)).",
        "",
        "Kept-pair counts are small for several traits, so bootstrap intervals below are wide. Pairs are resampled "
        "with replacement; the intervals are basic (pivotal) bootstrap intervals, which correct for the bias that "
        "resampling itself adds (see below and `docs/geometry.md`).",
        "",
        "## Summary statistics",
        "",
        table(["statistic", "value", "bootstrap mean", "95% CI (basic)", "95% CI (percentile)", "random directions (same norms): mean (95%), p"],
              [[k, f"{e['value']:.3f}", f"{e['boot_mean']:.3f}" if "boot_mean" in e else "n/a", ci(e),
                ci({"ci95": e.get("ci95_percentile")}), null(e, "null_random")]
               for k, e in a["summary"].items()]),
        "",
        "Each replicate vector is the estimate plus extra resampling noise, which spreads the traits apart and "
        "lowers |cosines| and the PC1 share: the bootstrap mean sits below the estimate, and the percentile interval "
        "can exclude it. The basic interval reflects the replicates about the estimate (2 x estimate - quantiles), "
        "so it moves up by that bias: read it as the plausible range of the statistic with unlimited pairs. Both "
        "are shown; they differ exactly as much as resampling is biased.",
        "",
        "`common_component_norm` is the norm of the mean of the unit trait vectors: 0 if the traits share nothing, "
        "1 if they are identical. Raw cosines include this shared component; centred cosines remove it.",
        "",
        "## Cosine similarity (raw)",
        "",
        matrix_table(a["similarity_raw"]),
        "",
    ]
    if "similarity_raw" in pngs:
        lines += [f"![raw cosine similarity](figures/{pngs['similarity_raw']})", ""]
    lines += ["## Cosine similarity (centred: mean trait vector removed)", "", matrix_table(a["similarity_centered"]), ""]
    if "similarity_centered" in pngs:
        lines += [f"![centred cosine similarity](figures/{pngs['similarity_centered']})", ""]
    if "pca" in a:
        evr = a["pca"]["explained_variance_ratio"]
        lines += ["## PCA of the centred persona space", "",
                  "Explained variance ratio of the first five components: " + ", ".join(f"{x:.3f}" for x in evr[:5]) + ".", ""]
        for key in ("pca_valence", "pca_family"):
            if key in pngs:
                lines += [f"![{key}](figures/{pngs[key]})", ""]
    sep = a.get("valence_separation_pc1")
    if sep:
        verdict = "separate" if sep["p_perm"] < 0.05 else "do not separate significantly"
        lines += [
            "## Do positive and negative traits separate on PC1?", "",
            f"PC1 (fitted on the {sep['n_positive']} positive and {sep['n_negative']} negative traits) has sign-free "
            f"AUROC **{sep['auroc']:.3f}** (bootstrap 95% CI {ci(sep)}); shuffling the valence labels gives "
            f"{sep['null_mean']:.3f} on average (95th percentile {sep['null_q95']:.3f}), p = {sep['p_perm']:.3g}. "
            f"On this evidence the valence poles **{verdict}** on PC1 at layer {sep['layer']}.", "",
            table(["trait", "PC1 coordinate (signed: positive traits up)"],
                  [[t, f"{v:+.3f}"] for t, v in sorted(sep["coords"].items(), key=lambda kv: -kv[1])]),
            "",
        ]
    if "clusters" in a:
        lines += ["## Two clusters (average linkage, centred cosine distance)", "",
                  " / ".join(", ".join(gr) for gr in a["clusters"]["groups"]) + f" (silhouette {a['clusters']['silhouette']}).", ""]
    svv = a.get("svv", {})
    if "loto" in svv:
        lines += [
            "## The Semantic Valence Vector: three definitions", "",
            "contrast = mean(positive) - mean(negative) unit trait vectors; pc1 = PC1 of the centred space, signed so "
            "positive traits project up; probe = L2 logistic regression (C = %s) on unit trait vectors. Leave-one-"
            "trait-out: each definition is rebuilt without trait t, and t counts as correct when it falls on its own "
            "side of the midpoint between the class means (the probe uses its own threshold)." % svv["settings"]["probe_C"], "",
            "Agreement at layer %d (cosine): " % svv["layer"] + ", ".join(f"{k} **{v:.3f}**" for k, v in svv["agreement"].items()) + ".", "",
            table(["definition", "held-out correct", "95% CI (Wilson)", "label-shuffle null: mean, q95, p", "wrong"],
                  [[d, f"{e['correct']}/{e['n']}", f"[{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]",
                    f"{e['null_mean']:.2f}, {e['null_q95']:.2f}, p = {e['p_perm']:.3g}", ", ".join(e["wrong"]) or "-"]
                   for d, e in svv["loto"].items()]),
            "",
        ]
        if "svv" in pngs:
            lines += [f"![SVV agreement and LOTO by layer](figures/{pngs['svv']})", ""]
    prof = a["layer_profile"]
    picks = [x for x in prof["layers"] if x % 5 == 0 or x == prof["layers"][-1]]
    idx = [prof["layers"].index(x) for x in picks]

    def col(key: str) -> list[str]:
        v = prof.get(key) or []
        return [f"{v[i]:.3f}" if v else "-" for i in idx]

    lines += ["## By layer", "",
              table(["layer"] + [str(x) for x in picks],
                    [["mean abs cos (raw)"] + col("mean_abs_cos_raw"), ["mean abs cos (centred)"] + col("mean_abs_cos_centered"),
                     ["PC1 variance share"] + col("pc1_explained"), ["valence gap"] + col("valence_gap"),
                     ["PC1 valence AUROC"] + col("pc1_auroc")]),
              "",
              "valence gap = mean centred cosine within a valence class minus across classes. No CIs per layer here; "
              "use the layer of interest with `personaspace geometry --layer L`.", ""]
    if "layer_profile" in pngs:
        lines += [f"![layer profile](figures/{pngs['layer_profile']})", ""]
    comp = res.get("comparison")
    if comp:
        lines += [f"## Two runs compared: `{vs.positions[0]}` vs `{other.positions[0]}` vectors of the same extractions", "",
                  "The same kept pairs averaged over different token positions. Same width, so per-trait cosines and "
                  "activation-space principal angles are defined.", "",
                  table(["metric", "value", "95% CI", "permuted-trait null", "random null"],
                        [[k, f"{e['value']:.3f}", ci(e), null(e, "null_permuted"), null(e, "null_random")]
                         for k, e in comp["metrics"].items()]), ""]
        for key in ("compare_heatmaps", "trait_cosines", "rsa_by_layer"):
            if key in pngs:
                lines += [f"![{key}](figures/{pngs[key]})", ""]
    lines += _reading(a, comp)
    lines += ["## Reproduce", "", "```bash", f".venv/bin/python scripts/persona_space_report.py {args.vectors} "
              f"--n-boot {args.n_boot} --n-null {args.n_null}",
              f".venv/bin/personaspace geometry {args.vectors} --layer {a['layer']}", "```", ""]
    write_text(args.page, "\n".join(lines))
    print(f"wrote {args.page} ({len(pngs)} figures) in {time.time() - started:.0f} s")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
