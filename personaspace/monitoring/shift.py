"""Fine-tuning shift along persona vectors, and how well it predicts the fine-tuned model's traits.

Chen et al. (2025): the shift of trait ``t`` caused by a fine-tune is

    shift_t = mean over evaluation prompts p of (h_ft(p)[last] - h_base(p)[last]) . v_hat_t

where ``h[last]`` is the residual stream at the last prompt token (the assistant header, just
before the answer starts) at the vector's layer, and ``v_hat_t`` the unit persona vector taken
from the base model. A positive shift means the fine-tune moved the model toward the trait before
it says anything; the paper reports r = 0.76-0.97 between shifts and post-fine-tune trait scores.

Prompts default to each trait's evaluation questions (never used for extraction). Shifts are
paired per prompt, so the bootstrap CI resamples prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from personaspace._util.stats import bootstrap_ci, mean_ci, pearson, pearson_ci, spearman
from personaspace.engine.layers import default_layer
from personaspace.judges import JudgeItem, get_judge


def _trait(name: str) -> Any:
    from personaspace.traits import load_trait

    return load_trait(name)


def last_prompt_activations(model: Any, prompts: Sequence[Any], layer: int) -> torch.Tensor:
    """Residual stream at the last prompt token, ``[prompts, d_model]`` float32, at ``layer``."""
    acts = model.capture(list(prompts), layers=[layer], reductions=("prompt_last",))
    return acts["prompt_last"][:, 0, :].float()


def projection_shift(
    base: Any,
    finetuned: Any,
    vectors: Mapping[str, Any],
    layer: int | None = None,
    *,
    traits: Sequence[str] | None = None,
    prompts: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    n_prompts: int | None = 20,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per-trait shift of the last-prompt-token projection from ``base`` to ``finetuned`` (a fine-tuned,
    steered or aligned model: anything that changes the activations).

    ``vectors`` maps trait names to PersonaVectors of the base model (a VectorSet works); ``layer``
    defaults to the middle of each vector's stored layers (:func:`~personaspace.engine.layers.default_layer`).
    ``prompts``: one list for every trait, a per-trait mapping, or None for each trait's evaluation
    questions (the first ``n_prompts``; None: all). Returns ``{trait: {shift, ci95, n, base_proj,
    ft_proj, layer}}`` where the projections are means over prompts and ``ci95`` bootstraps the shift
    over prompts.
    """
    names = list(traits or vectors.keys())
    out: dict[str, dict[str, Any]] = {}
    cache: dict[tuple[tuple[str, ...], int], tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        if prompts is None:
            plist = list(_trait(name).evaluation_questions[:n_prompts])
        elif isinstance(prompts, Mapping):
            plist = list(prompts[name])
        else:
            plist = list(prompts)
        vec = vectors[name]
        at = default_layer(vec.layers) if layer is None else layer
        key = (tuple(plist), at)
        if key not in cache:
            cache[key] = (last_prompt_activations(base, plist, at), last_prompt_activations(finetuned, plist, at))
        h_base, h_ft = cache[key]
        p_base, p_ft = vec.project(h_base, at).numpy(), vec.project(h_ft, at).numpy()
        diffs = p_ft - p_base
        lo, hi = bootstrap_ci(diffs, seed=seed)
        out[name] = {
            "shift": float(diffs.mean()),
            "ci95": [lo, hi],
            "n": int(len(diffs)),
            "base_proj": float(p_base.mean()),
            "ft_proj": float(p_ft.mean()),
            "layer": at,
        }
    return out


def trait_expression(
    model: Any,
    traits: Sequence[str],
    judge: Any = "offline",
    *,
    n_questions: int = 10,
    samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, dict[str, Any]]:
    """Mean judged trait score (0-100) of the model's answers to each trait's evaluation questions."""
    judge_obj = get_judge(judge, cache=True, probe=True)
    out: dict[str, dict[str, Any]] = {}
    for name in traits:
        trait = _trait(name)
        questions = [q for q in trait.evaluation_questions[:n_questions] for _ in range(samples)]
        t0 = time.perf_counter()
        gen = model.generate(questions, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
        scores = judge_obj.score([JudgeItem(q, a, kind="trait", trait=trait) for q, a in zip(questions, gen.texts)])
        values = [s.value for s in scores if s.value is not None]
        out[name] = {**mean_ci(values, seed=seed), "n_answers": len(questions), "judge": judge_obj.identity,
                     "seconds": round(time.perf_counter() - t0, 1)}
    return out


def shift_score_correlation(points: Sequence[tuple[float, float]], *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Pearson and Spearman correlation of (shift, trait score) points with a bootstrap CI for Pearson."""
    arr = np.asarray(points, dtype=np.float64)
    n = len(arr)
    if n < 3:
        return {"pearson": float("nan"), "spearman": float("nan"), "ci95": [float("nan"), float("nan")], "n": n}
    ci = pearson_ci(arr[:, 0], arr[:, 1], n_boot=n_boot, seed=seed)
    return {"pearson": pearson(arr[:, 0], arr[:, 1]), "spearman": spearman(arr[:, 0], arr[:, 1]), "ci95": ci, "n": n}


def track_finetunes(
    base: Any,
    finetuned: Mapping[str, Any],
    vectors: Mapping[str, Any],
    layer: int,
    *,
    traits: Sequence[str] | None = None,
    judge: Any = "offline",
    include_base: bool = True,
    n_prompts: int = 20,
    n_questions: int = 10,
    samples: int = 1,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Shift and post-fine-tune trait score for every (model, trait), and their correlation.

    ``finetuned`` maps labels to PersonaModels. With ``include_base`` the base model is a point
    too (shift 0 by definition). The correlation is over all (model, trait) points and, per trait,
    across models when there are at least three.
    """
    names = list(traits or vectors.keys())
    models = ({"base": base} if include_base else {}) | dict(finetuned)
    rows: list[dict[str, Any]] = []
    for label, model in models.items():
        if progress:
            progress(label)
        shifts = projection_shift(base, model, vectors, layer, traits=names, n_prompts=n_prompts, seed=seed)
        scores = trait_expression(model, names, judge, n_questions=n_questions, samples=samples,
                                  max_new_tokens=max_new_tokens, seed=seed)
        for t in names:
            rows.append({"model": label, "trait": t, "shift": shifts[t]["shift"], "shift_ci95": shifts[t]["ci95"],
                         "n_prompts": shifts[t]["n"], "score": scores[t]["mean"], "score_ci95": scores[t]["ci95"],
                         "n_scored": scores[t]["n"], "judge": scores[t]["judge"]})
    valid = [(r["shift"], r["score"]) for r in rows if not np.isnan(r["score"])]
    per_trait = {}
    for t in names:
        pts = [(r["shift"], r["score"]) for r in rows if r["trait"] == t and not np.isnan(r["score"])]
        if len(pts) >= 3:
            per_trait[t] = shift_score_correlation(pts, seed=seed)
    # Score change vs shift: removes each trait's baseline level, the quantity the paper correlates.
    deltas = []
    if include_base:
        base_scores = {r["trait"]: r["score"] for r in rows if r["model"] == "base"}
        for r in rows:
            if r["model"] != "base" and not np.isnan(r["score"]) and not np.isnan(base_scores[r["trait"]]):
                r["score_change"] = r["score"] - base_scores[r["trait"]]
                deltas.append((r["shift"], r["score_change"]))
    return {
        "layer": layer,
        "rows": rows,
        "correlation_all": shift_score_correlation(valid, seed=seed),
        "correlation_change": shift_score_correlation(deltas, seed=seed) if deltas else None,
        "per_trait": per_trait,
    }
