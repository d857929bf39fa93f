"""Statistics used across the toolkit, in one place: AUROC, intervals, correlations, bootstrap and
permutation summaries, paired and two-sample differences.

Method modules (geometry, steering, monitoring, EM, LPA) compute their statistics with these
functions; what a statistic *means* for a method stays with the method.

>>> auroc([0.9, 0.8, 0.7], [0.1, 0.2, 0.75])
0.8888888888888888
>>> lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
>>> lo < 2.5 < hi
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def auroc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled ``values`` (rows of a 2-D array are
    resampled whole, e.g. paired observations)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n_boot, len(data)))
    stats = np.array([statistic(data[i]) for i in idx])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def mean_ci(values: Sequence[float], *, seed: int = 0) -> dict:
    """Mean with a bootstrap 95% interval and the sample count, as reported everywhere."""
    data = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    lo, hi = bootstrap_ci(data, seed=seed)
    return {"mean": float(data.mean()) if len(data) else float("nan"), "ci95": [lo, hi], "n": int(len(data))}


def wilson_ci(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import rankdata  # scipy.stats takes a while to import; only correlations need it

    return pearson(rankdata(x), rankdata(y))


# ---------------------------------------------------------------------------------------------
# bootstrap intervals of derived statistics


def auroc_ci(pos: np.ndarray, neg: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Stratified bootstrap 95 % interval of the AUROC (positives and negatives resampled separately)."""
    rng = np.random.default_rng(seed)
    stats = [auroc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_boot)]
    return [float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))]


def pearson_ci(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95 % interval of Pearson's r, resampling (x, y) pairs; resamples with an undefined r are dropped."""
    arr = np.column_stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    n = len(arr)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        r = pearson(arr[idx, 0], arr[idx, 1])
        if np.isfinite(r):
            boots.append(r)
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))] if boots else [float("nan")] * 2


def correlation_report(x: Sequence[float], y: Sequence[float], *, seed: int = 0, n_boot: int = 2000) -> dict:
    """Pearson r with a bootstrap 95% interval (resampling pairs), Spearman rho, and n.

    Pairs with a missing (None) or non-finite value are left out; fewer than 3 pairs give NaNs.
    """
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    n = len(pairs)
    if n < 3:
        return {"pearson": float("nan"), "ci95": [float("nan"), float("nan")], "spearman": float("nan"), "n": n}
    arr = np.asarray(pairs, dtype=np.float64)
    ci = pearson_ci(arr[:, 0], arr[:, 1], n_boot=n_boot, seed=seed)
    return {"pearson": pearson(arr[:, 0], arr[:, 1]), "ci95": ci, "spearman": spearman(arr[:, 0], arr[:, 1]), "n": n}


def scored_mean_ci(values: Sequence[float | None], seed: int = 0) -> dict:
    """:func:`mean_ci` over the scored values, plus ``n_unscored`` (how many were None)."""
    finite = [v for v in values if v is not None]
    stats = mean_ci(finite, seed=seed)
    return {**stats, "n_unscored": len(values) - len(finite)}


def paired_delta(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0) -> dict:
    """Mean of ``a - b`` over items scored in both, with a bootstrap 95% interval and the count."""
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not diffs:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    lo, hi = bootstrap_ci(diffs, seed=seed)
    return {"mean": float(np.mean(diffs)), "ci95": [lo, hi], "n": len(diffs)}


def mean_difference_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95 % interval of ``mean(b) - mean(a)`` for two independent samples (each resampled on its own)."""
    rng = np.random.default_rng(seed)
    boots = rng.choice(b, (n_boot, len(b))).mean(1) - rng.choice(a, (n_boot, len(a))).mean(1)
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


# ---------------------------------------------------------------------------------------------
# intervals from bootstrap replicates


def percentile_ci(values: Sequence[float], level: float = 0.95) -> list[float]:
    """Central percentile interval of bootstrap replicates (NaNs dropped)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if len(arr) == 0:
        return [float("nan"), float("nan")]
    a = (1 - level) / 2
    return [float(np.quantile(arr, a)), float(np.quantile(arr, 1 - a))]


def basic_ci(values: Sequence[float], point: float, level: float = 0.95,
             bounds: tuple[float, float] = (-1.0, 1.0)) -> list[float]:
    """Basic (pivotal) bootstrap interval ``[2 * point - q_hi, 2 * point - q_lo]``, clipped to ``bounds``.

    Resampling contrast pairs with replacement leaves fewer distinct pairs, so resampled vectors are
    noisier and similarities between them are biased low: the percentile interval can then miss the
    point estimate entirely. The basic interval assumes the estimate sits that far below the
    population value, and moves the interval up by the same bias.

    >>> [round(x, 3) for x in basic_ci([0.1, 0.2, 0.3], 0.4)]  # percentile interval [0.105, 0.295]
    [0.505, 0.695]
    """
    return _reflected(percentile_ci(values, level), point, bounds)


def _reflected(percentile: list[float], point: float, bounds: tuple[float, float]) -> list[float]:
    """A percentile interval reflected about ``point`` (the basic interval), clipped to ``bounds``."""
    lo, hi = percentile
    if not np.isfinite(lo):
        return [lo, hi]
    return [float(np.clip(2 * point - hi, *bounds)), float(np.clip(2 * point - lo, *bounds))]


BOOTSTRAP_INTERVALS = "basic (pivotal); ci95_percentile keeps the percentile interval"


def bootstrap_intervals(values: Sequence[float], point: float, bounds: tuple[float, float] = (-1.0, 1.0)) -> dict[str, list[float]]:
    """Both 95 % intervals of bootstrap replicates: ``ci95`` (basic, see :func:`basic_ci`) and ``ci95_percentile``.

    >>> {k: [round(x, 3) for x in v] for k, v in bootstrap_intervals([0.1, 0.2, 0.3], 0.4).items()}
    {'ci95': [0.505, 0.695], 'ci95_percentile': [0.105, 0.295]}
    """
    percentile = percentile_ci(values)
    return {"ci95": _reflected(percentile, point, bounds), "ci95_percentile": percentile}


# ---------------------------------------------------------------------------------------------
# null distributions (permutations, random directions)


def permutation_p(observed: float, null: Sequence[float] | np.ndarray, *, greater: bool = True) -> float:
    """One-sided p of ``observed`` against a null sample, ``(1 + hits) / (1 + n)`` (never 0).

    A hit is a null value at least as extreme (``>=``, or ``<=`` with ``greater=False``), with a
    1e-12 tolerance so a tie with the observed value counts.

    >>> permutation_p(0.9, [0.1, 0.95, 0.3])
    0.5
    """
    arr = np.asarray(null)
    hits = (arr >= observed - 1e-12).sum() if greater else (arr <= observed + 1e-12).sum()
    return float((1 + hits) / (1 + len(arr)))


def null_summary(observed: float, null: Sequence[float], *, greater: bool = True) -> dict[str, Any]:
    """Where an observed statistic falls in a null distribution: mean, central 95 % and a one-sided p.

    >>> s = null_summary(0.9, [0.1, 0.2, 0.3])
    >>> s["p"], s["n"]
    (0.25, 3)
    """
    arr = np.asarray([x for x in null if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(arr) == 0:
        return {"mean": float("nan"), "q025": float("nan"), "q975": float("nan"), "p": float("nan"), "n": 0}
    return {
        "mean": float(arr.mean()),
        "q025": float(np.quantile(arr, 0.025)),
        "q975": float(np.quantile(arr, 0.975)),
        "p": permutation_p(observed, arr, greater=greater),
        "n": int(len(arr)),
    }
