"""Cross-set comparison on constructed spaces: rotated copies, noisy copies, unrelated sets, other widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_geometry import valence_set

from personaspace.errors import PersonaspaceError, VectorShapeError
from personaspace.geometry import comparison as c
from personaspace.geometry import space as g
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

D = 48


def transformed(vs: VectorSet, matrix: torch.Tensor, model: str, noise: float = 0.0, seed: int = 0) -> VectorSet:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in vs.traits:
        data = vs[t].data @ matrix
        data = data + noise * data.norm(dim=1, keepdim=True) * torch.randn(data.shape, generator=gen) / data.shape[1] ** 0.5
        out.append(PersonaVector(data, VectorMeta(trait=t, model=model)))
    return VectorSet(out)


def orthogonal(d_in: int, d_out: int, seed: int = 1) -> torch.Tensor:
    """A ``[d_in, d_out]`` isometry (orthonormal rows), so inner products survive."""
    q, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), max(d_in, d_out), generator=torch.Generator().manual_seed(seed)))
    return q[:d_in, :d_out]


@pytest.fixture(scope="module")
def base():
    return valence_set(common=1.0, signal=1.0, noise=1.0, seed=4)


def test_rotated_copy_is_identical_up_to_rotation(base):
    rot = transformed(base, 2.5 * orthogonal(D, D), "rotated")
    res = c.compare_spaces(base, rot, 1, n_null=100, n_boot=0)
    m = res.metrics
    for key in ("rsa_pearson", "rsa_spearman", "rsa_pearson_centered", "cka_linear"):
        assert m[key]["value"] == pytest.approx(1.0, abs=1e-9), key
        assert m[key]["null_permuted"]["p"] < 0.01
    assert m["procrustes_disparity"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert m["procrustes_disparity"]["null_permuted"]["mean"] > 0.3
    # a rotation moves directions: per-trait cosines are near the random null, as they should be
    assert abs(m["mean_trait_cosine"]["value"]) < 0.3


def test_identical_and_noisy_copies_same_width(base):
    same = c.compare_spaces(base, transformed(base, torch.eye(D), "copy"), 2, n_null=100, n_boot=0)
    assert same.metrics["mean_trait_cosine"]["value"] == pytest.approx(1.0)
    assert all(e["cosine"] == pytest.approx(1.0) for e in same.per_trait.values())
    assert same.metrics["principal_angles_mean_cos_k3"]["value"] == pytest.approx(1.0)
    noisy = c.compare_spaces(base, transformed(base, torch.eye(D), "noisy", noise=0.5), 2, n_null=100, n_boot=0)
    v = noisy.metrics["mean_trait_cosine"]["value"]
    assert 0.6 < v < 0.99 and noisy.metrics["rsa_pearson"]["value"] > 0.5
    assert v > noisy.metrics["mean_trait_cosine"]["other_trait_cosines"]["q975"]


def test_random_set_lands_on_the_null(base):
    res = c.compare_spaces(base, g.random_set(base, seed=9), 1, n_null=300, n_boot=0)
    for key in ("rsa_pearson", "cka_linear", "procrustes_disparity", "mean_trait_cosine"):
        e = res.metrics[key]
        lo, hi = e["null_random"]["q025"], e["null_random"]["q975"]
        assert lo - 0.05 <= e["value"] <= hi + 0.05, key
        assert e["null_random"]["p"] > 0.01
    assert res.metrics["mean_trait_cosine"]["random_direction_q975"] == pytest.approx(1.96 / D**0.5, rel=0.01)


def test_across_widths(base):
    wide = transformed(base, orthogonal(D, 80), "wide-model")
    res = c.compare_spaces(base, wide, 2, n_null=100, n_boot=0)
    assert res.per_trait == {} and "mean_trait_cosine" not in res.metrics
    assert res.metrics["rsa_pearson"]["value"] == pytest.approx(1.0)
    assert res.metrics["cka_linear"]["value"] == pytest.approx(1.0)
    assert res.metrics["procrustes_disparity"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert res.metrics["principal_angles_mean_cos_k3"]["value"] == pytest.approx(1.0)
    assert res.info["principal_angle_space"] == "trait"
    with pytest.raises(PersonaspaceError, match="equal widths"):
        c.per_trait_cosine(base, wide, 1)


def test_metric_functions_directly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 30))
    q = np.linalg.qr(rng.normal(size=(30, 30)))[0]
    assert c.linear_cka(x, x @ q * 4) == pytest.approx(1.0)
    assert c.procrustes_disparity(x, x @ q + 3.0) == pytest.approx(0.0, abs=1e-9)  # translation removed too
    y = rng.normal(size=(10, 30))
    assert 0.05 < c.procrustes_disparity(x, y) <= 1.0  # few points in many dims: random configs align partly
    assert c.principal_angles(x, x @ q, 3, "trait") == pytest.approx(np.ones(3))
    assert c.rsa_values(x, x @ q)["spearman"] == pytest.approx(1.0)
    with pytest.raises(PersonaspaceError, match="space"):
        c.principal_angles(x, y, 2, "elsewhere")


def test_layers_match_by_relative_depth_and_curve(base):
    deep = VectorSet([PersonaVector(torch.cat([base[t].data] * 2), VectorMeta(trait=t, model="deep")) for t in base.traits])
    assert c.match_layer(2, 3, 6) == 5
    res = c.compare_spaces(base, deep, 1, n_null=50, n_boot=0)
    assert (res.layer_a, res.layer_b) == (1, 2)
    curve = c.rsa_by_layer(base, base, n_null=50)
    assert curve["layers_a"] == [0, 1, 2] and np.allclose(curve["rsa_pearson"], 1.0)
    assert all(q < 0.9 for q in curve["null_q95"])


def test_too_few_shared_traits():
    a = valence_set()
    b = VectorSet([PersonaVector(a[t].data, a[t].meta) for t in ["evil", "humor"]])
    with pytest.raises(VectorShapeError, match="at least 3 traits"):
        c.compare_spaces(a, b)
