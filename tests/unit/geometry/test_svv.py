"""The Semantic Valence Vector: three definitions, their agreement, held-out evaluation, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_geometry import valence_set

from personaspace.errors import PersonaspaceError
from personaspace.geometry import valence as s
from personaspace.geometry.space import _library_valence
from personaspace.traits import list_traits
from personaspace.vectors.store import load_vectors


def axis_of(seed: int = 0, d: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=gen)
    return a / a.norm()


def test_all_definitions_recover_a_planted_valence_axis():
    vs = valence_set(common=3.0, signal=1.0, noise=0.3, seed=0)
    axis = axis_of(0)
    for d in s.DEFINITIONS:
        v = s.svv(vs, d)
        assert v.meta.method == f"svv_{d}" and v.meta.extra["definition"] == d
        assert torch.allclose(v.norms(), torch.ones(3), atol=1e-5)
        assert float(v.unit(1) @ axis) > 0.9, d  # right direction AND sign (positive traits project up)


def test_report_agreement_and_loto_on_clean_and_on_null_data():
    clean = s.svv_report(valence_set(noise=0.3), layer=1, n_perm=50)
    assert min(clean.agreement.values()) > 0.9
    for d in s.DEFINITIONS:
        e = clean.loto[d]
        assert e["correct"] == 16 and e["n"] == 16 and e["wrong"] == []
        assert e["ci95"][0] > 0.75 and e["p_perm"] < 0.05
    assert clean.loto_by_layer["layers"] == [0, 1, 2]
    null = s.svv_report(valence_set(signal=0.0, noise=1.0, seed=2), layer=1, n_perm=50)
    for d in s.DEFINITIONS:
        assert null.loto[d]["accuracy"] < 0.85 and null.loto[d]["p_perm"] > 0.01


def test_user_valence_flips_and_excludes():
    vs = valence_set(noise=0.3)
    flipped = {t: ("negative" if _library_valence(t) == "positive" else "positive") for t in list_traits()}
    flipped["humor"] = 0
    v = s.svv(vs, "contrast", valence=flipped)
    assert float(v.unit(1) @ axis_of(0)) < -0.9
    assert v.meta.extra["excluded"] == ["humor"] and "humor" not in v.meta.extra["valence"]
    with pytest.raises(PersonaspaceError, match="at least 2 positive"):
        s.svv(vs.subset(["evil", "psychopathy", "humor"]), "pc1")
    with pytest.raises(PersonaspaceError, match="Unknown SVV definition"):
        s.svv(vs, "vibes")


def test_probe_matches_reference_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(14, 40))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([1] * 6 + [-1] * 8)
    x[y > 0, 0] += 0.3
    for c in (0.5, 10.0):
        w, b = s._probe(x, y, c)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x, (y > 0).astype(int))
        assert np.allclose(w, ref.coef_[0], atol=1e-4) and b == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_report_saves_a_loadable_vector_set(tmp_path):
    rep = s.svv_report(valence_set(noise=0.3), n_perm=10)
    rep.save(tmp_path / "svv")
    back = load_vectors(tmp_path / "svv")
    assert back.traits == ["svv_contrast", "svv_pc1", "svv_probe"]
    assert back["svv_pc1"].meta.extra["definition"] == "pc1"
    assert (tmp_path / "svv" / "svv_report.json").is_file()
    d = rep.to_dict()
    assert set(d["agreement"]) == {"contrast~pc1", "contrast~probe", "pc1~probe"} and d["layer"] == 1


def test_with_svv_answers_svv_names_without_listing_them():
    vs = valence_set()
    w = s.WithSVV(vs)
    assert w.traits == vs.traits and "svv" not in list(w)
    assert torch.allclose(w["svv"].data, s.svv(vs, "contrast").data)
    assert w["svv_pc1"].meta.method == "svv_pc1" and w["svv"] is w["svv"]
    with pytest.raises(KeyError):
        w["svv_nonsense"]
    from personaspace.steering.spec import SteerSpec, _lookup

    assert _lookup("svv", w, SteerSpec("ablate", "svv", "all")).trait == "svv"
