"""Capture parity: streaming reductions equal plain output_hidden_states, whatever the padding."""

from __future__ import annotations

import pytest
import torch
from reference import reference_reductions, rel_err

from personaspace.engine.context import REDUCTIONS

PROMPTS = ["Hello there.", "What would you do with a free afternoon in a new city?", "Why?"]
RESPONSES = ["I would walk around and look at old buildings.", "Nothing.", "Because the sky is blue and wide."]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_capture_equals_hidden_states(tiny_model, padding_side):
    layers = list(range(tiny_model.n_layers))
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=layers, reductions=REDUCTIONS, padding_side=padding_side)
    p_ids = [tiny_model.prompt_ids(p) for p in PROMPTS]
    r_ids = [tiny_model.response_ids(r) for r in RESPONSES]
    ref = reference_reductions(tiny_model.hf_model, p_ids, r_ids, layers)
    for reduction in REDUCTIONS:
        assert acts[reduction].shape == (3, len(layers), tiny_model.d_model)
        assert rel_err(acts[reduction], ref[reduction]) < 1e-4, reduction


def test_capture_counts_tokens(tiny_model):
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[1])
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert acts.counts["prompt_avg"][i] == len(tiny_model.prompt_ids(p))
        assert acts.counts["prompt_last"][i] == 1
        assert acts.counts["response_avg"][i] == len(tiny_model.response_ids(r))


def test_last_layer_is_raw_block_output_not_final_norm(tiny_model):
    """The last layer is the block output; HF's hidden_states[-1] is post-norm and must differ."""
    last = tiny_model.n_layers - 1
    acts = tiny_model.capture(PROMPTS[:1], RESPONSES[:1], layers=[last], reductions=["all_avg"])
    ids = torch.tensor([tiny_model.prompt_ids(PROMPTS[0]) + tiny_model.response_ids(RESPONSES[0])])
    with torch.no_grad():
        post_norm = tiny_model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert rel_err(acts["all_avg"][0, 0], post_norm) > 1e-2


@pytest.mark.parametrize("backend", ["fused", "hooks"])
def test_early_exit_skips_later_blocks_and_lm_head(tiny_model, backend, monkeypatch):
    from personaspace.engine.model import with_backend

    model = with_backend(tiny_model, backend)
    calls = {"late": 0, "head": 0}

    def count_late(*_):
        calls["late"] += 1

    if backend == "fused":  # the fused forward does not call the block modules: count its own blocks
        run_block = model.backend._block
        monkeypatch.setattr(model.backend, "_block", lambda i: (count_late() if i >= 2 else None, run_block(i))[1])
        late = None
    else:
        late = model.backend.layers[2].register_forward_hook(count_late)
    head = model.hf_model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    try:
        model.capture(PROMPTS, RESPONSES, layers=[0, 1])
        assert calls == {"late": 0, "head": 0}
        model.capture(PROMPTS, RESPONSES, layers=[0, 1], early_exit=False)
        assert calls["late"] > 0 and calls["head"] > 0
    finally:
        if late is not None:
            late.remove()
        head.remove()


def test_token_budget_batches_give_same_result(tiny_model):
    one = tiny_model.capture(PROMPTS, RESPONSES, layers=[0, 3], token_budget=1)
    many = tiny_model.capture(PROMPTS, RESPONSES, layers=[0, 3], token_budget=100_000)
    for reduction in one.data:
        assert rel_err(one[reduction], many[reduction]) < 1e-5


def test_hooks_are_removed_after_capture(tiny_model):
    def count():
        return sum(len(layer._forward_hooks) for layer in tiny_model.backend.layers)

    before = count()  # transformers itself may keep output-capturing hooks installed
    tiny_model.capture(PROMPTS[:1], RESPONSES[:1], layers=[1])
    assert count() == before
