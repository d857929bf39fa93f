"""Interventions: add at coef 0 is a no-op, ablation zeroes the projection, caps clamp, bad input is caught."""

from __future__ import annotations

import pytest
import torch
from reference import rel_err

from personaspace.engine import Ablate, Add, Cap
from personaspace.errors import LayerOutOfRangeError, VectorShapeError

PROMPTS = ["Hello there.", "What would you do with a free afternoon?"]
RESPONSES = ["I would walk around.", "Read a book in the park."]
ALL = ["prompt_avg", "prompt_last", "response_avg", "all_avg"]


def _vec(model, seed=0):
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))


def test_add_with_zero_coefficient_changes_nothing(tiny_model):
    plain = tiny_model.capture(PROMPTS, RESPONSES, reductions=ALL)
    with tiny_model.intervene(Add(_vec(tiny_model), coef=0.0, layers="all")):
        steered = tiny_model.capture(PROMPTS, RESPONSES, reductions=ALL)
    for r in ALL:
        assert torch.equal(plain[r], steered[r])


def test_add_shifts_the_hooked_layer_by_exactly_coef_v(tiny_model):
    v = _vec(tiny_model)
    plain = tiny_model.capture(PROMPTS, RESPONSES, layers=[1])
    steered = tiny_model.capture(PROMPTS, RESPONSES, layers=[1], interventions=[Add(v, coef=2.5, layers=[1])])
    for r in ("prompt_avg", "response_avg"):
        assert rel_err(steered[r][:, 0] - plain[r][:, 0], (2.5 * v).expand(2, -1)) < 1e-5


def test_ablation_leaves_zero_projection_at_hooked_layer(tiny_model):
    v = _vec(tiny_model, 1)
    u = v / v.norm()
    plain = tiny_model.capture(PROMPTS, RESPONSES, layers=[2], reductions=ALL)
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[2], reductions=ALL, interventions=[Ablate(v, layers=[2])])
    for r in ALL:
        assert (plain[r][:, 0] @ u).abs().max() > 1e-2  # there was something to remove
        assert (acts[r][:, 0] @ u).abs().max() < 1e-4  # prompt_last is a single token: exact per-token check


def test_ablation_scoped_to_response_leaves_prompt_alone(tiny_model):
    v = _vec(tiny_model, 2)
    plain = tiny_model.capture(PROMPTS, RESPONSES, layers=[2])
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[2], interventions=[Ablate(v, layers=[2], scope="response")])
    # prompt tokens before the last are untouched, so their average only moves through the last token
    u = v / v.norm()
    assert (acts["response_avg"][:, 0] @ u).abs().max() < 1e-4
    assert (acts["prompt_last"][:, 0] @ u).abs().max() < 1e-4  # the last prompt token is in response scope
    assert (plain["prompt_avg"][:, 0] @ u - acts["prompt_avg"][:, 0] @ u).abs().max() > 0


def test_cap_clamps_projection(tiny_model):
    v = _vec(tiny_model, 3)
    u = v / v.norm()
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[1], reductions=["prompt_last"],
                              interventions=[Cap(v, layers=[1], max=-0.5)])
    assert (acts["prompt_last"][:, 0] @ u).max() <= -0.5 + 1e-5


def test_interventions_compose_in_order(tiny_model):
    v = _vec(tiny_model, 4)
    u = v / v.norm()
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[1], reductions=["prompt_last"],
                              interventions=[Ablate(v, layers=[1]), Add(u, coef=3.0, layers=[1])])
    assert torch.allclose(acts["prompt_last"][:, 0] @ u, torch.full((2,), 3.0), atol=1e-4)


def test_per_layer_vector_table_uses_each_layers_row(tiny_model):
    table = torch.zeros(tiny_model.n_layers, tiny_model.d_model)
    table[1] = _vec(tiny_model, 5)
    plain = tiny_model.capture(PROMPTS, RESPONSES, layers=[0, 1])
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[0, 1], interventions=[Add(table, coef=1.0, layers=[0, 1])])
    assert torch.equal(acts["response_avg"][:, 0], plain["response_avg"][:, 0])
    assert not torch.equal(acts["response_avg"][:, 1], plain["response_avg"][:, 1])


def test_wrong_width_and_bad_layer_are_clear_errors(tiny_model):
    with pytest.raises(VectorShapeError, match="width 7"):
        with tiny_model.intervene(Add(torch.ones(7), coef=1.0)):
            pass
    with pytest.raises(LayerOutOfRangeError, match="0 to 3"):
        tiny_model.capture(PROMPTS, RESPONSES, layers=[4])
    with pytest.raises(LayerOutOfRangeError):
        tiny_model.generate(PROMPTS, interventions=[Add(_vec(tiny_model), layers=[99])])
    with pytest.raises(VectorShapeError, match="layers"):
        tiny_model.capture(PROMPTS, RESPONSES, interventions=[Add(torch.ones(9, tiny_model.d_model))])


def test_to_dict_is_plain_json_and_from_dict_rebuilds_the_same_intervention():
    import json

    from personaspace.engine.interventions import Intervention

    v = torch.randn(8, generator=torch.Generator().manual_seed(3))
    ivs = [
        Add(v, coef=2.5, layers=range(1, 3), scope="response", label="evil", normalize=True),
        Ablate(v, layers="all", label="svv"),
        Cap(v, max=1.5, layers=[2], label="evil"),
    ]
    for iv in ivs:
        d = iv.to_dict()
        assert json.loads(json.dumps(d)) == d  # plain JSON (a range of layers becomes a list)
        back = Intervention.from_dict(d, v)
        assert type(back) is type(iv) and back.to_dict() == d
        assert iv.kind == type(iv).__name__.lower()
    assert ivs[0].to_dict() == {"type": "Add", "label": "evil", "layers": [1, 2], "scope": "response", "coef": 2.5, "normalize": True}
    assert ivs[2].to_dict() == {"type": "Cap", "label": "evil", "layers": [2], "scope": "all", "min": None, "max": 1.5}
    # the kind names steering specs use work too, and a subclass's from_dict builds only its own kind
    assert isinstance(Intervention.from_dict({"type": "cap", "min": -1.0, "layers": [1]}, v), Cap)
    with pytest.raises(ValueError, match="unknown intervention type"):
        Intervention.from_dict({"type": "Steer"}, v)
    with pytest.raises(ValueError, match="unknown intervention type"):
        Add.from_dict({"type": "Ablate"}, v)


def test_from_dict_reads_the_description_files_already_hold():
    """``interventions_during_training`` in finetune.json and EM settings written before to_dict existed."""
    from personaspace.engine.interventions import Intervention

    v = torch.ones(4)
    old = {"type": "Add", "label": "evil", "layers": [12], "scope": "all", "coef": 4.0, "normalize": False,
           "vector": {"trait": "evil", "model": "smollm2-135m-instruct", "position": "response_avg"}}
    iv = Intervention.from_dict(old, v)
    assert isinstance(iv, Add) and iv.coef == 4.0 and iv.layers == [12] and iv.label == "evil"
