"""Geometry of one persona space: trait-by-trait cosines, PCA, clustering, valence separation, nulls.

The *persona space* at a layer is the matrix of trait vectors ``X [n_traits, d_model]``. By default
every row is scaled to unit norm first (directions, not magnitudes: a trait whose contrast happens to
move the residual stream further must not dominate the PCA).

Mean-difference vectors of different traits share a common component (whatever any "act as X vs. do
not act as X" contrast moves, such as assistant-ness or instruction-following). Cosines are therefore
reported both raw and *centred* (the mean trait vector removed first, ``center=True``); PCA always
centres the persona space (the mean trait vector is subtracted before the SVD) and says so in its
result. Every headline number can be set against a null model: random directions with the same
norms (:func:`random_set`) or shuffled valence labels.

Layer ``L`` is the output of decoder block ``L``, counted from 0.

>>> import torch
>>> from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet
>>> vs = VectorSet([PersonaVector(torch.tensor([[1.0, 0.0, 0.0]]), VectorMeta(trait="a", model="toy")),
...                 PersonaVector(torch.tensor([[1.0, 1.0, 0.0]]), VectorMeta(trait="b", model="toy"))])
>>> cosine_matrix(vs, 0).values.round(4).tolist()
[[1.0, 0.7071], [0.7071, 1.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from personaspace._util.stats import auroc, permutation_p
from personaspace.errors import PersonaspaceError, VectorShapeError
from personaspace.vectors.store import PersonaVector, VectorSet

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = [
    "SimilarityMatrix",
    "PCAResult",
    "Clustering",
    "trait_matrix",
    "cosine_matrix",
    "pca",
    "cluster",
    "valence_labels",
    "valence_separation",
    "layer_profile",
    "random_set",
]


# --------------------------------------------------------------------------------------------
# basics


def _check_set(vectors: Any, what: str = "vectors") -> VectorSet:
    if isinstance(vectors, PersonaVector):
        vectors = VectorSet([vectors])
    if isinstance(vectors, Mapping) and not isinstance(vectors, VectorSet):
        vectors = VectorSet(vectors)
    if not isinstance(vectors, VectorSet):
        raise PersonaspaceError(f"{what} must be a VectorSet (see load_vectors), got {type(vectors).__name__}.")
    return vectors


def _traits(vectors: VectorSet, traits: Sequence[str] | None, minimum: int = 2) -> list[str]:
    names = vectors.traits if traits is None else ([traits] if isinstance(traits, str) else list(traits))
    for t in names:
        vectors[t]  # UnknownTraitError with the list of available traits
    if len(set(names)) != len(names):
        raise PersonaspaceError(f"Trait list has duplicates: {names}.")
    if len(names) < minimum:
        raise PersonaspaceError(f"Persona-space geometry needs at least {minimum} traits, got {len(names)}: {names}.")
    return names


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def trait_matrix(
    vectors: VectorSet,
    layer: int,
    traits: Sequence[str] | None = None,
    *,
    unit: bool = True,
    center: bool = False,
) -> Float[np.ndarray, "trait d_model"]:
    """The persona space at ``layer`` as float64 ``[n_traits, d_model]`` (rows in ``traits`` order).

    ``unit`` scales every trait vector to norm 1; ``center`` then subtracts the mean trait vector.
    """
    vectors = _check_set(vectors)
    names = _traits(vectors, traits, minimum=1)
    x = vectors.stack(layer, names).double().numpy()
    if unit:
        x = _unit_rows(x)
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    return x


# --------------------------------------------------------------------------------------------
# cosine similarity


@dataclass
class SimilarityMatrix:
    """Trait-by-trait cosine similarities at one layer (symmetric, ones on the diagonal)."""

    traits: list[str]
    values: Float[np.ndarray, "trait trait"]
    layer: int
    centered: bool
    model: str = ""

    def upper(self) -> np.ndarray:
        """The ``n (n - 1) / 2`` off-diagonal entries above the diagonal (what RSA correlates)."""
        return self.values[np.triu_indices(len(self.traits), k=1)]

    def __getitem__(self, pair: tuple[str, str]) -> float:
        a, b = pair
        return float(self.values[self.traits.index(a), self.traits.index(b)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "centered": self.centered,
            "traits": self.traits,
            "values": np.round(self.values, 6).tolist(),
        }


def _cosines(x: np.ndarray) -> np.ndarray:
    u = _unit_rows(x)
    return np.clip(u @ u.T, -1.0, 1.0)


def cosine_matrix(
    vectors: VectorSet, layer: int, traits: Sequence[str] | None = None, *, center: bool = False
) -> SimilarityMatrix:
    """Cosine similarity of every pair of traits at ``layer``.

    ``center=True`` removes the mean (unit) trait vector first, so the shared component of all
    mean-difference contrasts does not make every pair look alike.
    """
    vectors = _check_set(vectors)
    names = _traits(vectors, traits)
    x = trait_matrix(vectors, layer, names, unit=True, center=center)
    return SimilarityMatrix(names, _cosines(x), vectors[names[0]].layer_index(layer), center, vectors.model)


# --------------------------------------------------------------------------------------------
# PCA


@dataclass
class PCAResult:
    """PCA of the (centred) persona space at one layer.

    ``coords[i, k]`` is trait ``i``'s coordinate on component ``k``; ``components[k]`` is that
    component's unit direction in activation space (its loadings on the ``d_model`` features).
    """

    traits: list[str]
    layer: int
    explained_variance_ratio: np.ndarray  # [k]
    components: np.ndarray  # [k, d_model]
    coords: np.ndarray  # [n_traits, k]
    centered: bool = True
    unit: bool = True
    mean: np.ndarray = field(default=None, repr=False)  # [d_model], the subtracted mean trait vector
    model: str = ""

    def to_dict(self, components: int = 5) -> dict[str, Any]:
        k = min(components, len(self.explained_variance_ratio))
        return {
            "model": self.model,
            "layer": self.layer,
            "centered": self.centered,
            "unit_rows": self.unit,
            "traits": self.traits,
            "explained_variance_ratio": np.round(self.explained_variance_ratio, 6).tolist(),
            "coords": {t: np.round(self.coords[i, :k], 6).tolist() for i, t in enumerate(self.traits)},
        }


def _pca_arrays(x: np.ndarray, center: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(explained variance ratio [k], components [k, d], coords [n, k], mean [d]) of rows of ``x``."""
    mean = x.mean(axis=0) if center else np.zeros(x.shape[1])
    xc = x - mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(x.shape[0] - (1 if center else 0), len(s))
    k = max(k, 1)
    u, s, vt = u[:, :k], s[:k], vt[:k]
    # a deterministic sign: each component points towards its largest-magnitude trait coordinate
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    u, vt = u * signs, vt * signs[:, None]
    var = s**2
    total = var.sum()
    evr = var / total if total > 0 else np.zeros_like(var)
    return evr, vt, u * s, mean


def pca(
    vectors: VectorSet,
    layer: int,
    traits: Sequence[str] | None = None,
    *,
    unit: bool = True,
    center: bool = True,
) -> PCAResult:
    """PCA of the persona space at ``layer``: traits are the samples, activation dims the features.

    The mean trait vector is subtracted first (``center=True``, the default; say so when
    reporting), so PC1 is the main axis along which traits *differ*, not their common component.
    With ``n`` traits there are at most ``n - 1`` components.
    """
    vectors = _check_set(vectors)
    names = _traits(vectors, traits, minimum=3)
    x = trait_matrix(vectors, layer, names, unit=unit)
    evr, comps, coords, mean = _pca_arrays(x, center)
    return PCAResult(names, vectors[names[0]].layer_index(layer), evr, comps, coords, center, unit, mean, vectors.model)


# --------------------------------------------------------------------------------------------
# clustering


@dataclass
class Clustering:
    """Average-linkage hierarchical clustering of traits on cosine distance."""

    traits: list[str]
    labels: dict[str, int]
    order: list[str]  # dendrogram leaf order (similar traits adjacent)
    linkage: np.ndarray
    silhouette: float | None
    layer: int
    centered: bool

    def groups(self) -> list[list[str]]:
        out: dict[int, list[str]] = {}
        for t in self.order:
            out.setdefault(self.labels[t], []).append(t)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "centered": self.centered,
            "groups": self.groups(),
            "order": self.order,
            "silhouette": None if self.silhouette is None else round(self.silhouette, 4),
        }


def cluster(
    vectors: VectorSet,
    layer: int,
    n_clusters: int = 2,
    traits: Sequence[str] | None = None,
    *,
    center: bool = True,
    method: str = "average",
) -> Clustering:
    """Cluster traits by cosine distance ``1 - cos`` (centred by default) into ``n_clusters`` groups."""
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import squareform

    vectors = _check_set(vectors)
    names = _traits(vectors, traits, minimum=3)
    if not 1 <= n_clusters <= len(names):
        raise PersonaspaceError(f"n_clusters must be between 1 and the number of traits ({len(names)}), got {n_clusters}.")
    sim = cosine_matrix(vectors, layer, names, center=center).values
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method=method)
    labels = fcluster(z, t=n_clusters, criterion="maxclust")
    order = [names[i] for i in leaves_list(z)]
    sil = _silhouette(dist, labels) if 2 <= len(set(labels)) <= len(names) - 1 else None
    return Clustering(names, {t: int(c) for t, c in zip(names, labels)}, order, z, sil, vectors[names[0]].layer_index(layer), center)


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette width from a distance matrix (singleton clusters score 0, as usual)."""
    scores = []
    for i in range(len(labels)):
        same = (labels == labels[i]) & (np.arange(len(labels)) != i)
        if not same.any():
            scores.append(0.0)
            continue
        a = dist[i, same].mean()
        b = min(dist[i, labels == other].mean() for other in set(labels.tolist()) if other != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------
# valence


_SIGNS = {"positive": 1, "+": 1, "pos": 1, "negative": -1, "-": -1, "neg": -1}


@functools.lru_cache(maxsize=256)
def _library_valence(trait: str) -> str | None:
    """The ``valence`` of a built-in trait's high pole, or None for traits the library lacks."""
    from personaspace.errors import TraitFileError, UnknownTraitError
    from personaspace.traits import list_traits, load_trait

    if trait not in list_traits():
        return None
    try:
        return load_trait(trait).valence
    except (UnknownTraitError, TraitFileError):
        return None


def valence_labels(traits: Sequence[str], valence: Mapping[str, Any] | None = None) -> dict[str, int]:
    """+1 / -1 for every trait whose high pole has positive / negative valence; others are left out.

    ``valence`` overrides or extends the built-in labels (from each trait file's ``valence``):
    values may be ``+1``/``-1``, ``"positive"``/``"negative"``, or ``0``/``"neutral"``/``None`` to
    leave a trait out. Traits unknown to the library and not labelled are left out.

    >>> valence_labels(["evil", "empathy", "mystery"], {"mystery": "positive"})
    {'evil': -1, 'empathy': 1, 'mystery': 1}
    """
    given = dict(valence or {})
    out: dict[str, int] = {}
    for t in traits:
        if t in given:
            value = given[t]
            if isinstance(value, str):
                key = value.strip().lower()
                if key in ("neutral", "none", "0", ""):
                    continue
                if key not in _SIGNS:
                    raise PersonaspaceError(f"Valence of {t!r} must be positive or negative (or +1/-1), got {value!r}.")
                out[t] = _SIGNS[key]
            elif value is None or value == 0:
                continue
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[t] = 1 if value > 0 else -1
            else:
                raise PersonaspaceError(f"Valence of {t!r} must be positive or negative (or +1/-1), got {value!r}.")
            continue
        pole = _library_valence(t)
        if pole in _SIGNS:
            out[t] = _SIGNS[pole]
    unknown = sorted(set(given) - set(traits))
    if unknown:
        raise PersonaspaceError(f"Valence given for trait(s) {unknown} that are not in the vector set ({list(traits)}).")
    return out


def _need_both(labels: Mapping[str, int], minimum: int = 2) -> None:
    pos = sum(1 for v in labels.values() if v > 0)
    neg = sum(1 for v in labels.values() if v < 0)
    if pos < minimum or neg < minimum:
        raise PersonaspaceError(
            f"Valence analyses need at least {minimum} positive and {minimum} negative traits; got {pos} positive and "
            f"{neg} negative ({dict(labels)}). Add traits or pass valence={{trait: 'positive'|'negative'}}."
        )


def _separation_stat(coord: np.ndarray, y: np.ndarray) -> float:
    """Sign-free AUROC of one coordinate for positive vs negative traits: max(A, 1 - A)."""
    a = auroc(coord[y > 0], coord[y < 0])
    return max(a, 1.0 - a)


def valence_separation(
    vectors: VectorSet,
    layer: int,
    valence: Mapping[str, Any] | None = None,
    *,
    component: int = 0,
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Do positive- and negative-valence traits separate on a principal component of the persona space?

    PCA is fitted on the labelled traits only (centred, unit rows). The statistic is the sign-free
    AUROC ``max(A, 1 - A)`` of the component's coordinates (PC signs are arbitrary, so picking the
    better sign is part of the statistic, and the null accounts for it): 1.0 = perfectly separated,
    0.5 = no separation. ``p`` is the share of ``n_perm`` valence-label shuffles reaching the observed
    value (the PCA does not use labels, so shuffling labels is the exact null). ``gap`` is the
    difference of class-mean coordinates in the direction that makes positive traits higher.
    """
    vectors = _check_set(vectors)
    labels = valence_labels(vectors.traits, valence)
    _need_both(labels)
    names = list(labels)
    res = pca(vectors, layer, names)
    if component >= res.coords.shape[1]:
        raise PersonaspaceError(f"Component {component} does not exist: {len(names)} traits give {res.coords.shape[1]} components.")
    coord = res.coords[:, component]
    y = np.array([labels[t] for t in names])
    stat = _separation_stat(coord, y)
    rng = np.random.default_rng(seed)
    null = np.array([_separation_stat(coord, rng.permutation(y)) for _ in range(n_perm)])
    sign = 1.0 if coord[y > 0].mean() >= coord[y < 0].mean() else -1.0
    return {
        "layer": res.layer,
        "component": component,
        "explained_variance_ratio": float(res.explained_variance_ratio[component]),
        "auroc": stat,
        "p_perm": permutation_p(stat, null),
        "null_mean": float(null.mean()),
        "null_q95": float(np.quantile(null, 0.95)),
        "gap": float(sign * (coord[y > 0].mean() - coord[y < 0].mean())),
        "n_positive": int((y > 0).sum()),
        "n_negative": int((y < 0).sum()),
        "coords": {t: float(sign * c) for t, c in zip(names, coord)},
        "n_perm": n_perm,
    }


# --------------------------------------------------------------------------------------------
# every layer


def _mean_abs_offdiag(sim: np.ndarray) -> float:
    n = sim.shape[0]
    return float(np.abs(sim[np.triu_indices(n, k=1)]).mean()) if n > 1 else float("nan")


def layer_profile(vectors: VectorSet, valence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per-layer summary of the persona space: norms, mean |cosine| (raw, centred), PC1 share, valence gap.

    ``valence_gap`` is the mean cosine between traits of the same valence minus the mean cosine
    between traits of opposite valence (centred cosines; positive = the valence poles pull apart).
    ``pc1_auroc`` is :func:`valence_separation`'s sign-free AUROC on PC1 (labelled traits only).
    """
    vectors = _check_set(vectors)
    names = vectors.traits
    labels = valence_labels(names, valence)
    have_valence = sum(v > 0 for v in labels.values()) >= 2 and sum(v < 0 for v in labels.values()) >= 2
    out: dict[str, Any] = {
        "layers": list(vectors.layers),
        "traits": names,
        "norms": {t: [round(float(x), 5) for x in vectors[t].norms()] for t in names},
        "mean_abs_cos_raw": [],
        "mean_abs_cos_centered": [],
        "pc1_explained": [],
        "valence_gap": [],
        "pc1_auroc": [],
    }
    for layer in vectors.layers:
        x = trait_matrix(vectors, layer, names)
        out["mean_abs_cos_raw"].append(_mean_abs_offdiag(_cosines(x)))
        out["mean_abs_cos_centered"].append(_mean_abs_offdiag(_cosines(x - x.mean(0))))
        if len(names) >= 3:
            out["pc1_explained"].append(float(_pca_arrays(x)[0][0]))
        if have_valence:
            lab = list(labels)
            xl = trait_matrix(vectors, layer, lab)
            y = np.array([labels[t] for t in lab])
            sim = _cosines(xl - xl.mean(0))
            same = y[:, None] == y[None, :]
            off = ~np.eye(len(lab), dtype=bool)
            out["valence_gap"].append(float(sim[same & off].mean() - sim[~same].mean()))
            out["pc1_auroc"].append(_separation_stat(_pca_arrays(xl)[2][:, 0], y))
    return out


# --------------------------------------------------------------------------------------------
# null model


def random_set(vectors: VectorSet, seed: int = 0, d_model: int | None = None) -> VectorSet:
    """Same traits, layers and norms, but every vector an independent random Gaussian direction.

    ``d_model`` draws the random vectors at another width (a random "other model").
    """
    vectors = _check_set(vectors)
    d = vectors.d_model if d_model is None else int(d_model)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for t in vectors.traits:
        v = vectors[t]
        noise = torch.randn(v.n_layers, d, generator=gen)
        data = noise / noise.norm(dim=1, keepdim=True) * v.norms()[:, None]
        out.append(PersonaVector(data, v.meta, layers=v.layers))
    return VectorSet(out)


def null_distribution(
    statistic: Callable[[VectorSet], float], vectors: VectorSet, n: int = 200, seed: int = 0
) -> list[float]:
    """``statistic`` evaluated on ``n`` random sets (:func:`random_set`) shaped like ``vectors``."""
    return [float(statistic(random_set(vectors, seed=seed + i))) for i in range(n)]


def _check_layer(vectors: VectorSet, layer: int) -> int:
    """Resolve ``layer`` against the set (raises LayerOutOfRangeError with the valid range)."""
    return vectors[vectors.traits[0]].layer_index(layer)


def same_traits(a: VectorSet, b: VectorSet, traits: Sequence[str] | None = None) -> list[str]:
    """Traits present in both sets (sorted), or the checked ``traits``; at least 3 are needed."""
    if traits is None:
        names = sorted(set(a.traits) & set(b.traits))
    else:
        names = list(traits)
        for t in names:
            a[t], b[t]
    if len(names) < 3:
        raise VectorShapeError(
            f"Comparing two persona spaces needs at least 3 traits present in both; shared: {names} "
            f"(first: {a.traits}; second: {b.traits})."
        )
    return names


# --------------------------------------------------------------------------------------------
# bootstrap over kept pairs


def _resolve_run_dir(vector: PersonaVector) -> Any:
    from pathlib import Path

    raw = vector.meta.extra.get("run_dir")
    if not raw:
        return None
    p = Path(str(raw)).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, Path(__file__).resolve().parents[2] / p]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    return None


def pair_differences(vector: PersonaVector, layers: Sequence[int] | None = None) -> Float[torch.Tensor, "pair layer d_model"]:
    """Per kept pair, ``pos - neg`` activations at ``layers`` (default: all), float32.

    From the pair differences stored with the vector (:attr:`PersonaVector.pairs`, float16, shipped
    with the built-in sets) when they cover ``layers``; otherwise read back from the extraction run
    directory in ``meta.extra["run_dir"]``, whose kept pairs are selected again with the run's own
    thresholds and judge. Either way their mean is checked against the vector, so data that no longer
    matches it is an error rather than a silently wrong confidence interval.
    """
    from personaspace.errors import CorruptFileError

    wanted = list(vector.layers) if layers is None else [vector.layers[vector._row(x)] for x in layers]
    stored = vector.pairs
    if stored is not None and stored.covers(wanted):
        diffs = stored.select(wanted).data.float()
        expected = vector.data[[vector._row(x) for x in wanted]]
        err = float((diffs.mean(0) - expected).norm() / expected.norm().clamp(min=1e-12))
        if err > 5e-3:  # float16 rounding stays far below this
            raise CorruptFileError(
                f"The {vector.trait!r} vector's stored pair differences do not average to it (relative error {err:.2e}); "
                f"the file was altered after extraction. Re-save the vector from its run."
            )
        return diffs + (expected - diffs.mean(0))  # remove the float16 rounding from the mean: replicates centre on the vector
    return _run_pair_differences(vector, layers, stored_layers=None if stored is None else stored.layers)


def _run_pair_differences(vector: PersonaVector, layers: Sequence[int] | None, stored_layers: Sequence[int] | None) -> torch.Tensor:
    import json

    from safetensors import safe_open

    from personaspace._util.io import read_jsonl
    from personaspace.errors import CorruptFileError
    from personaspace.extraction import pipeline as ex
    run = _resolve_run_dir(vector)
    if run is None:
        have = f"; its stored pair differences cover layers {list(stored_layers)} only" if stored_layers else ""
        raise PersonaspaceError(
            f"The {vector.trait!r} vector has no readable extraction run directory "
            f"(meta.extra['run_dir'] = {vector.meta.extra.get('run_dir')!r}){have}; bootstrap needs its kept pairs."
        )
    rows_layers = list(range(vector.n_layers)) if layers is None else [vector._row(x) for x in layers]
    try:
        config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"Cannot read the run files of {run} ({exc}).") from exc
    cfg = ex.ExtractionConfig.from_dict(config)
    rows = ex.rows_from_generations(read_jsonl(run / "generations.jsonl"))
    judge = summary.get("judge", cfg.judge)
    scores = {int(s["id"]): s for s in read_jsonl(run / "scores.jsonl") if s.get("judge") == judge}
    judged = cfg.judge != "none"
    if judged and any(r.id not in scores for r in rows):
        raise CorruptFileError(f"{run} lacks judge scores ({judge}) for some rows; rerun the extraction to complete it.")
    kept, _ = ex.select_pairs(rows, scores, cfg, judged=judged)
    if not kept:
        raise CorruptFileError(f"{run}: no kept pairs; it cannot have produced the {vector.trait!r} vector.")
    position = vector.position
    need = {i for pair in kept for i in pair}
    table: dict[int, torch.Tensor] = {}
    for f in sorted((run / "activations").glob("batch-*.safetensors")):
        with safe_open(str(f), "pt") as st:
            ids = st.get_tensor("row_ids").tolist()
            if not need.intersection(ids):
                continue
            acts = st.get_tensor(position)[:, rows_layers]
        for j, i in enumerate(ids):
            if i in need:
                table[i] = acts[j]
    if need - set(table):
        raise CorruptFileError(f"{run} is missing activations for {len(need - set(table))} kept rows.")
    diffs = torch.stack([table[p] - table[n] for p, n in kept]).float()
    expected = vector.data[rows_layers]
    err = (diffs.mean(0) - expected).norm() / expected.norm().clamp(min=1e-12)
    if float(err) > 1e-3:
        raise CorruptFileError(
            f"The kept pairs in {run} do not reproduce the {vector.trait!r} vector (relative error {float(err):.2e}); "
            f"the run directory was changed after extraction (other judge or thresholds?)."
        )
    return diffs


@dataclass
class Bootstrap:
    """Bootstrap replicates of a VectorSet: kept pairs resampled with replacement, vectors recomputed.

    ``replicates[trait]`` is ``[n_boot, len(layers), d_model]``; traits without a readable run
    directory stay fixed at their point estimate and are listed in ``fixed``.
    """

    vectors: VectorSet
    layers: tuple[int, ...]
    replicates: dict[str, torch.Tensor]
    n_pairs: dict[str, int]
    fixed: list[str]
    seed: int

    @property
    def n_boot(self) -> int:
        return next(iter(self.replicates.values())).shape[0] if self.replicates else 0

    def __len__(self) -> int:
        return self.n_boot

    def set(self, i: int) -> VectorSet:
        """Replicate ``i`` as a VectorSet holding only the bootstrapped layers."""
        out = []
        for t in self.vectors.traits:
            v = self.vectors[t]
            data = self.replicates[t][i] if t in self.replicates else v.data[[v._row(x) for x in self.layers]]
            out.append(PersonaVector(data, v.meta, layers=self.layers))
        return VectorSet(out)

    def __iter__(self):
        return (self.set(i) for i in range(self.n_boot))

    def info(self) -> dict[str, Any]:
        return {"n_boot": self.n_boot, "layers": list(self.layers), "pairs_per_trait": self.n_pairs,
                "fixed_traits": self.fixed, "seed": self.seed, "resampled": "kept (pos, neg) pairs, with replacement"}


def bootstrap(
    vectors: VectorSet,
    n_boot: int = 200,
    layers: Sequence[int] | None = None,
    *,
    seed: int = 0,
    require: bool = False,
) -> Bootstrap:
    """Resample each trait's kept pairs with replacement ``n_boot`` times and recompute its vectors.

    A mean-difference vector is the mean of its kept pairs' ``pos - neg`` differences, so each
    replicate is ``counts @ diffs / n_kept`` with multinomial ``counts``. Only ``layers`` (default:
    every stored layer) are kept in memory. ``require=True`` makes a trait without run directory
    an error instead of a fixed trait.
    """
    vectors = _check_set(vectors)
    if n_boot < 1:
        raise PersonaspaceError(f"n_boot must be positive, got {n_boot}.")
    first = vectors[vectors.traits[0]]
    chosen = tuple(first.layers) if layers is None else tuple(sorted({first.layer_index(x) for x in layers}))
    rng = np.random.default_rng(seed)
    reps: dict[str, torch.Tensor] = {}
    n_pairs: dict[str, int] = {}
    fixed: list[str] = []
    for t in vectors.traits:
        v = vectors[t]
        try:
            diffs = pair_differences(v, chosen)  # [n, L, d]
        except PersonaspaceError:
            if require:
                raise
            fixed.append(t)
            continue
        n = diffs.shape[0]
        counts = torch.from_numpy(rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)).float()  # [B, n]
        reps[t] = (counts @ diffs.reshape(n, -1) / n).reshape(n_boot, *diffs.shape[1:])
        n_pairs[t] = n
    return Bootstrap(vectors, chosen, reps, n_pairs, fixed, seed)
