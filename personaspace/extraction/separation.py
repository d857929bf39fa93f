"""How well a vector separates trait-expressing from trait-suppressing rows it was not built from.

Three checks, from most to least confounded by the contrast instructions themselves:

- :func:`heldout_auroc`: folds hold out *questions*; every fold shares the same contrast system prompts,
  so prompt positions can separate on the instruction text alone (labelled ``instructions shared``);
- :func:`crossfit_auroc` with the rows' own activations: folds hold out *instruction pairs and
  questions* together (a pair is tested only by a vector built from other instructions and other
  questions); the held-out projections of every fold are pooled into one AUROC per layer;
- the same with *answer-only* activations (``test_acts``): the kept answers re-read with no system
  prompt, so only the answer text can separate them. This is the headline number of an extraction.

AUROC is P(pos projection > neg projection); 0.5 is chance. Intervals are a bootstrap over held-out
pairs (a pair's pos and neg rows resampled together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from personaspace._util.stats import auroc, bootstrap_ci

Pair = tuple[int, int]  # (pos row id, neg row id)


def mean_difference(acts: Tensor, kept: Sequence[Pair]) -> Tensor:
    """``[layers, d]`` mean over kept pos rows minus mean over kept neg rows."""
    pos = torch.tensor([p for p, _ in kept], dtype=torch.long)
    neg = torch.tensor([n for _, n in kept], dtype=torch.long)
    return acts[pos].mean(0) - acts[neg].mean(0)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _folds(values: Sequence[int], k: int) -> dict[int, int]:
    """Sorted values dealt round-robin into ``k`` folds."""
    return {v: i % k for i, v in enumerate(sorted(set(values)))}


def heldout_auroc(rows: Sequence[Any], acts: dict[str, Tensor], kept: Sequence[Pair], folds: int) -> dict[str, dict]:
    """Per position and layer: AUROC of held-out pos vs neg projections, cross-validated over questions.

    Each fold leaves out a disjoint set of questions, builds the vector from the other questions' kept
    pairs, and scores the left-out kept pairs; the per-layer AUROC is the mean over folds. The contrast
    instructions are shared by every fold.
    """
    question_of = {r.id: r.question for r in rows}
    questions = sorted({question_of[p] for p, _ in kept})
    result: dict[str, dict] = {}
    if len(questions) < 2:
        return {p: {"per_layer": [], "best": None, "best_layer": None, "folds": 0, "held_out": "questions"} for p in acts}
    k = min(folds, len(questions))
    fold_of = _folds(questions, k)
    for position, table in acts.items():
        per_fold = []
        for f in range(k):
            train = [(p, n) for p, n in kept if fold_of[question_of[p]] != f]
            test = [(p, n) for p, n in kept if fold_of[question_of[p]] == f]
            if not train or not test:
                continue
            u = _unit(mean_difference(table, train))  # [layers, d]
            pos = torch.einsum("nld,ld->nl", table[[p for p, _ in test]], u).numpy()
            neg = torch.einsum("nld,ld->nl", table[[n for _, n in test]], u).numpy()
            per_fold.append([auroc(pos[:, layer], neg[:, layer]) for layer in range(u.shape[0])])
        per_layer = np.nanmean(np.array(per_fold), axis=0) if per_fold else np.array([])
        best_layer = int(np.nanargmax(per_layer)) if len(per_layer) else None
        result[position] = {
            "per_layer": [round(float(x), 4) for x in per_layer],
            "best": round(float(per_layer[best_layer]), 4) if best_layer is not None else None,
            "best_layer": best_layer,
            "folds": len(per_fold),
            "held_out": "questions",
            "instructions": "shared by every fold" + (
                " (prompt positions can separate on the instruction text itself)" if position.startswith("prompt") else ""
            ),
        }
    return result


def paired_auroc_ci(pos: np.ndarray, neg: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of the AUROC, resampling (pos, neg) pairs together."""
    if len(pos) < 2:
        return [float("nan"), float("nan")]
    lo, hi = bootstrap_ci(np.column_stack([pos, neg]), lambda d: auroc(d[:, 0], d[:, 1]), n_boot=n_boot, seed=seed)
    return [round(lo, 4), round(hi, 4)]


def _at(pos: np.ndarray, neg: np.ndarray, layer: int, seed: int) -> dict[str, Any]:
    return {
        "layer": int(layer),
        "auroc": round(auroc(pos[:, layer], neg[:, layer]), 4),
        "ci95": paired_auroc_ci(pos[:, layer], neg[:, layer], seed=seed),
        "pair_accuracy": round(float(np.mean(pos[:, layer] > neg[:, layer])), 4),
    }


def crossfit_auroc(
    rows: Sequence[Any],
    acts: dict[str, Tensor],
    kept: Sequence[Pair],
    folds: int,
    *,
    test_acts: Tensor | None = None,
    default_layer: int | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Held-out AUROC per layer with instruction pairs *and* questions held out, pooled over folds.

    Instructions and questions are each dealt into ``min(folds, count)`` folds; for every (instruction
    fold, question fold) cell the vector is built from the kept pairs sharing neither its instructions
    nor its questions, and the cell's kept pairs are projected on it. Every kept pair is scored exactly
    once. ``acts[position]`` (``[rows, layers, d]``) builds the vectors; the projections read
    ``test_acts`` (``[rows, layers, d]``, e.g. answer-only re-reads) when given, else the same table.
    Reports the per-layer pooled AUROC, the best layer, and at the best and ``default_layer``: the AUROC
    with a paired bootstrap interval and the fraction of pairs whose pos answer projects higher.
    """
    inst_of = {r.id: r.instruction for r in rows}
    q_of = {r.id: r.question for r in rows}
    instructions = [inst_of[p] for p, _ in kept]
    questions = [q_of[p] for p, _ in kept]
    n_inst, n_q = len(set(instructions)), len(set(questions))
    empty: dict[str, Any] = {"per_layer": [], "best": None, "best_layer": None, "n_pairs": len(kept),
             "held_out": "instruction pairs and questions"}
    if n_inst < 2 or n_q < 2:
        reason = f"needs kept pairs from >= 2 instruction pairs and >= 2 questions (have {n_inst} and {n_q})"
        return {p: {**empty, "reason": reason} for p in acts}
    fi, fq = _folds(instructions, min(folds, n_inst)), _folds(questions, min(folds, n_q))
    cells: dict[tuple[int, int], list[int]] = {}
    for j, (p, _) in enumerate(kept):
        cells.setdefault((fi[inst_of[p]], fq[q_of[p]]), []).append(j)
    result: dict[str, dict] = {}
    for position, table in acts.items():
        reader = table if test_acts is None else test_acts
        n_layers = table.shape[1]
        pos = np.full((len(kept), n_layers), np.nan)
        neg = np.full((len(kept), n_layers), np.nan)
        for (a, b), test in sorted(cells.items()):
            train = [(p, n) for p, n in kept if fi[inst_of[p]] != a and fq[q_of[p]] != b]
            if not train:
                continue
            u = _unit(mean_difference(table, train))
            pos[test] = torch.einsum("nld,ld->nl", reader[[kept[j][0] for j in test]], u).numpy()
            neg[test] = torch.einsum("nld,ld->nl", reader[[kept[j][1] for j in test]], u).numpy()
        scored = ~np.isnan(pos[:, 0])
        pos, neg = pos[scored], neg[scored]
        if len(pos) < 2:
            result[position] = {**empty, "reason": "fewer than 2 kept pairs could be held out"}
            continue
        per_layer = np.array([auroc(pos[:, layer], neg[:, layer]) for layer in range(n_layers)])
        best = int(np.nanargmax(per_layer))
        entry = {
            "per_layer": [round(float(x), 4) for x in per_layer],
            "best": round(float(per_layer[best]), 4),
            "best_layer": best,
            "n_pairs": int(len(pos)),
            "folds": [min(folds, n_inst), min(folds, n_q)],
            "held_out": "instruction pairs and questions",
            "at_best": _at(pos, neg, best, seed),
        }
        if default_layer is not None and 0 <= default_layer < n_layers:
            entry["at_default_layer"] = _at(pos, neg, default_layer, seed)
        result[position] = entry
    return result
