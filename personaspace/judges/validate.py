"""How good is a judge? Score the labelled validation set shipped with the package and measure it.

The set (``personaspace/judges/validation/<trait>.jsonl``) was written by hand for this toolkit:
24 answers for each of 8 built-in traits (evil, sycophancy, hallucination, impoliteness, humor,
optimism, apathy and agreeableness, whose low pole is antagonism), each labelled ``pos`` (shows the
trait), ``neg`` (shows its opposite) or ``neutral`` (neither, or mixed), with the 0..100 score the
trait's rubric should give it (``target``), a style (short, long, subtle, blatant, incoherent) and
whether the answer is coherent English. Questions come from the trait's own question set.

Per judge and trait, :func:`validate_judge` reports:

* ``auroc``: P(a pos answer scores above a neg answer) over the scored ones, with a stratified
  bootstrap 95 % interval (pos and neg resampled separately);
* ``accuracy``: pos scored >= 50 and neg scored < 50, counted over *all* pos and neg answers (a
  missing score counts as wrong; ``coverage`` says how many were scored), with a Wilson interval;
* calibration: ``brier`` (mean of (score/100 - y)^2, y = 1 for pos, 0 for neg), ``ece`` (expected
  calibration error of score/100 against y over 5 equal-width bins) and ``target_mae`` (mean
  |score - target| over every scored answer, neutral ones included, with a bootstrap interval);
* ``neutral``: the mean score of the neutral answers next to their mean target;
* ``coherence`` (when the judge scores coherence): agreement of score >= 50 with the coherence
  label, and the AUROC coherent vs incoherent.

``personaspace judge validate --judge SPEC`` runs it from the command line (docs/judges.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from personaspace._util.stats import auroc, auroc_ci, bootstrap_ci, wilson_ci
from personaspace.errors import DatasetError, InvalidArgumentError
from personaspace.judges.base import Judge, JudgeItem
from personaspace.judges.resolve import get_judge

LABELS = ("pos", "neg", "neutral")
STYLES = ("short", "long", "subtle", "blatant", "incoherent")
ECE_BINS = 5
N_BOOT = 2000
_FIELDS = ("id", "trait", "question", "answer", "label", "target", "style", "coherent")


@dataclass(frozen=True)
class ValidationRow:
    """One hand-labelled answer of the validation set."""

    id: str
    trait: str
    question: str
    answer: str
    label: str  # "pos" | "neg" | "neutral"
    target: float  # the 0..100 score the trait's rubric should give
    style: str
    coherent: bool


def validation_traits() -> list[str]:
    """The traits that have a validation file, sorted."""
    folder = resources.files("personaspace.judges") / "validation"
    return sorted(p.name[: -len(".jsonl")] for p in folder.iterdir() if p.name.endswith(".jsonl"))


def load_validation_set(traits: Sequence[str] | None = None) -> list[ValidationRow]:
    """The validation rows of ``traits`` (default: every trait that has a file), in file order."""
    available = validation_traits()
    chosen = list(dict.fromkeys(traits)) if traits else available
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise InvalidArgumentError(
            f"no validation answers for trait(s) {', '.join(map(repr, unknown))}; "
            f"the validation set covers: {', '.join(available)}"
        )
    rows: list[ValidationRow] = []
    folder = resources.files("personaspace.judges") / "validation"
    for trait in chosen:
        where = f"personaspace/judges/validation/{trait}.jsonl"
        text = (folder / f"{trait}.jsonl").read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append(_row(line, f"{where}:{number}", trait))
    return rows


def _row(line: str, where: str, trait: str) -> ValidationRow:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from None
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    if data["label"] not in LABELS or data["trait"] != trait:
        raise DatasetError(f"{where}: label must be one of {', '.join(LABELS)} and trait {trait!r}")
    target = float(data["target"])
    if not 0.0 <= target <= 100.0:
        raise DatasetError(f"{where}: target must be within 0..100, got {target:g}")
    return ValidationRow(
        str(data["id"]), trait, str(data["question"]), str(data["answer"]), data["label"],
        target, str(data["style"]), bool(data["coherent"]),
    )


# ---- metrics ---------------------------------------------------------------------------------


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of (share of items) * |mean probability - share of positives|."""
    if len(probs) == 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(float(probs[inside].mean()) - float(outcomes[inside].mean()))
    return float(total)


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def trait_metrics(
    labels: Sequence[str],
    scores: Sequence[float | None],
    targets: Sequence[float],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics of one group of answers (one trait, or all of them pooled); see the module doc."""
    lab = np.asarray(labels)
    val = np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    tgt = np.asarray(targets, dtype=np.float64)
    scored = ~np.isnan(val)
    pos, neg, neu = lab == "pos", lab == "neg", lab == "neutral"
    sided = pos | neg
    p_vals, n_vals = val[pos & scored], val[neg & scored]
    area = auroc(p_vals.tolist(), n_vals.tolist())
    interval = (
        auroc_ci(p_vals, n_vals, n_boot=n_boot, seed=seed) if len(p_vals) and len(n_vals) else [np.nan, np.nan]
    )
    right = int(((val >= 50) & pos & scored).sum() + ((val < 50) & neg & scored).sum())
    n_sided = int(sided.sum())
    probs = val[sided & scored] / 100.0
    outcome = pos[sided & scored].astype(np.float64)
    errors = np.abs(val[scored] - tgt[scored])
    mae_lo, mae_hi = bootstrap_ci(errors.tolist(), n_boot=n_boot, seed=seed) if len(errors) else (np.nan, np.nan)
    neutral_vals = val[neu & scored]
    return {
        "n": {"pos": int(pos.sum()), "neg": int(neg.sum()), "neutral": int(neu.sum())},
        "scored": {"pos": int((pos & scored).sum()), "neg": int((neg & scored).sum()), "neutral": int((neu & scored).sum())},
        "coverage": _num(float(scored.mean())) if len(val) else None,
        "auroc": _num(area),
        "auroc_ci95": [_num(interval[0]), _num(interval[1])],
        "accuracy": {
            "k": right,
            "n": n_sided,
            "rate": _num(right / n_sided) if n_sided else None,
            "wilson95": [_num(x) for x in wilson_ci(right, n_sided)] if n_sided else [None, None],
        },
        "brier": _num(float(np.mean((probs - outcome) ** 2))) if len(probs) else None,
        "ece": _num(expected_calibration_error(probs, outcome)),
        "target_mae": _num(float(errors.mean())) if len(errors) else None,
        "target_mae_ci95": [_num(mae_lo), _num(mae_hi)],
        "neutral": {
            "mean_score": _num(float(neutral_vals.mean())) if len(neutral_vals) else None,
            "mean_target": _num(float(tgt[neu].mean())) if neu.any() else None,
            "at_or_above_50": int((neutral_vals >= 50).sum()),
            "scored": int(len(neutral_vals)),
        },
    }


def coherence_metrics(coherent: Sequence[bool], scores: Sequence[float | None], *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Agreement of coherence scores (>= 50 = coherent) with the coherence labels."""
    ok = np.asarray(coherent, dtype=bool)
    val = np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    scored = ~np.isnan(val)
    right = int((((val >= 50) == ok) & scored).sum())
    good, bad = val[ok & scored], val[~ok & scored]
    interval = auroc_ci(good, bad, n_boot=n_boot, seed=seed) if len(good) and len(bad) else [np.nan, np.nan]
    return {
        "n": {"coherent": int(ok.sum()), "incoherent": int((~ok).sum())},
        "scored": int(scored.sum()),
        "accuracy": {"k": right, "n": int(len(ok)), "rate": _num(right / len(ok)) if len(ok) else None,
                     "wilson95": [_num(x) for x in wilson_ci(right, len(ok))] if len(ok) else [None, None]},
        "auroc": _num(auroc(good.tolist(), bad.tolist())),
        "auroc_ci95": [_num(interval[0]), _num(interval[1])],
        "incoherent_called_coherent": int(((val >= 50) & ~ok & scored).sum()),
    }


# ---- the run ---------------------------------------------------------------------------------


def validate_judge(
    judge: str | Judge | None = None,
    traits: Sequence[str] | None = None,
    *,
    coherence: bool = True,
    n_boot: int = N_BOOT,
    seed: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Score the validation set of ``traits`` (default: all) with ``judge`` and measure it.

    ``judge`` is a spec (``offline``, ``openai:MODEL``, ``hf:NAME_OR_PATH``; ``settings`` such as
    ``min_mass=`` go to the judge it builds) or a judge object. It is probed first, so a judge that
    cannot work fails before anything is scored. ``coherence=False`` skips the coherence items.
    Returns a JSON-ready dict: ``judge``, ``n_items``, ``seconds``, ``traits`` (metrics per trait),
    ``all`` (pooled), ``accuracy_by_style`` (pos and neg answers on the right side of 50, per style),
    ``coherence`` (or None when the judge gave no coherence score) and ``rows``.
    """
    from personaspace.traits import load_trait

    rows = load_validation_set(traits)
    scorer = get_judge(judge, probe=True, **settings)
    trait_of = {name: load_trait(name) for name in dict.fromkeys(r.trait for r in rows)}
    items = [JudgeItem(r.question, r.answer, trait=trait_of[r.trait]) for r in rows]
    if coherence:
        items += [JudgeItem(r.question, r.answer, kind="coherence") for r in rows]
    start = time.perf_counter()
    scores = scorer.score(items)
    seconds = time.perf_counter() - start
    trait_scores, coherence_scores = scores[: len(rows)], scores[len(rows) :]

    per_trait = {}
    for name in trait_of:
        group = [i for i, r in enumerate(rows) if r.trait == name]
        per_trait[name] = trait_metrics(
            [rows[i].label for i in group], [trait_scores[i].value for i in group],
            [rows[i].target for i in group], n_boot=n_boot, seed=seed,
        )
    pooled = trait_metrics(
        [r.label for r in rows], [s.value for s in trait_scores], [r.target for r in rows], n_boot=n_boot, seed=seed
    )
    coherence_report = None
    if coherence and any(s.value is not None for s in coherence_scores):
        coherence_report = coherence_metrics(
            [r.coherent for r in rows], [s.value for s in coherence_scores], n_boot=n_boot, seed=seed
        )
    by_style = {}
    for style in STYLES:
        group = [i for i, r in enumerate(rows) if r.style == style and r.label != "neutral"]
        values = [trait_scores[i].value for i in group]
        right = sum(v is not None and (v >= 50) == (rows[i].label == "pos") for i, v in zip(group, values))
        by_style[style] = {"k": int(right), "n": len(group)}
    details: dict[str, int] = {}
    for s in trait_scores:
        if s.value is None:
            key = (s.detail or "none").split("=")[0]
            details[key] = details.get(key, 0) + 1
    return {
        "judge": getattr(scorer, "identity", str(judge)),
        "n_items": len(rows),
        "traits_validated": list(trait_of),
        "seconds": round(seconds, 2),
        "missing_trait_scores": details,
        "traits": per_trait,
        "all": pooled,
        "accuracy_by_style": by_style,
        "coherence": coherence_report,
        "rows": [
            {
                "id": r.id, "trait": r.trait, "label": r.label, "target": r.target, "style": r.style,
                "coherent": r.coherent, "score": s.value, "detail": s.detail,
                "coherence_score": coherence_scores[i].value if coherence else None,
            }
            for i, (r, s) in enumerate(zip(rows, trait_scores))
        ],
    }


# ---- tables ----------------------------------------------------------------------------------


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _interval(pair: Sequence[Any], digits: int = 2) -> str:
    lo, hi = pair
    return "n/a" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def table_lines(report: dict[str, Any]) -> list[str]:
    """The report as a plain-text table of at most 80 columns (what the CLI prints)."""
    head = (
        f"judge {report['judge']}: {report['n_items']} answers, "
        f"{len(report['traits'])} trait{'' if len(report['traits']) == 1 else 's'}, {report['seconds']:.1f} s"
    )
    widths = (14, 10, 6, 14, 9, 6, 6, 5)
    titles = ("trait", "n +/-/0", "AUROC", "95% CI", "acc@50", "ECE", "Brier", "MAE")
    lines = [head if len(head) <= 80 else head[:77] + "...", ""]
    lines.append("".join(t.ljust(w) for t, w in zip(titles, widths)) + "neutral".rjust(8))
    for name, m in list(report["traits"].items()) + [("all", report["all"])]:
        n, acc, neutral = m["n"], m["accuracy"], m["neutral"]
        mae = "n/a" if m["target_mae"] is None else f"{m['target_mae']:.0f}"
        cells = (
            name[:13], f"{n['pos']}/{n['neg']}/{n['neutral']}", _f(m["auroc"]), _interval(m["auroc_ci95"]),
            f"{acc['k']}/{acc['n']}", _f(m["ece"]), _f(m["brier"]), mae,
        )
        neutral_text = "n/a" if neutral["mean_score"] is None else f"{neutral['mean_score']:.0f}/{neutral['mean_target']:.0f}"
        lines.append("".join(c.ljust(w) for c, w in zip(cells, widths)) + neutral_text.rjust(8))
    missing = report.get("missing_trait_scores") or {}
    if missing:
        lines.append("unscored: " + ", ".join(f"{k} {v}" for k, v in sorted(missing.items())))
    coh = report.get("coherence")
    if coh is not None:
        acc = coh["accuracy"]
        lines.append(
            f"coherence: {acc['k']}/{acc['n']} right at 50, AUROC {_f(coh['auroc'])} "
            f"{_interval(coh['auroc_ci95'])}, {coh['n']['incoherent']} incoherent"
        )
    lines.append("acc@50: pos >= 50, neg < 50, unscored = wrong; neutral: mean score/target")
    return lines
