"""Comparing two persona spaces (two models, a model and its fine-tune, or two extraction runs).

Metrics, all on unit-norm trait vectors over the traits both sets share:

* **per-trait cosine**: ``cos(a[t], b[t])``; only defined when both sets have the same width.
* **RSA**: Pearson and Spearman correlation between the two trait-by-trait cosine matrices
  (upper triangles), raw and centred; works across widths.
* **linear CKA** (Kornblith et al. 2019) between the two ``[n_traits, d]`` matrices, centred over traits.
* **Procrustes disparity**: both configurations centred and scaled to unit Frobenius norm, then
  ``1 - (sum of singular values of Xa^T Xb)^2`` -- the share of variance an optimal rotation
  (and scale) cannot explain; 0 = identical up to rotation, works across widths.
* **principal angles** between the top-``k`` PCA subspaces: in activation space when the widths
  match, otherwise in trait space (the span of the top-``k`` trait-coordinate vectors).

Each metric comes with two nulls: *permuted* (trait labels of the second set shuffled: what the
same two spaces give without trait correspondence; for RSA this is the Mantel test) and *random*
(the second set replaced by random directions), and, when the vectors' extraction runs are on disk,
a bootstrap confidence interval from resampling each trait's kept pairs.

With ``n`` traits in ``d >> n`` dimensions every set is first reduced to exact ``n x n``
coordinates (a QR rotation that preserves all inner products), so nulls are cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personaspace._util.stats import BOOTSTRAP_INTERVALS, bootstrap_intervals, null_summary
from personaspace.engine.layers import default_layer
from personaspace.errors import PersonaspaceError
from personaspace.geometry.space import (
    SimilarityMatrix,
    _check_set,
    _cosines,
    _unit_rows,
    bootstrap,
    cosine_matrix,
    same_traits,
    trait_matrix,
)
from personaspace.vectors.store import VectorSet

__all__ = [
    "Comparison",
    "match_layer",
    "per_trait_cosine",
    "rsa",
    "linear_cka",
    "procrustes_disparity",
    "principal_angles",
    "compare_spaces",
    "rsa_by_layer",
]


def match_layer(layer: int, n_layers_a: int, n_layers_b: int) -> int:
    """The layer of model B at the same relative depth as ``layer`` of model A.

    >>> match_layer(15, 30, 30), match_layer(15, 30, 18)
    (15, 9)
    """
    if n_layers_a == n_layers_b:
        return layer
    if n_layers_a <= 1:
        return 0
    return int(round(layer / (n_layers_a - 1) * (n_layers_b - 1)))


# --------------------------------------------------------------------------------------------
# metrics on matrices (rows = traits, in the same order in both)


def _coords(x: np.ndarray) -> np.ndarray:
    """Exact ``[n, n]`` coordinates of the rows of ``x`` (all inner products preserved)."""
    if x.shape[1] <= x.shape[0]:
        return x
    q, r = np.linalg.qr(x.T)  # x.T = q r, q orthonormal columns
    return r.T


def _tri_cos(x: np.ndarray, center: bool = False) -> np.ndarray:
    """Upper-triangle cosines of the rows of ``x`` (optionally centred first)."""
    if center:
        x = x - x.mean(0)
    return _cosines(x)[np.triu_indices(x.shape[0], k=1)]


def _corr_rows(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``v [k]`` with every row of ``m [r, k]`` (NaN for constant rows)."""
    vc = v - v.mean()
    mc = m - m.mean(axis=1, keepdims=True)
    denom = np.linalg.norm(vc) * np.linalg.norm(mc, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, mc @ vc / np.where(denom > 0, denom, 1.0), np.nan)


def _rank_rows(m: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(m, axis=-1)


def _rsa_batch(a_tri: np.ndarray, b_tris: np.ndarray, method: str) -> np.ndarray:
    """RSA of one similarity vector against many (Pearson or Spearman), vectorised."""
    b_tris = np.atleast_2d(b_tris)
    if method == "spearman":
        return _corr_rows(_rank_rows(a_tri), _rank_rows(b_tris))
    return _corr_rows(a_tri, b_tris)


def _rsa_pair(x: np.ndarray, y: np.ndarray, center: bool = False) -> tuple[float, float]:
    a, b = _tri_cos(x, center), _tri_cos(y, center)
    return float(_rsa_batch(a, b, "pearson")[0]), float(_rsa_batch(a, b, "spearman")[0])


def rsa_values(x: np.ndarray, y: np.ndarray, center: bool = False) -> dict[str, float]:
    """RSA of two persona spaces given as matrices with matching rows."""
    p, s = _rsa_pair(x, y, center)
    return {"pearson": p, "spearman": s}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between ``[n, d1]`` and ``[n, d2]`` (rows matched), centred over rows.

    Invariant to rotations and isotropic scaling of either side; 1 for rotated copies.

    >>> rng = np.random.default_rng(0); x = rng.normal(size=(6, 4))
    >>> q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    >>> round(linear_cka(x, 3 * x @ q), 6)
    1.0
    """
    xc, yc = x - x.mean(0), y - y.mean(0)
    kx, ky = xc @ xc.T, yc @ yc.T
    denom = np.linalg.norm(kx) * np.linalg.norm(ky)
    return float((kx * ky).sum() / denom) if denom > 0 else float("nan")


def procrustes_disparity(x: np.ndarray, y: np.ndarray) -> float:
    """Orthogonal Procrustes disparity in [0, 1] after centring and unit Frobenius scaling.

    ``min over orthogonal R and scale s of ||s Xc R - Yc||^2`` with ``||Xc|| = ||Yc|| = 1``, which
    equals ``1 - (nuclear norm of Xc^T Yc)^2``. Widths may differ (both are reduced to exact
    trait coordinates first).
    """
    xc, yc = _coords(x - x.mean(0)), _coords(y - y.mean(0))
    nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
    if nx == 0 or ny == 0:
        return float("nan")
    n = max(xc.shape[1], yc.shape[1])
    xc = np.pad(xc / nx, ((0, 0), (0, n - xc.shape[1])))
    yc = np.pad(yc / ny, ((0, 0), (0, n - yc.shape[1])))
    s = np.linalg.svd(xc.T @ yc, compute_uv=False)
    return float(max(0.0, 1.0 - s.sum() ** 2))


def principal_angles(x: np.ndarray, y: np.ndarray, k: int = 3, space: str = "auto") -> np.ndarray:
    """Cosines of the principal angles (descending) between the top-``k`` PCA subspaces of ``x`` and ``y``.

    ``space="activation"`` compares the component directions (same width needed); ``"trait"``
    compares the spans of the trait-coordinate vectors (works across widths); ``"auto"`` picks
    activation space when the widths match.
    """
    if space == "auto":
        space = "activation" if x.shape[1] == y.shape[1] else "trait"
    xc, yc = x - x.mean(0), y - y.mean(0)
    ux, _, vx = np.linalg.svd(xc, full_matrices=False)
    uy, _, vy = np.linalg.svd(yc, full_matrices=False)
    k = min(k, x.shape[0] - 1)
    if space == "activation":
        if x.shape[1] != y.shape[1]:
            raise PersonaspaceError(f"Activation-space angles need equal widths ({x.shape[1]} vs {y.shape[1]}); use space='trait'.")
        a, b = vx[:k].T, vy[:k].T
    elif space == "trait":
        a, b = ux[:, :k], uy[:, :k]
    else:
        raise PersonaspaceError(f"space must be 'auto', 'activation' or 'trait', got {space!r}.")
    return np.clip(np.linalg.svd(a.T @ b, compute_uv=False), 0.0, 1.0)


def _mean_diag_cos(x: np.ndarray, y: np.ndarray) -> float:
    return float((_unit_rows(x) * _unit_rows(y)).sum(1).mean())


# --------------------------------------------------------------------------------------------
# set-level API


def _matrices(a: VectorSet, b: VectorSet, layer: int | None, layer_b: int | None, traits):
    a, b = _check_set(a, "first vector set"), _check_set(b, "second vector set")
    names = same_traits(a, b, traits)
    la = default_layer(a.layers) if layer is None else a[names[0]].layer_index(layer)
    lb = match_layer(la, len(a.layers), len(b.layers)) if layer_b is None else b[names[0]].layer_index(layer_b)
    return a, b, names, la, lb


def per_trait_cosine(
    a: VectorSet, b: VectorSet, layer: int | None = None, layer_b: int | None = None, traits: Sequence[str] | None = None
) -> dict[str, float]:
    """``cos(a[t], b[t])`` for every shared trait (same width only; use RSA/CKA across widths)."""
    a, b, names, la, lb = _matrices(a, b, layer, layer_b, traits)
    if a.d_model != b.d_model:
        raise PersonaspaceError(
            f"Per-trait cosines need equal widths ({a.model}: {a.d_model}, {b.model}: {b.d_model}); compare across "
            f"widths with rsa() or compare_spaces()."
        )
    return {t: float((a[t].unit(la) @ b[t].unit(lb)).clamp(-1.0, 1.0)) for t in names}

def rsa(
    a: VectorSet,
    b: VectorSet,
    layer: int | None = None,
    layer_b: int | None = None,
    traits: Sequence[str] | None = None,
    *,
    center: bool = False,
) -> dict[str, float]:
    """Pearson and Spearman correlation of the two trait-by-trait cosine matrices (shared traits)."""
    a, b, names, la, lb = _matrices(a, b, layer, layer_b, traits)
    return rsa_values(trait_matrix(a, la, names), trait_matrix(b, lb, names), center)


def _loop(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    return lambda x, ys: np.array([fn(x, y) for y in ys], dtype=np.float64)


def _rsa_many(method: str, center: bool) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    def many(x: np.ndarray, ys: list[np.ndarray]) -> np.ndarray:
        return _rsa_batch(_tri_cos(x, center), np.stack([_tri_cos(y, center) for y in ys]), method)

    return many


# (name, fn(x, [y, ...]) -> values, higher means more similar, nulls that make sense)
def _metric_table(same_width: bool, k: int) -> list[tuple[str, Callable[[np.ndarray, list[np.ndarray]], np.ndarray], bool, tuple[str, ...]]]:
    table = []
    if same_width:
        table.append(("mean_trait_cosine", _loop(_mean_diag_cos), True, ("permuted", "random")))
    table += [
        ("rsa_pearson", _rsa_many("pearson", False), True, ("permuted", "random")),
        ("rsa_spearman", _rsa_many("spearman", False), True, ("permuted", "random")),
        ("rsa_pearson_centered", _rsa_many("pearson", True), True, ("permuted", "random")),
        ("rsa_spearman_centered", _rsa_many("spearman", True), True, ("permuted", "random")),
        ("cka_linear", _loop(linear_cka), True, ("permuted", "random")),
        ("procrustes_disparity", _loop(procrustes_disparity), False, ("permuted", "random")),
    ]
    space = "activation" if same_width else "trait"
    # a subspace of activation space ignores which row is which trait: only the random null applies
    nulls = ("random",) if same_width else ("permuted", "random")
    angles = _loop(lambda x, y: float(principal_angles(x, y, k, space).mean()))
    table.append((f"principal_angles_mean_cos_k{k}", angles, True, nulls))
    return table


def _needs_full(name: str, same_width: bool) -> bool:
    """Metrics that compare directions across the two sets need the shared activation basis;
    rotation-invariant ones (RSA, CKA, Procrustes, trait-space angles) run on cheap coordinates."""
    return same_width and (name == "mean_trait_cosine" or name.startswith("principal_angles"))


@dataclass
class Comparison:
    """Everything :func:`compare_spaces` measured, with nulls and (when possible) bootstrap intervals."""

    model_a: str
    model_b: str
    layer_a: int
    layer_b: int
    traits: list[str]
    metrics: dict[str, dict[str, Any]]
    per_trait: dict[str, dict[str, Any]]
    sim_a: SimilarityMatrix
    sim_b: SimilarityMatrix
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "layer_a": self.layer_a,
            "layer_b": self.layer_b,
            "traits": self.traits,
            "metrics": self.metrics,
            "per_trait": self.per_trait,
            "info": self.info,
            "similarity_a": self.sim_a.to_dict(),
            "similarity_b": self.sim_b.to_dict(),
        }


def _random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return _coords(_unit_rows(rng.standard_normal((n, d))))


def _bounds(metric: str) -> tuple[float, float]:
    """The range a metric's interval is clipped to: [0, 1] for CKA, Procrustes and angle cosines."""
    return (0.0, 1.0) if metric in ("cka_linear", "procrustes_disparity") or metric.startswith("principal_angles") else (-1.0, 1.0)


def compare_spaces(
    a: VectorSet,
    b: VectorSet,
    layer: int | None = None,
    layer_b: int | None = None,
    traits: Sequence[str] | None = None,
    *,
    k: int = 3,
    n_null: int = 1000,
    n_boot: int = 200,
    seed: int = 0,
) -> Comparison:
    """Compare two persona spaces at ``layer`` (of ``a``) and ``layer_b`` (default: same relative depth).

    ``n_boot=0`` skips the bootstrap; traits whose extraction runs are not on disk are held fixed
    (listed in ``info["bootstrap"]``). Same-width sets get per-trait cosines and activation-space
    principal angles; different widths get trait-space angles.
    """
    a, b, names, la, lb = _matrices(a, b, layer, layer_b, traits)
    same_width = a.d_model == b.d_model
    n = len(names)
    xa, xb = trait_matrix(a, la, names), trait_matrix(b, lb, names)
    ca, cb = _coords(xa), _coords(xb)
    table = _metric_table(same_width, k)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(n_null)]
    n_full = min(n_null, 200)  # random full-width matrices are big; 200 draws pin a 95th percentile well enough
    random_coords = [_random_unit(rng, n, b.d_model) for _ in range(n_null)]
    random_full = [_unit_rows(rng.standard_normal((n, b.d_model))) for _ in range(n_full)] if same_width else []
    metrics: dict[str, dict[str, Any]] = {}
    for name, many, higher, nulls in table:
        full = _needs_full(name, same_width)
        x_, y_ = (xa, xb) if full else (ca, cb)
        value = float(many(x_, [y_])[0])
        entry: dict[str, Any] = {"value": value, "higher_is_more_similar": higher}
        if "permuted" in nulls:
            entry["null_permuted"] = null_summary(value, many(x_, [y_[p] for p in perms]), greater=higher)
        if "random" in nulls:
            entry["null_random"] = null_summary(value, many(x_, random_full if full else random_coords), greater=higher)
        metrics[name] = entry

    per_trait: dict[str, dict[str, Any]] = {}
    if same_width:
        cos = (_unit_rows(xa) * _unit_rows(xb)).sum(1)
        cross = _unit_rows(xa) @ _unit_rows(xb).T
        off = cross[~np.eye(len(names), dtype=bool)]
        for i, t in enumerate(names):
            per_trait[t] = {"cosine": float(cos[i])}
        metrics.setdefault("mean_trait_cosine", {})["other_trait_cosines"] = {
            "mean": float(off.mean()), "q025": float(np.quantile(off, 0.025)), "q975": float(np.quantile(off, 0.975)),
            "note": "cosine between different traits across the two sets: what a per-trait cosine must beat",
        }
        metrics["mean_trait_cosine"]["random_direction_q975"] = float(1.959964 / np.sqrt(a.d_model))

    info: dict[str, Any] = {"k": k, "n_null": n_null, "n_null_random_full_width": len(random_full), "unit_rows": True, "seed": seed,
                            "principal_angle_space": "activation" if same_width else "trait"}
    if n_boot > 0:
        ba = bootstrap(a.subset(names), n_boot, [la], seed=seed)
        bb = bootstrap(b.subset(names), n_boot, [lb], seed=seed + 1)
        info["bootstrap"] = {"a": ba.info(), "b": bb.info()}
        if len(ba.fixed) < len(names) or len(bb.fixed) < len(names):
            reps: dict[str, list[float]] = {name: [] for name, *_ in table}
            trait_reps: dict[str, list[float]] = {t: [] for t in names}
            for i in range(n_boot):
                ya, yb = trait_matrix(ba.set(i), la, names), trait_matrix(bb.set(i), lb, names)
                cya, cyb = _coords(ya), _coords(yb)
                for name, many, *_ in table:
                    full = _needs_full(name, same_width)
                    reps[name].append(float(many(ya, [yb])[0] if full else many(cya, [cyb])[0]))
                if same_width:
                    cos = (_unit_rows(ya) * _unit_rows(yb)).sum(1)
                    for j, t in enumerate(names):
                        trait_reps[t].append(float(cos[j]))
            for name in reps:  # basic intervals: resampled vectors are noisier, so replicates run low
                m = metrics[name]
                m.update(bootstrap_intervals(reps[name], m["value"], bounds=_bounds(name)))
                m["boot_mean"] = float(np.nanmean(reps[name]))
            if same_width:
                for t in names:
                    per_trait[t].update(bootstrap_intervals(trait_reps[t], per_trait[t]["cosine"]))
            info["bootstrap"]["interval"] = BOOTSTRAP_INTERVALS
        else:
            info["bootstrap"]["note"] = "no extraction runs on disk for either set: no confidence intervals"
    return Comparison(
        a.model, b.model, la, lb, names, metrics, per_trait,
        cosine_matrix(a, la, names), cosine_matrix(b, lb, names), info,
    )


def rsa_by_layer(
    a: VectorSet,
    b: VectorSet,
    traits: Sequence[str] | None = None,
    *,
    n_null: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """RSA (raw and centred Pearson), CKA and, for equal widths, mean per-trait cosine at every layer of ``a``.

    Layers of ``b`` are matched by relative depth. ``null_q95`` is the 95th percentile of the
    permuted-trait (Mantel) null of the raw Pearson RSA at each layer.
    """
    a, b = _check_set(a, "first vector set"), _check_set(b, "second vector set")
    names = same_traits(a, b, traits)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(names)) for _ in range(n_null)]
    out: dict[str, Any] = {"layers_a": [], "layers_b": [], "rsa_pearson": [], "rsa_spearman": [],
                           "rsa_pearson_centered": [], "cka_linear": [], "null_q95": [], "mean_trait_cosine": [],
                           "traits": names, "model_a": a.model, "model_b": b.model, "n_null": n_null}
    for la in a.layers:
        lb = match_layer(la, len(a.layers), len(b.layers))
        if lb not in b.layers:
            continue
        xa, xb = _coords(trait_matrix(a, la, names)), _coords(trait_matrix(b, lb, names))
        p, s = _rsa_pair(xa, xb)
        out["layers_a"].append(la)
        out["layers_b"].append(lb)
        out["rsa_pearson"].append(p)
        out["rsa_spearman"].append(s)
        out["rsa_pearson_centered"].append(_rsa_pair(xa, xb, True)[0])
        out["cka_linear"].append(linear_cka(xa, xb))
        null = _rsa_many("pearson", False)(xa, [xb[q] for q in perms]) if perms else np.array([np.nan])
        out["null_q95"].append(float(np.nanquantile(null, 0.95)))
        if a.d_model == b.d_model:
            out["mean_trait_cosine"].append(_mean_diag_cos(trait_matrix(a, la, names), trait_matrix(b, lb, names)))
    return out
