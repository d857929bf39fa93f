"""Projection-shift tracking: exact shifts on a model whose residual stream is moved by a known vector."""

from __future__ import annotations

import pytest
import torch

from personaspace.engine import Add, PersonaModel
from personaspace.monitoring.shift import projection_shift, shift_score_correlation
from personaspace.vectors.store import PersonaVector, VectorMeta

PROMPTS = ["How are you today?", "What is your favourite colour?", "Tell me a story."]


def _vec(model, trait, seed):
    data = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(seed))
    return PersonaVector(data, VectorMeta(trait=trait, model="tiny"))


class Shifted(PersonaModel):
    """The same weights with a fixed Add at one layer during capture: a fine-tune with a known effect."""

    def __init__(self, base, iv):
        super().__init__(base.loaded)
        self._interventions = [iv]


def test_shift_of_a_model_with_itself_is_zero(tiny_model):
    vecs = {"evil": _vec(tiny_model, "evil", 0)}
    out = projection_shift(tiny_model, tiny_model, vecs, layer=2, prompts=PROMPTS)
    assert out["evil"]["shift"] == pytest.approx(0.0, abs=1e-6)
    assert out["evil"]["n"] == 3 and out["evil"]["layer"] == 2


def test_shift_equals_the_known_displacement_projected_on_each_trait(tiny_model):
    a, b = _vec(tiny_model, "a", 1), _vec(tiny_model, "b", 2)
    layer = 2
    move = a.at(layer) * 0.7
    ft = Shifted(tiny_model, Add(move, coef=3.0, layers=[layer]))
    out = projection_shift(tiny_model, ft, {"a": a, "b": b}, layer, prompts=PROMPTS)
    expected_a = float(3.0 * move @ a.unit(layer))
    expected_b = float(3.0 * move @ b.unit(layer))
    assert out["a"]["shift"] == pytest.approx(expected_a, rel=1e-4)
    assert out["b"]["shift"] == pytest.approx(expected_b, rel=1e-3, abs=1e-4)
    assert out["a"]["ci95"][0] == pytest.approx(expected_a, rel=1e-3)  # every prompt moves by the same amount
    assert out["a"]["ft_proj"] - out["a"]["base_proj"] == pytest.approx(expected_a, rel=1e-4)


def test_shift_score_correlation():
    pts = [(0.0, 10.0), (1.0, 20.0), (2.0, 30.0), (3.0, 45.0)]
    r = shift_score_correlation(pts)
    assert r["pearson"] > 0.99 and r["spearman"] == pytest.approx(1.0) and r["n"] == 4
    assert shift_score_correlation(pts[:2])["n"] == 2
