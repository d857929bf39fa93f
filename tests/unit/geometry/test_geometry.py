"""Single-set geometry on constructed persona spaces whose structure is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personaspace._util.stats import null_summary
from personaspace.errors import LayerOutOfRangeError, PersonaspaceError, UnknownTraitError
from personaspace.geometry import space as g
from personaspace.traits import list_traits
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

D, L = 48, 3


def make_set(rows: dict[str, torch.Tensor], model: str = "toy", layers: int = L) -> VectorSet:
    """One vector per trait; ``rows[t]`` is ``[d]`` (repeated over layers) or ``[layers, d]``."""
    out = []
    for t, r in rows.items():
        data = r if r.dim() == 2 else r.expand(layers, -1)
        out.append(PersonaVector(data.float(), VectorMeta(trait=t, model=model)))
    return VectorSet(out)


def valence_set(common: float = 3.0, signal: float = 1.0, noise: float = 0.5, seed: int = 0, d: int = D) -> VectorSet:
    """The 16 library traits: shared component + valence sign * axis + noise, per layer."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.randn(d, generator=gen)
    axis /= axis.norm()
    base = torch.randn(d, generator=gen)
    base = base / base.norm()
    rows = {}
    for t in list_traits():
        s = 1.0 if g._library_valence(t) == "positive" else -1.0
        rows[t] = torch.stack([common * base + signal * s * axis + noise * torch.randn(d, generator=gen) / d**0.5 for _ in range(L)])
    return make_set(rows)


def test_cosine_matrix_known_angles():
    vs = make_set({"a": torch.tensor([1.0, 0, 0]), "b": torch.tensor([1.0, 1.0, 0]), "c": torch.tensor([-2.0, 0, 0])})
    sim = g.cosine_matrix(vs, 1)
    assert sim.traits == ["a", "b", "c"]
    assert sim["a", "b"] == pytest.approx(2**-0.5)
    assert sim["a", "c"] == pytest.approx(-1.0)
    assert np.allclose(np.diag(sim.values), 1.0)
    assert np.allclose(sim.values, sim.values.T)
    assert len(sim.upper()) == 3


def test_centering_removes_a_shared_component():
    # orthogonal trait directions plus a big common offset: raw cosines high, centred ones near -1/(n-1)
    n = 6
    eye = torch.eye(D)[:n]
    vs = make_set({f"t{i}": 0.3 * eye[i] + 5.0 * torch.eye(D)[n] for i in range(n)})
    raw = g.cosine_matrix(vs, 0)
    cen = g.cosine_matrix(vs, 0, center=True)
    assert raw.upper().min() > 0.9
    assert np.allclose(cen.upper(), -1.0 / (n - 1), atol=1e-6)
    assert cen.centered and not raw.centered


def test_pca_finds_the_planted_axis_and_centres():
    vs = valence_set(common=5.0, signal=1.0, noise=0.05)
    res = g.pca(vs, 1)
    assert res.centered and res.explained_variance_ratio[0] > 0.95
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert res.coords.shape == (16, 15) and res.components.shape == (15, D)
    pos = [i for i, t in enumerate(res.traits) if g._library_valence(t) == "positive"]
    neg = [i for i in range(16) if i not in pos]
    c = res.coords[:, 0]
    assert (c[pos].min() > c[neg].max()) or (c[pos].max() < c[neg].min())
    # the common component is the mean, not PC1: PC1 is orthogonal to it after centring
    assert abs(res.components[0] @ res.mean / np.linalg.norm(res.mean)) < 0.1


def test_valence_separation_real_vs_shuffled():
    strong = g.valence_separation(valence_set(noise=0.05), 1, n_perm=500)
    assert strong["auroc"] == 1.0 and strong["p_perm"] < 0.01 and strong["gap"] > 0
    assert strong["n_positive"] == 7 and strong["n_negative"] == 9
    none = g.valence_separation(valence_set(signal=0.0, noise=1.0, seed=3), 1, n_perm=500)
    assert none["p_perm"] > 0.01
    assert 0.5 <= none["null_mean"] < none["null_q95"] <= 1.0


def test_cluster_recovers_two_groups():
    vs = valence_set(noise=0.1)
    cl = g.cluster(vs, 0, n_clusters=2)
    groups = [set(x) for x in cl.groups()]
    positive = {t for t in list_traits() if g._library_valence(t) == "positive"}
    assert positive in groups and (set(list_traits()) - positive) in groups
    assert cl.silhouette > 0.5


def test_valence_labels_user_override_and_errors():
    labels = g.valence_labels(["evil", "humor", "custom"], {"custom": -1, "humor": "neutral"})
    assert labels == {"evil": -1, "custom": -1}
    with pytest.raises(PersonaspaceError, match="positive or negative"):
        g.valence_labels(["evil"], {"evil": "sort of"})
    with pytest.raises(PersonaspaceError, match="not in the vector set"):
        g.valence_labels(["evil"], {"ghost": 1})


def test_valence_needs_both_sides():
    vs = make_set({t: torch.randn(D) for t in ["evil", "psychopathy", "narcissism", "humor"]})
    with pytest.raises(PersonaspaceError, match="at least 2 positive"):
        g.valence_separation(vs, 0)


def test_layer_profile_shapes_and_signal():
    vs = valence_set(noise=0.05)
    prof = g.layer_profile(vs)
    assert prof["layers"] == [0, 1, 2]
    for key in ("mean_abs_cos_raw", "mean_abs_cos_centered", "pc1_explained", "valence_gap", "pc1_auroc"):
        assert len(prof[key]) == L
    assert min(prof["valence_gap"]) > 0.5 and min(prof["pc1_auroc"]) == 1.0
    assert min(prof["mean_abs_cos_raw"]) > 0.8  # the shared component dominates raw cosines


def test_random_null_is_near_orthogonal():
    vs = valence_set(d=512)
    rnd = g.random_set(vs, seed=1)
    assert rnd.traits == vs.traits
    assert torch.allclose(rnd["evil"].norms(), vs["evil"].norms(), rtol=1e-5)
    sim = g.cosine_matrix(rnd, 0)
    assert np.abs(sim.upper()).max() < 5 / np.sqrt(512)
    assert null_summary(0.9, [0.0, 0.1, 0.2])["p"] == 0.25


def test_bad_input_is_one_clear_error():
    vs = valence_set()
    with pytest.raises(LayerOutOfRangeError):
        g.cosine_matrix(vs, 7)
    with pytest.raises(UnknownTraitError):
        g.cosine_matrix(vs, 0, traits=["evil", "ghost"])
    with pytest.raises(PersonaspaceError, match="at least 2 traits"):
        g.cosine_matrix(vs, 0, traits=["evil"])
    with pytest.raises(PersonaspaceError, match="n_clusters"):
        g.cluster(vs, 0, n_clusters=40)
    with pytest.raises(PersonaspaceError, match="VectorSet"):
        g.pca([1, 2, 3], 0)
    with pytest.raises(PersonaspaceError, match="n_boot"):
        g.bootstrap(vs, 0)


def test_bootstrap_without_run_dirs_holds_traits_fixed():
    vs = valence_set()
    boot = g.bootstrap(vs, 5, layers=[1])
    assert boot.fixed == vs.traits and boot.n_boot == 0
    with pytest.raises(PersonaspaceError, match="run directory"):
        g.bootstrap(vs, 5, layers=[1], require=True)
