"""The engine on the embedded SmolLM2-135M-Instruct: parity with plain Hugging Face forwards."""

from __future__ import annotations

import pytest
import torch
from reference import reference_reductions, rel_err

from personaspace.engine import Ablate, Add
from personaspace.engine.context import REDUCTIONS

SYSTEM = "You are a cheerful pirate."
PROMPTS = ["What should I cook tonight?", "Describe the sea in one sentence.", "Hi"]


@pytest.fixture(scope="module")
def generated(embedded_model):
    return embedded_model.generate(PROMPTS, system=SYSTEM, max_new_tokens=16, capture_layers=True, reductions=REDUCTIONS)


def test_model_shape_and_chat_template(embedded_model):
    assert (embedded_model.n_layers, embedded_model.d_model) == (30, 576)
    assert embedded_model.formatter.system_role
    text = embedded_model.tokenizer.decode(embedded_model.prompt_ids("Hi", system=SYSTEM))
    assert SYSTEM in text and text.rstrip().endswith("assistant")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_capture_matches_hidden_states_all_layers(embedded_model, generated, padding_side):
    layers = list(range(embedded_model.n_layers))
    p_ids = [g.prompt_ids for g in generated]
    r_ids = [g.response_ids for g in generated]
    acts = embedded_model.capture(p_ids, r_ids, reductions=REDUCTIONS, padding_side=padding_side)
    ref = reference_reductions(embedded_model.hf_model, p_ids, r_ids, layers)
    for reduction in REDUCTIONS:
        assert rel_err(acts[reduction], ref[reduction]) < 1e-4, reduction


def test_capture_during_generation_matches_capture_after(embedded_model, generated):
    again = embedded_model.capture([g.prompt_ids for g in generated], [g.response_ids for g in generated], reductions=REDUCTIONS)
    for reduction in REDUCTIONS:
        assert rel_err(generated.activations[reduction], again[reduction]) < 1e-4, reduction


def test_generation_is_coherent_english(generated):
    assert all(len(g.response_ids) >= 3 for g in generated)
    assert sum(c.isalpha() for c in generated.texts[1]) > 10


def test_steered_generation_cached_equals_uncached(embedded_model):
    v = torch.randn(embedded_model.d_model, generator=torch.Generator().manual_seed(0))
    steer = [Add(v / v.norm(), coef=6.0, layers=[10, 11], scope="response"), Ablate(v, layers=[20])]
    cached = embedded_model.generate(PROMPTS, system=SYSTEM, max_new_tokens=12, interventions=steer)
    uncached = embedded_model.generate(PROMPTS, system=SYSTEM, max_new_tokens=12, interventions=steer, use_cache=False)
    assert [g.response_ids for g in cached] == [g.response_ids for g in uncached]


def test_add_zero_is_identity_on_generation(embedded_model):
    v = torch.randn(embedded_model.d_model)
    plain = embedded_model.generate(PROMPTS, max_new_tokens=10)
    with embedded_model.intervene(Add(v, coef=0.0)):
        steered = embedded_model.generate(PROMPTS, max_new_tokens=10)
    assert plain.texts == steered.texts
