"""personaspace._util.stats: the one home of the toolkit's generic statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personaspace._util import stats as st


def test_correlation_report_counts_and_bounds():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    rep = st.correlation_report(x, [2 * v + (v % 2) for v in x], n_boot=200)
    assert rep["n"] == 8 and 0.9 < rep["pearson"] <= 1 and rep["ci95"][0] <= rep["pearson"] <= rep["ci95"][1]
    assert st.correlation_report([1, 2], [1, None])["n"] == 1


def test_pearson_ci_is_seeded_and_brackets_r():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ci = st.pearson_ci(x, y, n_boot=300, seed=3)
    assert ci == st.pearson_ci(x, y, n_boot=300, seed=3)
    assert ci[0] < st.pearson(x, y) < ci[1]
    assert all(math.isnan(v) for v in st.pearson_ci([1, 1, 1], [1, 2, 3], n_boot=10))  # r undefined everywhere


def test_auroc_ci_brackets_the_auroc():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
    lo, hi = st.auroc_ci(pos, neg, n_boot=300)
    assert lo < st.auroc(pos, neg) < hi


def test_paired_and_two_sample_differences():
    d = st.paired_delta([3.0, None, 5.0, 4.0], [1.0, 2.0, None, 1.0])
    assert d["n"] == 2 and d["mean"] == pytest.approx(2.5) and d["ci95"][0] <= 2.5 <= d["ci95"][1]
    assert st.paired_delta([None], [1.0])["n"] == 0
    s = st.scored_mean_ci([1.0, None, 3.0])
    assert (s["mean"], s["n"], s["n_unscored"]) == (2.0, 2, 1)
    a, b = np.zeros(50), np.ones(50)
    assert st.mean_difference_ci(a, b, n_boot=100) == [1.0, 1.0]


def test_bootstrap_replicate_intervals():
    reps = [0.1, 0.2, 0.3]
    assert st.basic_ci(reps, 0.4) == st.bootstrap_intervals(reps, 0.4)["ci95"]
    assert st.bootstrap_intervals(reps, 0.4)["ci95_percentile"] == st.percentile_ci(reps)
    assert all(math.isnan(v) for v in st.percentile_ci([float("nan")]))


def test_permutation_p_and_null_summary_agree():
    null = [0.1, 0.5, 0.9, float("nan")]
    assert st.permutation_p(0.5, [0.1, 0.5, 0.9]) == 0.75  # a tie counts
    assert st.permutation_p(0.5, [0.1, 0.5, 0.9], greater=False) == 0.75
    s = st.null_summary(0.5, null)
    assert s["n"] == 3 and s["p"] == st.permutation_p(0.5, [0.1, 0.5, 0.9])
    assert st.null_summary(0.5, [])["n"] == 0
