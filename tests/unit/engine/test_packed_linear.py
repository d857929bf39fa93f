"""engine.backends.packed_linear: oneDNN matmuls on reordered weights give F.linear's results, follow
weight edits through the fused backend, and switch off with PERSONASPACE_ONEDNN=0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama
from reference import rel_err

from personaspace.engine import PersonaModel
from personaspace.engine.backends import packed_linear
from personaspace.engine.backends.packed_linear import ChunkedHead, Linear
from personaspace.engine.model import with_backend

PROMPTS = ["Tell me about cats.", "What is two plus two? Explain it slowly.", "Hi"]


@pytest.fixture()
def onednn_off(monkeypatch):
    monkeypatch.setenv(packed_linear.ENV, "0")
    packed_linear.onednn_works.cache_clear()
    yield
    monkeypatch.undo()
    packed_linear.onednn_works.cache_clear()


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_linear_and_its_residual_form_match_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    w, b = torch.randn(96, 40, generator=gen), torch.randn(96, generator=gen)
    x, residual = torch.randn(rows, 40, generator=gen), torch.randn(rows, 96, generator=gen)
    assert rel_err(Linear(w, b)(x), F.linear(x, w, b)) < 1e-6
    assert rel_err(Linear(w).add_to(residual, x), residual + x @ w.T) < 1e-6
    assert rel_err(Linear(w)(x.T.contiguous().T), x @ w.T) < 1e-6  # a strided input


def test_onednn_is_used_for_float32_on_cpu_only():
    if not packed_linear.onednn_works():
        pytest.skip("this PyTorch has no usable oneDNN linear")
    assert Linear(torch.randn(8, 4)).onednn
    assert not Linear(torch.randn(8, 4, dtype=torch.bfloat16)).onednn


def test_the_switch_turns_it_off(onednn_off):
    assert not packed_linear.onednn_works()
    lin = Linear(torch.randn(8, 4))
    assert not lin.onednn and lin.weight.layout == torch.strided


def test_chunked_head_covers_the_vocabulary_and_follows_edits():
    w = torch.randn(10, 4)
    head = ChunkedHead(w, chunk=4)
    h = torch.randn(3, 4)
    assert rel_err(torch.cat([head.logits(h, c) for c in range(len(head.starts))], -1), h @ w.T) < 1e-6
    assert not head.stale()
    w.mul_(2.0)
    assert head.stale()


def test_fused_generation_and_capture_are_the_same_with_and_without_onednn(tiny_tokenizer, onednn_off):
    """The switch is read when the fused blocks are built: a model made with it off runs F.linear."""
    hf = make_tiny_llama(tiny_tokenizer, layers=2, seed=5)
    plain = PersonaModel.from_hf(hf, tiny_tokenizer)
    ref_gen = plain.generate(PROMPTS, max_new_tokens=8)
    ref_cap = plain.capture(PROMPTS, [g.response_ids for g in ref_gen], layers=[1])["response_avg"]
    packed_linear.onednn_works.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(packed_linear.ENV, "1")
        fast = PersonaModel.from_hf(hf, tiny_tokenizer)
        out = fast.generate(PROMPTS, max_new_tokens=8)
        cap = fast.capture(PROMPTS, [g.response_ids for g in out], layers=[1])["response_avg"]
    assert [g.response_ids for g in out] == [g.response_ids for g in ref_gen]
    assert rel_err(cap, ref_cap) < 1e-5


def test_in_place_edits_of_every_matrix_and_the_lm_head_are_followed(tiny_tokenizer):
    model = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, layers=2, seed=4), tiny_tokenizer)
    hooks = with_backend(model, "hooks")
    model.generate(PROMPTS, max_new_tokens=4)  # build the reordered weights and the chunked head
    block = model.hf_model.model.layers[1]
    with torch.no_grad():
        for lin in (block.self_attn.o_proj, block.mlp.up_proj):
            lin.weight.mul_(1.5)
        first = model.hf_model.model.layers[0]  # no matrix of it edited: only its norms' stamps can tell
        for norm in (first.input_layernorm, first.post_attention_layernorm):  # folded into q|k|v, gate and up
            norm.weight.add_(torch.linspace(-0.5, 0.5, norm.weight.numel()))
        model.hf_model.lm_head.weight[:, :8].mul_(-1.0)  # tied to the embeddings: both change
    fused_out = model.generate(PROMPTS, max_new_tokens=8)
    hooks_out = hooks.generate(PROMPTS, max_new_tokens=8)
    assert [g.response_ids for g in fused_out] == [g.response_ids for g in hooks_out]
    caps = [m.capture(PROMPTS, [g.response_ids for g in fused_out], layers=[1])["response_avg"] for m in (model, hooks)]
    assert rel_err(caps[0], caps[1]) < 1e-5


def test_copies_are_made_only_when_they_fit_in_memory(monkeypatch, tiny_tokenizer):
    assert packed_linear.room_for_copies(1)
    assert not packed_linear.room_for_copies(1 << 60)
    import personaspace.engine.backends.fused_llama as fused

    monkeypatch.setattr(fused, "room_for_copies", lambda nbytes: False)
    model = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, layers=2, seed=6), tiny_tokenizer)
    model.generate(PROMPTS[:1], max_new_tokens=2)
    assert model.backend.onednn is False
    assert not model.backend._block(0).o.onednn and not model.backend.lm_head()._chunks[0].onednn


def test_pack_linears_swaps_float32_linears_and_keeps_the_outputs():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False)))
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    x = torch.randn(2, 5, 16, generator=gen)  # leading dimensions, as nn.Linear takes them
    with torch.inference_mode():
        expected = model(x)
        replaced = packed_linear.pack_linears(model)
        assert packed_linear.pack_linears(half) == 0  # bfloat16 weights stay as they are
        if not packed_linear.onednn_works():
            assert replaced == 0
            return
        assert replaced == 2 and isinstance(model[0], packed_linear.PackedLinear) and isinstance(model[2][0], packed_linear.PackedLinear)
        assert model(x).shape == expected.shape and rel_err(model(x), expected) < 1e-6


def test_pack_linears_does_nothing_with_onednn_off(onednn_off):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert packed_linear.pack_linears(model) == 0 and isinstance(model[0], torch.nn.Linear)
