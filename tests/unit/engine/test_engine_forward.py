"""The one teacher-forced forward (personaspace.engine.forward) against a plain Hugging Face forward.

Layer ``L`` read-outs must equal ``hidden_states[L + 1]`` of ``output_hidden_states`` (below the last
layer, whose Hugging Face state is after the final norm), log-probs and losses must equal those of the
model's own logits -- on a tiny Llama (fused and hooks backends) and on a tiny Gemma 2 whose final-logit
softcapping is strong enough to matter.
"""

from __future__ import annotations

import pytest
import torch

from personaspace.engine import Add, PersonaModel
from personaspace.engine.backends.hooks import HFHookBackend
from personaspace.engine.forward import (
    EMBED,
    IGNORE_INDEX,
    TokenBatch,
    hidden_states,
    next_token_logits,
    next_token_logprobs,
    output_logits,
    residual_edits,
    run,
    select_cache_rows,
    token_loss,
)

PROMPTS = ["Hello there.", "What would you do with a free afternoon in a new city?", "Why?"]
RESPONSES = ["I would walk around and look at old buildings.", "Nothing.", ""]
SOFTCAP = 0.1  # far below the tiny model's logit scale: capping changes every logit


def _tiny_gemma2(tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=512,
        final_logit_softcapping=SOFTCAP,
        attn_implementation="eager",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Gemma2ForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def gemma2(tiny_tokenizer):
    return PersonaModel.from_hf(_tiny_gemma2(tiny_tokenizer), tiny_tokenizer, name="tiny-random-gemma2")


@pytest.fixture(scope="module")
def hooks_llama(tiny_model):
    return PersonaModel(tiny_model.loaded, backend=HFHookBackend(tiny_model.hf_model))


@pytest.fixture(params=["llama", "llama-hooks", "gemma2"])
def model(request, tiny_model, hooks_llama, gemma2):
    return {"llama": tiny_model, "llama-hooks": hooks_llama, "gemma2": gemma2}[request.param]


def _ids(model):
    return [model.prompt_ids(p) for p in PROMPTS], [model.response_ids(r) for r in RESPONSES]


def _reference(model, seq):
    """Plain Hugging Face forward of one unpadded row: (hidden_states tuple, logits)."""
    with torch.no_grad():
        out = model.hf_model(torch.tensor([seq]), output_hidden_states=True)
    return out.hidden_states, out.logits[0].float()


@pytest.mark.parametrize("side", ["right", "left"])
def test_read_outs_equal_hidden_states(model, side):
    p_ids, r_ids = _ids(model)
    layers = list(range(model.n_layers - 1))  # HF's last hidden state is after the final norm
    batch = TokenBatch.pad(model, p_ids, r_ids, side=side)
    found = run(model, batch, read={L: (lambda h: h.float().clone()) for L in layers}).layers
    width = batch.input_ids.shape[1]
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        n = len(p) + len(r)
        real = slice(0, n) if side == "right" else slice(width - n, width)
        hs, _ = _reference(model, p + r)
        for L in layers:
            torch.testing.assert_close(found[L][i, real], hs[L + 1][0].float(), rtol=1e-4, atol=1e-4)


def test_next_token_logprobs_equal_model_logits(model):
    p_ids, r_ids = _ids(model)
    got = next_token_logprobs(model, p_ids, r_ids, batch_size=2)
    for p, r, lp in zip(p_ids, r_ids, got):
        _, logits = _reference(model, p + r)
        assert lp.shape == (len(r) + 1, logits.shape[-1])
        torch.testing.assert_close(lp, torch.log_softmax(logits[len(p) - 1 :], -1), rtol=1e-4, atol=1e-4)


def test_output_layer_on_hidden_states_equals_model_logits(model):
    p_ids, r_ids = _ids(model)
    batch = TokenBatch.pad(model, p_ids[:2], r_ids[:2])
    with torch.no_grad():
        hidden = hidden_states(model, batch)
    for i, n in enumerate(batch.lengths):
        hs, logits = _reference(model, p_ids[i] + r_ids[i])
        torch.testing.assert_close(hidden[i, :n], hs[-1][0], rtol=1e-4, atol=1e-4)  # after the final norm
        torch.testing.assert_close(output_logits(model, hidden[i, :n]), logits, rtol=1e-4, atol=1e-4)


def test_softcapping_is_applied_once(gemma2):
    p_ids, r_ids = _ids(gemma2)
    seq = p_ids[0] + r_ids[0]
    batch = TokenBatch.pad(gemma2, [seq])
    with torch.no_grad():
        hidden = hidden_states(gemma2, batch)
        raw = gemma2.hf_model.get_output_embeddings()(hidden).float()
        capped = output_logits(gemma2, hidden)
    assert float(capped.abs().max()) <= SOFTCAP
    assert float(raw.abs().max()) > 2 * SOFTCAP  # the cap matters for this model
    torch.testing.assert_close(capped, torch.tanh(raw / SOFTCAP) * SOFTCAP)
    _, logits = _reference(gemma2, seq)
    torch.testing.assert_close(capped[0], logits, rtol=1e-4, atol=1e-4)


def test_token_loss_equals_hf_loss_and_has_gradients(model):
    p_ids, r_ids = _ids(model)
    seqs = [p + r for p, r in zip(p_ids[:2], r_ids[:2])]
    batch = TokenBatch.pad(model, seqs)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # nothing predicts the first token
    emb = model.hf_model.get_input_embeddings().weight
    emb.requires_grad_(True)
    try:
        loss, n = token_loss(model, TokenBatch(batch.input_ids, batch.attention_mask), labels)
        loss.backward()
        assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    finally:
        emb.requires_grad_(False)
        emb.grad = None
    assert n == sum(len(s) - 1 for s in seqs)
    with torch.no_grad():
        ref = model.hf_model(batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    torch.testing.assert_close(loss.detach(), ref.float(), rtol=1e-4, atol=1e-5)


def test_interventions_apply_before_read_outs(tiny_model):
    p_ids, r_ids = _ids(tiny_model)
    batch = TokenBatch.pad(tiny_model, p_ids, r_ids)
    v = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(1))
    keep = lambda h: h.float().clone()  # noqa: E731
    plain = run(tiny_model, batch, read={0: keep, 1: keep}).layers
    steered = run(
        tiny_model, batch, read={0: keep, 1: keep}, interventions=[Add(v, coef=2.0, layers=[0], scope="response")]
    ).layers
    real = batch.attention_mask.bool()
    for i, p in enumerate(p_ids):
        # response scope: the last prompt token and every response token
        torch.testing.assert_close(steered[0][i, : len(p) - 1], plain[0][i, : len(p) - 1])
        n = int(real[i].sum())
        torch.testing.assert_close(steered[0][i, len(p) - 1 : n], plain[0][i, len(p) - 1 : n] + 2.0 * v)
    assert not torch.allclose(steered[1][real], plain[1][real])
    # the same intervention through capture gives the same block output
    acts = tiny_model.capture(
        PROMPTS,
        RESPONSES,
        layers=[1],
        reductions=["all_avg"],
        interventions=[Add(v, coef=2.0, layers=[0], scope="response")],
    )
    means = torch.stack([steered[1][i, : int(real[i].sum())].mean(0) for i in range(len(PROMPTS))])
    torch.testing.assert_close(acts["all_avg"][:, 0], means, rtol=1e-4, atol=1e-4)


def _hooks(model) -> int:
    modules = [model.hf_model.get_input_embeddings(), *model.backend.layers]
    return sum(len(m._forward_hooks) for m in modules)


def test_edits_match_edited_inputs_and_carry_gradients(tiny_model):
    p_ids, r_ids = _ids(tiny_model)
    seq = p_ids[1] + r_ids[1]
    batch = TokenBatch.pad(tiny_model, [seq])
    delta = torch.zeros(1, len(seq), tiny_model.d_model, requires_grad=True)
    with torch.no_grad():
        delta.normal_(0, 0.5)
    before = _hooks(tiny_model)
    hidden = hidden_states(tiny_model, batch, edits={EMBED: lambda h: h + delta, 1: lambda h: h * 1.5})
    assert _hooks(tiny_model) == before
    output_logits(tiny_model, hidden).sum().backward()
    assert delta.grad is not None and float(delta.grad.abs().sum()) > 0

    hf = tiny_model.hf_model
    seen = {}
    handle = hf.model.layers[1].register_forward_hook(
        lambda _m, _a, out: (out[0] * 1.5, *out[1:]) if isinstance(out, tuple) else out * 1.5
    )
    try:
        with torch.no_grad():
            embeds = hf.get_input_embeddings()(batch.input_ids) + delta
            seen["ref"] = hf.model(inputs_embeds=embeds).last_hidden_state
    finally:
        handle.remove()  # only ours: transformers keeps its own output-capturing hooks on the blocks
    torch.testing.assert_close(hidden.detach(), seen["ref"], rtol=1e-4, atol=1e-4)


def test_edit_hooks_are_removed_on_errors(tiny_model):
    before = _hooks(tiny_model)

    def fail(h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with residual_edits(tiny_model, {EMBED: fail, 2: fail}):
            tiny_model.hf_model(torch.tensor([[1, 2, 3]]))
    assert _hooks(tiny_model) == before


def test_run_needs_something_to_compute(tiny_model):
    batch = TokenBatch.pad(tiny_model, [[1, 2, 3]])
    with pytest.raises(ValueError, match="Nothing to compute"):
        run(tiny_model, batch)


def test_cached_steps_equal_a_full_forward(tiny_model):
    p_ids, _ = _ids(tiny_model)
    prompt = p_ids[0]
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    pos = torch.arange(len(prompt))[None]
    cache = tiny_model.backend.new_cache()
    with torch.no_grad():
        first, cache = next_token_logits(tiny_model, ids, mask, pos, cache)
        two = select_cache_rows(cache, torch.tensor([0, 0]))  # the prompt's cache, twice
        tokens = torch.tensor([[5], [7]])
        step, _ = next_token_logits(
            tiny_model, tokens, torch.ones(2, len(prompt) + 1, dtype=torch.long), torch.full((2, 1), len(prompt)), two
        )
        again, _ = next_token_logits(tiny_model, ids, mask, pos, None)
    torch.testing.assert_close(first, again)
    for row, tok in enumerate((5, 7)):
        _, full = _reference(tiny_model, prompt + [tok])
        torch.testing.assert_close(step[row].float(), full[-1], rtol=1e-4, atol=1e-4)
