"""The Semantic Valence Vector (SVV): one direction separating "good" from "bad" persona traits.

The published definition is not public (Aneja et al. 2026), so three candidates are supported and
compared, each computed per layer on unit-norm trait vectors of the labelled traits:

* ``contrast``: mean of positive-valence trait vectors minus mean of negative-valence ones;
* ``pc1``: first principal component of the centred persona space, signed so that positive
  traits project higher than negative ones;
* ``probe``: the weight vector of an L2-regularised logistic regression separating positive from
  negative traits (traits are the samples).

Each SVV is a unit vector per layer, stored as a :class:`PersonaVector` (``meta.method`` is
``svv_<definition>``; ``meta.extra`` records the labelling, the excluded traits and the settings).
With ~16 traits these are claims about a handful of points, so :func:`svv_report` evaluates every
definition by leave-one-trait-out: rebuild the direction without trait ``t`` and check whether
``t`` lands on the correct side of the midpoint between the two class means (the probe uses its own
decision threshold), with a Wilson interval and a label-shuffle null.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personaspace._util.io import write_json
from personaspace._util.stats import permutation_p, wilson_ci
from personaspace.engine.layers import default_layer
from personaspace.errors import PersonaspaceError
from personaspace.geometry.space import _check_set, _need_both, _pca_arrays, trait_matrix, valence_labels
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

__all__ = ["DEFINITIONS", "svv", "svv_direction", "svv_report", "SVVReport", "WithSVV"]

DEFINITIONS = ("contrast", "pc1", "probe")


def _logistic_newton(z: np.ndarray, y: np.ndarray, c: float, iters: int = 100) -> tuple[np.ndarray, float]:
    """Minimise ``0.5 |w|^2 + c * sum log(1 + exp(-y (z.w + b)))`` (unpenalised ``b``) by damped Newton.

    The objective of scikit-learn's L2 ``LogisticRegression(C=c)``; written out because a
    ``(n+1)``-parameter Newton step costs microseconds, while the generic solver's overhead
    dominated leave-one-out loops with label-shuffle nulls.
    """
    n, k = z.shape
    za = np.hstack([z, np.ones((n, 1))])
    theta = np.zeros(k + 1)
    reg = np.ones(k + 1)
    reg[-1] = 1e-10

    def objective(t: np.ndarray) -> float:
        return 0.5 * float((reg * t * t).sum()) + c * float(np.logaddexp(0.0, -y * (za @ t)).sum())

    f = objective(theta)
    for _ in range(iters):
        m = y * (za @ theta)
        p = 0.5 * (1.0 + np.tanh(-0.5 * m))  # sigmoid(-m), overflow-free
        grad = reg * theta - c * za.T @ (y * p)
        hess = np.diag(reg) + c * (za * (p * (1 - p))[:, None]).T @ za
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)  # Newton decrement squared: twice the predicted decrease
        if decrement < 1e-14 * max(1.0, abs(f)):
            break
        t = 1.0
        while True:
            cand = theta - t * step
            fc = objective(cand)
            if fc <= f - 1e-4 * t * decrement or t < 1e-6:
                break
            t *= 0.5
        theta, f = cand, fc
    return theta[:k], float(theta[k])


def _probe(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression ``(w [d], b)`` on trait rows; positive decision = positive valence.

    The optimal ``w`` lies in the span of the rows (the penalty is rotation invariant), so the fit
    runs on exact ``n x n`` coordinates and is mapped back: the same solution, much cheaper.
    """
    q, r = np.linalg.qr(x.T)  # x = r.T @ q.T
    w, b = _logistic_newton(r.T, np.where(y > 0, 1.0, -1.0), c)
    return q @ w, b


def svv_direction(x: np.ndarray, y: np.ndarray, definition: str = "contrast", *, c: float = 10.0) -> np.ndarray:
    """Unit SVV direction ``[d]`` from trait rows ``x [n, d]`` (unit norm) and labels ``y`` (+1 / -1).

    >>> x = np.array([[1.0, 0.1], [0.9, -0.1], [-1.0, 0.2], [-0.8, 0.0]])
    >>> y = np.array([1, 1, -1, -1])
    >>> [round(float(v), 3) for v in svv_direction(x, y, "pc1")]
    [0.998, -0.057]
    """
    if definition not in DEFINITIONS:
        raise PersonaspaceError(f"Unknown SVV definition {definition!r}; choose one of {DEFINITIONS}.")
    pos, neg = x[y > 0], x[y < 0]
    if definition == "contrast":
        v = pos.mean(0) - neg.mean(0)
    elif definition == "pc1":
        v = _pca_arrays(x)[1][0]
        if (pos @ v).mean() < (neg @ v).mean():
            v = -v
    else:
        v = _probe(x, y, c)[0]
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _labelled(vectors: VectorSet, valence: Mapping[str, Any] | None) -> tuple[list[str], np.ndarray, list[str]]:
    labels = valence_labels(vectors.traits, valence)
    _need_both(labels)
    names = list(labels)
    excluded = [t for t in vectors.traits if t not in labels]
    return names, np.array([labels[t] for t in names]), excluded


def svv(
    vectors: VectorSet,
    definition: str = "contrast",
    *,
    valence: Mapping[str, Any] | None = None,
    c: float = 10.0,
    name: str = "svv",
) -> PersonaVector:
    """The Semantic Valence Vector of ``vectors`` under one ``definition``, unit norm at every layer.

    ``valence`` maps trait -> ``"positive"``/``"negative"`` (or +1/-1, 0 to exclude) and overrides
    the trait library's labels; traits without a label are left out and listed in
    ``meta.extra["excluded"]``. ``c`` is the probe's inverse L2 strength (on unit-norm rows).
    """
    vectors = _check_set(vectors)
    if definition not in DEFINITIONS:
        raise PersonaspaceError(f"Unknown SVV definition {definition!r}; choose one of {DEFINITIONS}.")
    names, y, excluded = _labelled(vectors, valence)
    rows = [svv_direction(trait_matrix(vectors, layer, names), y, definition, c=c) for layer in vectors.layers]
    first = vectors[names[0]]
    meta = VectorMeta(
        trait=name,
        model=vectors.model,
        model_hash=first.meta.model_hash,
        layer_convention=first.meta.layer_convention,
        position=first.position,
        method=f"svv_{definition}",
        judge=first.meta.judge,
        last_layer_post_norm=first.meta.last_layer_post_norm,
        extra={
            "definition": definition,
            "valence": {t: ("positive" if v > 0 else "negative") for t, v in zip(names, y)},
            "excluded": excluded,
            "unit_norm": True,
            "trait_rows": "unit-normalised trait vectors at each layer",
            **({"probe_C": c} if definition == "probe" else {}),
            **({"centered": True} if definition == "pc1" else {}),
        },
    )
    return PersonaVector(torch.from_numpy(np.stack(rows)).float(), meta, layers=vectors.layers)


class WithSVV(VectorSet):
    """A VectorSet that also answers ``svv`` (the contrast definition) and ``svv_<definition>``.

    They are derived from the set's own trait vectors on first use and not listed among its traits,
    so a steering spec such as ``svv@L15`` works on any set with labelled traits of both valences
    (the shipped sets included) and geometry over the set is unchanged.
    """

    def __init__(self, vectors: VectorSet):
        super().__init__(vectors)
        self._derived: dict[str, PersonaVector] = {}

    def __getitem__(self, name: str) -> PersonaVector:
        try:
            return super().__getitem__(name)
        except KeyError:
            definition = "contrast" if name == "svv" else name[len("svv_"):] if name.startswith("svv_") else None
            if definition not in DEFINITIONS:
                raise
        if name not in self._derived:
            self._derived[name] = svv(VectorSet(self), definition, name=name)
        return self._derived[name]


# --------------------------------------------------------------------------------------------
# leave-one-trait-out evaluation


def _loto_correct(x: np.ndarray, y: np.ndarray, definition: str, c: float) -> np.ndarray:
    """Per trait: does its held-out projection fall on its own valence's side? (bool ``[n]``)"""
    out = np.zeros(len(y), dtype=bool)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        xt, yt = x[keep], y[keep]
        if (yt > 0).sum() == 0 or (yt < 0).sum() == 0:
            continue
        if definition == "probe":
            w, b = _probe(xt, yt, c)
            out[i] = (float(x[i] @ w) + b > 0) == (y[i] > 0)
            continue
        v = svv_direction(xt, yt, definition, c=c)
        proj = xt @ v
        threshold = 0.5 * (proj[yt > 0].mean() + proj[yt < 0].mean())
        out[i] = (x[i] @ v > threshold) == (y[i] > 0)
    return out


@dataclass
class SVVReport:
    """All three SVV definitions, their agreement and their leave-one-trait-out accuracy."""

    vectors: dict[str, PersonaVector]
    layer: int
    agreement: dict[str, float]  # "contrast~pc1" -> cosine at ``layer``
    agreement_by_layer: dict[str, list[float]]
    loto: dict[str, dict[str, Any]]  # definition -> accuracy at ``layer`` with CI and null
    loto_by_layer: dict[str, list[float]]
    valence: dict[str, int]
    excluded: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": next(iter(self.vectors.values())).model,
            "layer": self.layer,
            "definitions": list(self.vectors),
            "agreement": self.agreement,
            "agreement_by_layer": self.agreement_by_layer,
            "loto": self.loto,
            "loto_by_layer": self.loto_by_layer,
            "valence": {t: ("positive" if v > 0 else "negative") for t, v in self.valence.items()},
            "excluded": self.excluded,
            "settings": self.settings,
        }

    def save(self, directory: str | Path) -> Path:
        """Write every definition as a vector pair ``svv_<definition>.*`` and ``svv_report.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for definition, v in self.vectors.items():
            named = PersonaVector(v.data, dataclasses.replace(v.meta, trait=f"svv_{definition}"), layers=v.layers)
            VectorSet([named]).save(d)
        write_json(d / "svv_report.json", self.to_dict())
        return d


def svv_report(
    vectors: VectorSet,
    layer: int | None = None,
    *,
    valence: Mapping[str, Any] | None = None,
    c: float = 10.0,
    n_perm: int = 200,
    seed: int = 0,
    loto_layers: Sequence[int] | None = None,
) -> SVVReport:
    """Build the three SVVs, their mutual cosines, and leave-one-trait-out valence-sign accuracy.

    At ``layer`` (default: the middle layer) the LOTO accuracy gets a Wilson 95 % interval and a
    null from ``n_perm`` shuffles of the valence labels (chance is not exactly 50 % with unequal
    classes). ``loto_by_layer`` gives the accuracy at every layer in ``loto_layers`` (default all).
    """
    vectors = _check_set(vectors)
    layer = default_layer(vectors.layers) if layer is None else vectors[vectors.traits[0]].layer_index(layer)
    names, y, excluded = _labelled(vectors, valence)
    vecs = {d: svv(vectors, d, valence=valence, c=c) for d in DEFINITIONS}
    pairs = [(a, b) for i, a in enumerate(DEFINITIONS) for b in DEFINITIONS[i + 1 :]]
    agreement_by_layer = {f"{a}~{b}": [round(float(x), 6) for x in vecs[a].cosine(vecs[b])] for a, b in pairs}
    agreement = {k: float(vecs[a].cosine(vecs[b], layer)) for k, (a, b) in zip(agreement_by_layer, pairs)}
    rows = list(vectors.layers) if loto_layers is None else [vectors[names[0]].layer_index(x) for x in loto_layers]
    loto_by_layer = {d: [] for d in DEFINITIONS}
    for l in rows:
        x = trait_matrix(vectors, l, names)
        for d in DEFINITIONS:
            loto_by_layer[d].append(float(_loto_correct(x, y, d, c).mean()))
    x = trait_matrix(vectors, layer, names)
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(y) for _ in range(n_perm)]
    loto: dict[str, dict[str, Any]] = {}
    for d in DEFINITIONS:
        correct = _loto_correct(x, y, d, c)
        k, n = int(correct.sum()), len(y)
        null = np.array([_loto_correct(x, ys, d, c).mean() for ys in shuffles]) if n_perm else np.array([])
        loto[d] = {
            "correct": k,
            "n": n,
            "accuracy": k / n,
            "ci95": list(wilson_ci(k, n)),
            "wrong": [t for t, ok in zip(names, correct) if not ok],
            "null_mean": float(null.mean()) if len(null) else None,
            "null_q95": float(np.quantile(null, 0.95)) if len(null) else None,
            "p_perm": permutation_p(k / n, null) if len(null) else None,
        }
    return SVVReport(
        vecs, layer, agreement, agreement_by_layer, loto, {"layers": rows, **loto_by_layer},
        dict(zip(names, y.tolist())), excluded, {"probe_C": c, "n_perm": n_perm, "seed": seed, "unit_rows": True},
    )
