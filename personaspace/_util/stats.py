"""Small statistics used across the toolkit: AUROC, bootstrap confidence intervals, correlations.

>>> auroc([0.9, 0.8, 0.7], [0.1, 0.2, 0.75])
0.8888888888888888
>>> lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
>>> lo < 2.5 < hi
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled ``values``."""
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
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))
