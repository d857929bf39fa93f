"""The fused Llama backend against the hooks backend on a tiny random Llama (GQA, 4 heads / 2 kv heads):
same captures for every reduction, padding side, batch packing and intervention; same logits; it
follows in-place weight edits; and it refuses, clearly, architectures it does not cover."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama
from reference import rel_err

from personaspace.engine import Ablate, Add, Cap, PersonaModel
from personaspace.engine.backends import HFHookBackend, default_backend
from personaspace.engine.backends.fused_llama import FusedLlamaBackend, unsupported_reason
from personaspace.engine.context import REDUCTIONS, position_ids
from personaspace.engine.model import with_backend
from personaspace.errors import BackendError

PROMPTS = ["Tell me about cats.", "What is two plus two? Explain it slowly and at length.", "Hi", "Why is the sky blue?"]
RESPONSES = ["Cats are small mammals.", "Four.", "Hello there, how can I help you today?", ""]


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    """The same tiny model behind both backends."""
    model = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, layers=3), tiny_tokenizer, name="tiny")
    return model, with_backend(model, "hooks")


def test_default_backend_is_fused_for_llama(pair):
    fused, hooks = pair
    assert isinstance(fused.backend, FusedLlamaBackend) and fused.backend.name == "fused"
    assert isinstance(hooks.backend, HFHookBackend)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("budget", [16, 1024])  # many one-row batches / one packed batch
def test_capture_matches_hooks_for_every_reduction(pair, side, budget):
    fused, hooks = pair
    kw = dict(reductions=REDUCTIONS, padding_side=side, token_budget=budget)
    a, b = fused.capture(PROMPTS, RESPONSES, **kw), hooks.capture(PROMPTS, RESPONSES, **kw)
    for r in REDUCTIONS:
        assert rel_err(a[r], b[r]) < 1e-5, r
        assert torch.equal(a.counts[r], b.counts[r])


def test_capture_under_interventions_matches_hooks(pair):
    fused, hooks = pair
    v = torch.randn(fused.d_model, generator=torch.Generator().manual_seed(1))
    ivs = [Add(v, coef=4.0, layers=[0], scope="response"), Ablate(v, layers=[1]), Cap(v, layers=[2], max=0.0, scope="prompt")]
    for side in ("right", "left"):
        a = fused.capture(PROMPTS, RESPONSES, interventions=ivs, padding_side=side)
        b = hooks.capture(PROMPTS, RESPONSES, interventions=ivs, padding_side=side)
        plain = hooks.capture(PROMPTS, RESPONSES, padding_side=side)
        assert rel_err(plain["response_avg"], b["response_avg"]) > 1e-2  # the interventions bite
        for r in a.data:
            assert rel_err(a[r], b[r]) < 1e-5, (side, r)


class RowMeanShift(Add):
    """Not position-wise: adds the mean over each row's scoped positions, which packing would mix up.

    It overrides ``apply`` without declaring ``positionwise``, so it must not inherit Add's True."""

    def apply(self, layer, hidden, mask):
        m = mask[..., None].to(hidden.dtype)
        return hidden + m * (hidden * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp(min=1)


def test_packed_callbacks_only_where_every_intervention_is_positionwise(pair, monkeypatch):
    from personaspace.engine.callbacks import LayerCallback

    fused, hooks = pair
    assert Add.positionwise and not RowMeanShift.positionwise
    v = torch.randn(fused.d_model, generator=torch.Generator().manual_seed(2))
    ivs = [Ablate(v, layers=[0]), RowMeanShift(v, layers=[1], scope="response")]
    packed_layers = []
    real_packed = LayerCallback.packed
    monkeypatch.setattr(LayerCallback, "packed", lambda self, layer, x, index: packed_layers.append(layer) or real_packed(self, layer, x, index))
    a = fused.capture(PROMPTS, RESPONSES, interventions=ivs)
    b = hooks.capture(PROMPTS, RESPONSES, interventions=ivs)
    assert sorted(set(packed_layers)) == [0, 2]  # layer 1 holds the row-wise intervention: padded rows
    for r in a.data:
        assert rel_err(a[r], b[r]) < 1e-5, r


def test_early_exit_captures_equal_full_depth(pair):
    fused, _ = pair
    full = fused.capture(PROMPTS, RESPONSES, layers=[0, 1, 2])
    early = fused.capture(PROMPTS, RESPONSES, layers=[0, 1])
    assert torch.equal(full["response_avg"][:, :2], early["response_avg"])


@pytest.mark.parametrize("keep", [0, 1])
def test_logits_match_hooks(pair, keep):
    fused, hooks = pair
    ids = [fused.prompt_ids(p) for p in PROMPTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([s + [fused.pad_id] * (width - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
    with torch.inference_mode():
        a = fused.backend.forward(input_ids, mask, position_ids(mask), layer_fns={}, logits_to_keep=keep).logits
        b = hooks.backend.forward(input_ids, mask, position_ids(mask), layer_fns={}, logits_to_keep=keep).logits
    assert a.shape == b.shape
    real = mask.bool() if keep == 0 else mask[:, -1:].bool()
    assert rel_err(a[real], b[real]) < 1e-5


def test_uncached_generation_gives_the_same_tokens(pair):
    fused, hooks = pair
    v = torch.randn(fused.d_model, generator=torch.Generator().manual_seed(2))
    steer = [Add(v, coef=6.0, layers=[1])]
    a = fused.generate(PROMPTS[:3], max_new_tokens=8, interventions=steer, use_cache=False)
    b = hooks.generate(PROMPTS[:3], max_new_tokens=8, interventions=steer, use_cache=True)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]


def test_callbacks_see_padded_rows_and_in_place_edits_count(pair):
    """A callback gets [batch, seq, d]; one that edits in place and returns None changes what follows."""
    fused, hooks = pair
    ids = torch.tensor([fused.prompt_ids(p) for p in PROMPTS[2:3]])
    mask = torch.ones_like(ids)
    seen = []

    def zero_in_place(layer, hidden):
        seen.append(tuple(hidden.shape))
        hidden.zero_()

    with torch.inference_mode():
        out = fused.backend.forward(ids, mask, position_ids(mask), layer_fns={0: zero_in_place}, logits_to_keep=1).logits
        ref = hooks.backend.forward(ids, mask, position_ids(mask), layer_fns={0: zero_in_place}, logits_to_keep=1).logits
    assert seen == [(1, ids.shape[1], fused.d_model)] * 2
    assert rel_err(out, ref) < 1e-5


def test_in_place_edits_count_when_the_callback_returns_its_own_tensor(pair):
    """Editing the given tensor and returning it is a replacement too, as with hooks (packed rows)."""
    fused, hooks = pair
    ids = [fused.prompt_ids(p) for p in PROMPTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([s + [fused.pad_id] * (width - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])

    def halve_and_return(layer, hidden):
        return hidden.mul_(0.5)

    with torch.inference_mode():
        fns = {1: halve_and_return}
        out = fused.backend.forward(input_ids, mask, position_ids(mask), layer_fns=fns, logits_to_keep=0).logits
        ref = hooks.backend.forward(input_ids, mask, position_ids(mask), layer_fns=fns, logits_to_keep=0).logits
        plain = hooks.backend.forward(input_ids, mask, position_ids(mask), layer_fns={}, logits_to_keep=0).logits
    real = mask.bool()
    assert rel_err(plain[real], ref[real]) > 1e-3  # the edit bites
    assert rel_err(out[real], ref[real]) < 1e-5


def test_weight_edits_and_replacements_are_followed(tiny_tokenizer):
    model = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, layers=2, seed=3), tiny_tokenizer)
    hooks = with_backend(model, "hooks")
    before = model.capture(PROMPTS, RESPONSES, layers=[1])["response_avg"]
    with torch.no_grad():
        model.hf_model.model.layers[1].self_attn.k_proj.weight.mul_(3.0)
    after = model.capture(PROMPTS, RESPONSES, layers=[1])["response_avg"]
    assert rel_err(after, before) > 1e-3
    assert rel_err(after, hooks.capture(PROMPTS, RESPONSES, layers=[1])["response_avg"]) < 1e-5
    # replaced parameters (not edited in place) are followed too
    block = model.hf_model.model.layers[0]
    for lin in (block.self_attn.v_proj, block.mlp.down_proj):
        lin.weight = torch.nn.Parameter(lin.weight.detach() * 2.0, requires_grad=False)
    replaced = model.capture(PROMPTS, RESPONSES, layers=[1])["response_avg"]
    assert rel_err(replaced, after) > 1e-3
    assert rel_err(replaced, hooks.capture(PROMPTS, RESPONSES, layers=[1])["response_avg"]) < 1e-5


def test_autograd_forwards_go_through_hooks(pair):
    fused, _ = pair
    ids = torch.tensor([fused.prompt_ids("Hi")])
    mask = torch.ones_like(ids)
    with torch.enable_grad():
        emb = fused.hf_model.model.embed_tokens.weight
        emb.requires_grad_(True)
        try:
            logits = fused.backend.forward(ids, mask, position_ids(mask), layer_fns={}).logits
            assert logits.requires_grad
        finally:
            emb.requires_grad_(False)


def test_other_architectures_fall_back_to_hooks_or_fail_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()
    assert "gpt2" in unsupported_reason(gpt2)
    assert isinstance(default_backend(gpt2), HFHookBackend)
    with pytest.raises(BackendError, match="Llama-family models only .*backend='hooks'"):
        FusedLlamaBackend(gpt2)


def _tiny(kind: str, tokenizer, **extra):
    """A tiny random Mistral / Qwen2 / Llama with GQA; biases (where present) made non-zero."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    cls = {"mistral": MistralConfig, "qwen2": Qwen2Config, "llama": LlamaConfig}[kind]
    torch.manual_seed(5)
    config = cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 pad_token_id=tokenizer.pad_token_id, **extra)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))  # random biases too, so their permutation is tested
    hf.requires_grad_(False)
    return PersonaModel.from_hf(hf, tokenizer, name=f"tiny-{kind}")


@pytest.mark.parametrize("kind, extra", [
    ("qwen2", {}),  # q/k/v biases
    ("mistral", {"sliding_window": None}),
    ("mistral", {"sliding_window": 64}),  # rows longer than the window go through Hugging Face's masking
])
def test_other_llama_family_architectures_match_hooks(tiny_tokenizer, kind, extra, monkeypatch):
    fused = _tiny(kind, tiny_tokenizer, **extra)
    assert isinstance(fused.backend, FusedLlamaBackend)
    hooks = with_backend(fused, "hooks")
    delegated = []
    forward = fused.backend.hooks_backend.forward
    monkeypatch.setattr(fused.backend.hooks_backend, "forward", lambda *a, **k: (delegated.append(a[0].shape[1]), forward(*a, **k))[1])
    prompts, responses = PROMPTS + ["Tell me everything " * 20], RESPONSES + ["Fine."]
    for side in ("right", "left"):
        for budget in (64, 4096):  # short rows alone / everything in one batch
            kw = dict(reductions=REDUCTIONS, padding_side=side, token_budget=budget)
            a, b = fused.capture(prompts, responses, **kw), hooks.capture(prompts, responses, **kw)
            for r in REDUCTIONS:
                assert rel_err(a[r], b[r]) < 1e-5, (kind, side, budget, r)
    window = extra.get("sliding_window")
    assert all(width > window for width in delegated) if window else not delegated
    if window:
        assert delegated  # the long row went to hooks; the short batches ran fused


def test_biases_outside_q_k_v_fall_back_to_hooks(tiny_tokenizer):
    model = _tiny("llama", tiny_tokenizer, attention_bias=True)  # a bias on o_proj too
    assert "biases" in unsupported_reason(model.hf_model)
    assert isinstance(model.backend, HFHookBackend)
