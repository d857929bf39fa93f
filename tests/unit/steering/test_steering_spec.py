"""Steering specs: the grammar, read vs applied layers, validation messages, binding to a model."""

from __future__ import annotations

import warnings

import pytest
import torch

from personaspace.engine import Ablate, Add, Cap
from personaspace.errors import InterventionSpecError, LayerOutOfRangeError, VectorShapeError
from personaspace.steering.spec import SteerSpec, parse_spec, parse_specs, random_control, resolve_specs
from personaspace.vectors.store import PersonaVector, VectorMeta


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("evil:+2.0@L12", "add", dict(name="evil", coef=2.0, layers="L12", read=None, scope=None)),
        ("evil[L15]:+2.0@L12", "add", dict(name="evil", coef=2.0, layers="L12", read=15)),
        ("evil[3]:-1.5@10-14/response", "add", dict(coef=-1.5, layers="10-14", read=3, scope="response")),
        ("evil: 1e-1 @ L4,8,12", "add", dict(coef=0.1, layers="L4,8,12")),
        ("random(evil,3):+2@L12", "add", dict(name="random(evil,3)", coef=2.0)),
        ("svv@all", "ablate", dict(name="svv", layers="all", read=None)),
        ("svv[L12]@all/prompt", "ablate", dict(read=12, scope="prompt")),
        ("evil<=0.0@L10-20", "cap", dict(max=0.0, min=None, layers="L10-20")),
        ("evil>=-2@L12", "cap", dict(min=-2.0, max=None)),
        ("-2<=evil<=1.5@L12/all", "cap", dict(min=-2.0, max=1.5, scope="all")),
        ("-2<=evil@L12", "cap", dict(min=-2.0, max=None)),
    ],
)
def test_grammar(text, kind, expected):
    spec = parse_spec(text, kind)
    assert spec.kind == kind
    for k, v in expected.items():
        assert getattr(spec, k) == v, k
    assert parse_spec(spec.to_text(), kind) == SteerSpec(**{**spec.__dict__, "text": spec.to_text()})


@pytest.mark.parametrize(
    "text, kind, fragment",
    [
        ("evil:+2.0", "add", "@LAYERS"),
        ("evil@L12", "add", "coefficient after ':'"),
        ("evil:abc@L12", "add", "number"),
        ("evil@L12", "cap", "'<=' or '>='"),
        ("evil:+1@L12@L13", "add", "more than one '@'"),
        ("evil[L1-3]:+1@L12", "add", "one layer"),
        ("evil:+1@L12/everywhere", "add", "scope"),
        ("evil:+1@twelve", "add", "layers"),
        ("3<=evil<=1@L2", "cap", "lower bound"),
        ("evil:+1@L2", "steer", "kind"),
        ("evil:inf@L2", "add", "Cannot parse"),
    ],
)
def test_bad_specs_get_one_clear_error(text, kind, fragment):
    with pytest.raises(InterventionSpecError) as e:
        parse_spec(text, kind)
    assert fragment in e.value.message
    assert e.value.doc == "intervention-spec"


def test_parse_specs_keeps_add_ablate_cap_order():
    specs = parse_specs(add=["a:+1@1"], ablate=["b@2"], cap=["c<=0@3"])
    assert [s.kind for s in specs] == ["add", "ablate", "cap"]


# ---- binding to a model -----------------------------------------------------------------------


class FakeModel:
    """Only what resolve_specs reads: name, depth, width."""

    def __init__(self, name="tiny", n_layers=4, d_model=8):
        self.name, self.n_layers, self.d_model = name, n_layers, d_model


def _vec(trait="evil", n=4, d=8, model="tiny", layers=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = len(layers) if layers else n
    return PersonaVector(torch.randn(rows, d, generator=g), VectorMeta(trait=trait, model=model), layers=layers)


def test_default_reads_the_row_of_each_applied_layer():
    v = _vec()
    (r,) = resolve_specs([parse_spec("evil:+2@1-3", "add")], {"evil": v}, FakeModel())
    assert r.read_layers == r.applied_layers == [1, 2, 3]
    assert isinstance(r.intervention, Add) and r.intervention.coef == 2.0
    h = torch.zeros(1, 1, 8)
    for L in (1, 2, 3):
        assert torch.allclose(r.intervention.apply(L, h, torch.ones(1, 1, dtype=torch.bool))[0, 0], 2 * v.at(L))
    assert "read L1-3 -> applied L1-3" in r.describe()


def test_explicit_read_row_is_applied_at_other_layers():
    v = _vec()
    (r,) = resolve_specs([parse_spec("evil[L3]:-1@0-1/response", "add")], {"evil": v}, FakeModel())
    assert r.read_layers == [3, 3] and r.applied_layers == [0, 1]
    h = torch.zeros(1, 1, 8)
    out = r.intervention.apply(0, h, torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(out[0, 0], -v.at(3))
    assert r.intervention.scope == "response"
    assert "read L3 (x2) -> applied L0-1, scope response" in r.describe()


def test_default_scope_fills_only_specs_without_one():
    v = _vec()
    a, b = resolve_specs([parse_spec("evil@1", "ablate"), parse_spec("evil@1/prompt", "ablate")], {"evil": v}, FakeModel(), scope="response")
    assert (a.intervention.scope, b.intervention.scope) == ("response", "prompt")
    assert isinstance(a.intervention, Ablate)


def test_cap_binds_bounds():
    (r,) = resolve_specs([parse_spec("-1<=evil<=0.5@2", "cap")], {"evil": _vec()}, FakeModel())
    assert isinstance(r.intervention, Cap) and (r.intervention.min, r.intervention.max) == (-1.0, 0.5)


def test_unknown_vector_lists_the_available_ones():
    with pytest.raises(InterventionSpecError, match="Available: evil, svv"):
        resolve_specs([parse_spec("humor:+1@1", "add")], {"evil": _vec(), "svv": _vec("svv")}, FakeModel())


def test_layer_out_of_range_names_the_spec():
    with pytest.raises(LayerOutOfRangeError, match=r"evil:\+1@L9"):
        resolve_specs([parse_spec("evil:+1@L9", "add")], {"evil": _vec()}, FakeModel())
    with pytest.raises(LayerOutOfRangeError, match="read layer"):
        resolve_specs([parse_spec("evil[L7]:+1@L1", "add")], {"evil": _vec()}, FakeModel())


def test_partial_vector_without_the_row_suggests_a_read_layer():
    v = _vec(layers=[2])
    with pytest.raises(VectorShapeError, match=r"evil\[L2\]"):
        resolve_specs([parse_spec("evil:+1@1", "add")], {"evil": v}, FakeModel())
    (r,) = resolve_specs([parse_spec("evil[L2]:+1@1", "add")], {"evil": v}, FakeModel())
    assert r.read_layers == [2]


def test_width_mismatch_is_an_error():
    with pytest.raises(VectorShapeError, match="width"):
        resolve_specs([parse_spec("evil:+1@1", "add")], {"evil": _vec(d=6)}, FakeModel())


def test_transfer_to_another_model_warns_with_both_names():
    v = _vec(model="donor-model")
    with pytest.warns(UserWarning, match="donor-model.*tiny"):
        (r,) = resolve_specs([parse_spec("evil:+1@1", "add")], {"evil": v}, FakeModel(name="tiny"))
    assert any("donor-model" in w and "tiny" in w for w in r.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_specs([parse_spec("evil:+1@1", "add")], {"evil": v}, FakeModel(), warn=False)


def test_deeper_model_needs_an_explicit_row_or_gets_a_depth_note():
    v = _vec(n=4)
    (r,) = resolve_specs([parse_spec("evil[L2]:+1@5", "add")], {"evil": v}, FakeModel(n_layers=8), warn=False)
    assert r.read_layers == [2] and r.applied_layers == [5]
    with pytest.raises(VectorShapeError):
        resolve_specs([parse_spec("evil:+1@5", "add")], {"evil": v}, FakeModel(n_layers=8), warn=False)
    (r,) = resolve_specs([parse_spec("evil:+1@2", "add")], {"evil": v}, FakeModel(n_layers=8), warn=False)
    assert any("relative depth" in w for w in r.warnings)


def test_random_spec_and_random_control_keep_norms():
    v = _vec()
    (r,) = resolve_specs([parse_spec("random(evil,4):+1@0-3", "add")], {"evil": v}, FakeModel())
    assert torch.allclose(r.vector.norms(), v.norms(), rtol=1e-5)
    assert r.vector.cosine(v).abs().max() < 0.99
    (steer,) = resolve_specs([parse_spec("evil[L1]:+3@2", "add")], {"evil": v}, FakeModel())
    (ctrl,) = random_control([steer], FakeModel())
    assert ctrl.read_layers == [1] and ctrl.applied_layers == [2] and ctrl.spec.coef == 3
    assert torch.isclose(ctrl.vector.at(1).norm(), v.at(1).norm())
    assert ctrl.vector.trait.startswith("random(evil")
