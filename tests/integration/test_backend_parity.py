"""Parity of the backends on the embedded SmolLM2-135M-Instruct: same activations, same steered tokens.

fused (the default for Llama-family models) / hooks / nnsight (local trace) / nnsight remote path (nnsight's simulation of NDIF, with
personaspace unimportable during deserialization) / TransformerLens 4 TransformerBridge.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_reductions, rel_err

from personaspace.engine import Ablate, Add, PersonaModel
from personaspace.engine.context import REDUCTIONS

pytest.importorskip("nnsight")
pytest.importorskip("transformer_lens.model_bridge")

from personaspace.engine.model import with_backend  # noqa: E402

SYSTEM = "You are a helpful assistant."
PROMPTS = ["What should I cook tonight?", "Describe the sea in one sentence."]
RESPONSES = ["Try a simple pasta with garlic, olive oil and fresh basil.", "The sea is a restless, shining blue."]


@pytest.fixture(scope="module")
def models(embedded_model):
    # TransformerLens switches its Hugging Face model to eager attention: give it its own copy.
    tl_base = PersonaModel.load("smollm2-135m-instruct")
    return {
        "hooks": with_backend(embedded_model, "hooks"),
        "fused": embedded_model,
        "nnsight": with_backend(embedded_model, "nnsight"),
        "remote-sim": with_backend(embedded_model, "nnsight", remote="local"),
        "transformer_lens": with_backend(tl_base, "transformer_lens"),
    }


@pytest.fixture(scope="module")
def steer(embedded_model):
    v = torch.randn(embedded_model.d_model, generator=torch.Generator().manual_seed(0))
    return [Add(v / v.norm(), coef=8.0, layers=[10, 11], scope="response"), Ablate(v, layers=[20])]


def test_capture_all_layers_matches_hidden_states(models):
    hooks = models["hooks"]
    p_ids = [hooks.prompt_ids(p, SYSTEM) for p in PROMPTS]
    r_ids = [hooks.response_ids(r) for r in RESPONSES]
    ref = reference_reductions(hooks.hf_model, p_ids, r_ids, list(range(hooks.n_layers)))
    for name, model in models.items():
        acts = model.capture(p_ids, r_ids, reductions=REDUCTIONS)
        for r in REDUCTIONS:
            assert rel_err(acts[r], ref[r]) < 1e-4, (name, r)


def test_steered_greedy_generation_token_for_token(models, steer):
    plain = models["hooks"].generate(PROMPTS, system=SYSTEM, max_new_tokens=12)
    ref = models["hooks"].generate(PROMPTS, system=SYSTEM, max_new_tokens=12, interventions=steer)
    assert [g.response_ids for g in ref] != [g.response_ids for g in plain]  # the steering bites
    for name in ("nnsight", "transformer_lens"):
        got = models[name].generate(PROMPTS, system=SYSTEM, max_new_tokens=12, interventions=steer)
        assert [g.response_ids for g in got] == [g.response_ids for g in ref], name
    remote = models["remote-sim"].generate(PROMPTS, system=SYSTEM, max_new_tokens=5, interventions=steer, use_cache=False)
    assert [g.response_ids for g in remote] == [g.response_ids[:5] for g in ref]
    # without a cache every step is a full forward: the fused path computes the logits itself
    fused = models["fused"].generate(PROMPTS, system=SYSTEM, max_new_tokens=12, interventions=steer, use_cache=False)
    assert [g.response_ids for g in fused] == [g.response_ids for g in ref]


def test_vector_extracted_in_one_backend_steers_identically_in_another(models):
    """A mean-difference vector read through nnsight / TransformerLens equals the hooks one and steers the same."""
    pos = {"system": "You are an extremely cheerful assistant who loves everything.", "user": "How was your day?"}
    neg = {"system": "You are a gloomy assistant who hates everything.", "user": "How was your day?"}

    def vector(model):
        acts = model.capture([pos, neg], layers=[14], reductions=["prompt_last"])
        return acts.at("prompt_last", 14)[0] - acts.at("prompt_last", 14)[1]

    vecs = {name: vector(models[name]) for name in ("hooks", "nnsight", "transformer_lens")}
    for name in ("nnsight", "transformer_lens"):
        assert rel_err(vecs[name], vecs["hooks"]) < 1e-4, name
    question = ["Tell me about your weekend."]
    ref = models["hooks"].generate(question, max_new_tokens=10, interventions=[Add(vecs["hooks"], coef=1.5, layers=[14])])
    a = models["hooks"].generate(question, max_new_tokens=10, interventions=[Add(vecs["nnsight"], coef=1.5, layers=[14])])
    b = models["transformer_lens"].generate(question, max_new_tokens=10, interventions=[Add(vecs["nnsight"], coef=1.5, layers=[14])])
    c = models["nnsight"].generate(question, max_new_tokens=10, interventions=[Add(vecs["transformer_lens"], coef=1.5, layers=[14])])
    assert a[0].response_ids == b[0].response_ids == c[0].response_ids == ref[0].response_ids


def test_device_map_auto_gives_the_same_capture(models):
    """The multi-GPU loading path (accelerate's device_map) on this machine: same numbers as a plain load."""
    mapped = PersonaModel.load("smollm2-135m-instruct", device_map="auto")
    p_ids = [mapped.prompt_ids(p, SYSTEM) for p in PROMPTS]
    r_ids = [mapped.response_ids(r) for r in RESPONSES]
    got = with_backend(mapped, "nnsight").capture(p_ids, r_ids, layers=[0, 15, 29])
    ref = models["hooks"].capture(p_ids, r_ids, layers=[0, 15, 29])
    for r in got.data:
        assert rel_err(got[r], ref[r]) < 1e-4, r


def test_bulk_sampling_on_a_server_then_capture(models):
    from unit.engine.test_backends_openai_sampling import CannedServer

    from personaspace._util.http import OpenAICompatClient
    from personaspace.engine.openai_sampling import OpenAISampler

    hooks = models["hooks"]
    replies = dict(zip(PROMPTS, RESPONSES))
    with CannedServer(replies) as server, OpenAICompatClient(server.base_url, model="smollm2") as client:
        out = OpenAISampler(hooks, client, request_batch=3).sample(PROMPTS, system=SYSTEM, samples_per_prompt=2, capture_layers=True, reductions=REDUCTIONS)
    assert len(out) == 4 and all(t.startswith(replies[p]) for t, p in zip(out.texts, [p for p in PROMPTS for _ in range(2)]))
    ref = reference_reductions(hooks.hf_model, [g.prompt_ids for g in out], [g.response_ids for g in out], list(range(hooks.n_layers)))
    for r in REDUCTIONS:
        assert rel_err(out.activations[r], ref[r]) < 1e-4, r
