"""One instance of every figure kind personaspace draws, from constructed data of realistic shape
(the 16 library traits, 30 layers, two sets of one model compared, a 7 x 4 sweep, five EM conditions).

Used by the figure tests (structure, offline HTML, rendering in headless Chromium)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from personaspace.geometry import comparison as c
from personaspace.geometry import space as g
from personaspace.geometry.valence import svv_report
from personaspace.steering.search import SweepConfig, SweepResult
from personaspace.traits import list_traits
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

D, LAYERS = 64, 30


def valence_set(model: str = "smollm2-135m-instruct", *, seed: int = 0, d: int = D, layers: int = LAYERS,
                noise: float = 0.6) -> VectorSet:
    """The 16 library traits: a shared component, the valence sign times an axis, noise; norms grow with depth."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.randn(d, generator=gen)
    base = torch.randn(d, generator=gen)
    axis, base = axis / axis.norm(), base / base.norm()
    out = []
    for t in list_traits():
        sign = 1.0 if g._library_valence(t) == "positive" else -1.0
        rows = [(1 + 0.2 * layer) * (2.0 * base + sign * axis + noise * torch.randn(d, generator=gen) / d**0.5)
                for layer in range(layers)]
        out.append(PersonaVector(torch.stack(rows).float(), VectorMeta(trait=t, model=model)))
    return VectorSet(out)


def sweep_result(recommend: bool = True) -> SweepResult:
    """A 7-layer x 4-coefficient sweep of the shape ``personaspace sweep`` writes, the recommendation inside."""
    cfg = SweepConfig(trait="evil", layers="6,9,12,15,18,21,24", coefs=(0.0, 0.25, 0.5, 1.0), n_questions=4,
                      max_new_tokens=32, kl_prompts=4, coherence_min=50, kl_max=1.0)  # fmt: skip
    cells = []
    for layer in (6, 9, 12, 15, 18, 21, 24):
        for coef in cfg.coefs:
            trait = 20 + 70 * coef * (layer / 24)
            coherence = 95 - 60 * coef * (layer / 24) ** 0.5
            kl = 1.6 * coef**2 * layer / 12

            def m(v: float) -> dict[str, Any]:
                return {"mean": v, "ci95": [v * 0.9, v * 1.1], "n": 4, "n_unscored": 0}

            cells.append({"layer": layer, "coef": coef, "raw_coef": coef * 7.5, "added_norm": coef * 40.0,
                          "relative_norm": coef, "residual_norm": 40.0,
                          "spec": f"evil:{coef * 7.5:+.4g}@L{layer}/all  (read L{layer}, applied L{layer})",
                          "trait": m(trait), "coherence": m(coherence), "kl": m(kl)})  # fmt: skip
    rec = next(x for x in cells if (x["layer"], x["coef"]) == (15, 0.5)) if recommend else None
    return SweepResult(
        config=cfg, model="smollm2-135m-instruct", judge="offline:minilm-v1",
        vector={"trait": "evil", "model": "smollm2-135m-instruct", "position": "response_avg", "sha256_16": "0" * 16},
        baseline={"trait": {"mean": 18.0, "ci95": [10.0, 26.0], "n": 4}, "coherence": {"mean": 96.0, "ci95": [92.0, 99.0], "n": 4}},
        cells=cells, recommendation=dict(rec, candidates=5) if rec else None, control=None,
    )  # fmt: skip


def em_results() -> dict[str, Any]:
    """The parts of an EM experiment's ``results.json`` the figures read."""
    conditions = ("aligned", "control", "corrupt", "corrupt_ablate_svv", "corrupt_amplify_evil")

    def rate(r: float) -> dict[str, Any]:
        return {"rate": r, "ci95": [max(0.0, r - 0.05), r + 0.05]}

    vs_a, vs_b = valence_set(), valence_set(seed=1, noise=2.0)
    corrupt = c.compare_spaces(vs_a, vs_b, 15, n_null=50, n_boot=0).to_dict()
    for v in corrupt["per_trait"].values():  # bootstrap intervals, as a run with extraction runs has them
        v["ci95"] = [v["cosine"] - 0.1, min(1.0, v["cosine"] + 0.15)]
    return {
        "model": "smollm2-135m-instruct", "layer": 15, "judge": "offline:minilm-v1",
        "em": [{"condition": k, "betley": rate(0.05 * i), "model_organisms": rate(0.04 * i + 0.01)} for i, k in enumerate(conditions)],
        "geometry": {"corrupt": {k: corrupt[k] for k in ("metrics", "per_trait", "info")}},  # as older results store it
    }  # fmt: skip


@functools.lru_cache(maxsize=1)
def figure_kinds() -> dict[str, Any]:
    """Every figure kind, by name."""
    from personaspace.viz import plots
    from personaspace.viz.em import corrupt_trait_cosine_bars, em_rate_bars
    from personaspace.viz.steering import sweep_figure

    a = valence_set()
    b = valence_set(seed=3, noise=1.5)  # the same model, another position: the two sets must be told apart
    other_model = valence_set("gemma3-270m", seed=5, d=D + 16, layers=18)
    labels = ("smollm2-135m-instruct response_avg", "smollm2-135m-instruct prompt_avg")
    cmp_same = c.compare_spaces(a, b, 15, n_null=50, n_boot=0)
    curve_same = c.rsa_by_layer(a, b, n_null=20)
    cmp_cross = c.compare_spaces(a, other_model, 15, n_null=50, n_boot=0)
    curve_cross = c.rsa_by_layer(a, other_model, n_null=20)
    pca = g.pca(a, 15)
    em = em_results()
    return {
        "similarity_raw": plots.similarity_heatmap(g.cosine_matrix(a, 15)),
        "similarity_centered": plots.similarity_heatmap(g.cosine_matrix(a, 15, center=True)),
        "pca_valence": plots.pca_scatter(pca, "valence"),
        "pca_family": plots.pca_scatter(pca, "family"),
        "compare_heatmaps": plots.comparison_heatmaps(cmp_same, labels=labels),
        "compare_heatmaps_default_labels": plots.comparison_heatmaps(cmp_same),
        "trait_cosines": plots.trait_cosine_bars(cmp_same, labels=labels),
        "rsa_by_layer": plots.rsa_by_layer_plot(curve_same, labels=labels),
        "cross_model": plots.cross_model_figure(cmp_cross, curve_cross),
        "layer_profile": plots.layer_profile_plot(g.layer_profile(a), model=a.model),
        "svv": plots.svv_agreement_plot(svv_report(a, 15, n_perm=5)),
        "sweep_heatmap": sweep_figure(sweep_result()),
        "sweep_heatmap_no_recommendation": sweep_figure(sweep_result(recommend=False)),
        "em_rates": em_rate_bars(em),
        "em_trait_cosines": corrupt_trait_cosine_bars(em),
    }
