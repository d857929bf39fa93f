"""An architecture zoo: tiny random models of 17 families, built offline from transformers' config classes,
each held to the same checks.

For every architecture (2 layers, d_model 64, the ``tiny_tokenizer`` vocabulary):

- **layers**: ``PersonaModel`` finds the decoder blocks (n_layers, d_model);
- **capture**: every reduction, left and right padding, equals ``output_hidden_states`` of one unpadded
  row at a time (:func:`reference.reference_reductions`), also when the forward stops after block 0;
- **generation**: steered greedy generation (``Add`` at the first layer, ``Add`` on the response at the
  last) is the same with the KV cache and with every step recomputed from scratch, and what it captures
  on the way equals a separate capture of the finished pairs;
- **logprobs**: :func:`engine.forward.next_token_logprobs` equals ``log_softmax`` of a plain forward;
- **lora**: one LoRA step (``engine.adapters.add_lora``): ``token_loss`` equals the model's own loss
  (logit scaling and softcapping included), is finite, and the step changes the LoRA weights;
- **orthogonalize**: the edited weights give the logits of hook ablation of the same direction on the
  embedding and every residual write -- or, for post-sublayer norms, a clear refusal;
- **backend**: the fused backend where it applies, the hooks backend and the reason where it does not.

Models with sliding-window attention get a window of 8 tokens, shorter than most prompts here, so the
windowed masks and caches are exercised. MoE models have 4 experts, 2 per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from reference import reference_reductions, rel_err

from personaspace.engine import Add, PersonaModel
from personaspace.engine.backends import HFHookBackend
from personaspace.engine.backends.fused_llama import FusedLlamaBackend, unsupported_reason
from personaspace.engine.context import REDUCTIONS
from personaspace.engine.forward import IGNORE_INDEX, TokenBatch, next_token_logprobs, token_loss
from personaspace.errors import BackendError
from personaspace.steering.orthogonalization import component_ablation, orthogonalize

PROMPTS = ["Hi", "What would you do with a free afternoon in a new city?", "Tell me about cats.", "Why is the sky blue?"]
RESPONSES = ["Hello there, how can I help you today?", "Nothing.", "Cats are small mammals that like to sleep.", ""]
WINDOW = 8  # sliding attention window, shorter than most rows here
D = 64
LAYERS = 2
ATTN = dict(hidden_size=D, intermediate_size=2 * D, num_hidden_layers=LAYERS, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip


@dataclass(frozen=True)
class Arch:
    config: str  # class names in transformers
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    fused: bool = False  # the default backend is the fused one
    post_norms: bool = False  # orthogonalisation refuses it (norm after each sublayer)
    eager: bool = False  # attention implementation "eager" (softcapping, sinks)


MOE = dict(num_experts_per_tok=2)
ZOO: dict[str, Arch] = {
    "llama": Arch("LlamaConfig", "LlamaForCausalLM", ATTN, fused=True),
    "mistral": Arch("MistralConfig", "MistralForCausalLM", {**ATTN, "sliding_window": WINDOW, "head_dim": 16}, fused=True),
    "mixtral": Arch("MixtralConfig", "MixtralForCausalLM", {**ATTN, **MOE, "num_local_experts": 4, "head_dim": 16}),
    "qwen2": Arch("Qwen2Config", "Qwen2ForCausalLM", ATTN, fused=True),
    "qwen2_moe": Arch("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                      {**ATTN, **MOE, "num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}),
    "qwen3": Arch("Qwen3Config", "Qwen3ForCausalLM", {**ATTN, "head_dim": 16}),
    "qwen3_moe": Arch("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {**ATTN, **MOE, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 32}),
    "gemma": Arch("GemmaConfig", "GemmaForCausalLM", {**ATTN, "head_dim": 16}),
    "gemma2": Arch("Gemma2Config", "Gemma2ForCausalLM",
                   {**ATTN, "head_dim": 16, "sliding_window": WINDOW, "final_logit_softcapping": 5.0,
                    "attn_logit_softcapping": 2.0, "query_pre_attn_scalar": 16}, post_norms=True, eager=True),
    "gemma3_text": Arch("Gemma3TextConfig", "Gemma3ForCausalLM",
                        {**ATTN, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                         "layer_types": ["sliding_attention", "full_attention"]}, post_norms=True),
    "phi3": Arch("Phi3Config", "Phi3ForCausalLM", ATTN),
    "olmo2": Arch("Olmo2Config", "Olmo2ForCausalLM", ATTN, post_norms=True),
    "gpt2": Arch("GPT2Config", "GPT2LMHeadModel", dict(n_embd=D, n_layer=LAYERS, n_head=4, n_inner=2 * D, n_positions=512)),
    "gpt_neox": Arch("GPTNeoXConfig", "GPTNeoXForCausalLM", {**ATTN, "num_key_value_heads": None, "rotary_pct": 0.5}),
    "granite": Arch("GraniteConfig", "GraniteForCausalLM",
                    {**ATTN, "logits_scaling": 4.0, "residual_multiplier": 0.5, "embedding_multiplier": 3.0, "attention_multiplier": 0.2}),
    "cohere": Arch("CohereConfig", "CohereForCausalLM", {**ATTN, "logit_scale": 0.5}),
    "gpt_oss": Arch("GptOssConfig", "GptOssForCausalLM",
                    {**ATTN, **MOE, "head_dim": 16, "num_local_experts": 4, "intermediate_size": D, "sliding_window": WINDOW},
                    eager=True),
}  # fmt: skip


def build(name: str, tokenizer) -> Any:
    import transformers

    arch = ZOO[name]
    kwargs = {k: v for k, v in arch.kwargs.items() if v is not None}
    if arch.eager:
        kwargs["attn_implementation"] = "eager"
    config = getattr(transformers, arch.config)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    assert config.model_type == name
    torch.manual_seed(0)
    model = getattr(transformers, arch.model)(config).eval()
    with torch.no_grad():  # random init gives near-uniform logits: separate greedy choices (as conftest does)
        model.get_output_embeddings().weight.mul_(8.0)
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request, tiny_tokenizer):
    name = request.param
    return name, PersonaModel.from_hf(build(name, tiny_tokenizer), tiny_tokenizer, name=f"tiny-random-{name}")


def _ids(model):
    return [model.prompt_ids(p) for p in PROMPTS], [model.response_ids(r) for r in RESPONSES]


def _vector(model, seed: int) -> torch.Tensor:
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))


def test_layers_are_found(zoo):
    name, model = zoo
    assert (model.n_layers, model.d_model) == (LAYERS, D)
    assert len(model.backend.layers) == LAYERS


def test_backend_fused_where_it_applies(zoo):
    name, model = zoo
    reason = unsupported_reason(model.hf_model)
    if ZOO[name].fused:
        assert reason is None and isinstance(model.backend, FusedLlamaBackend)
    else:
        assert isinstance(model.backend, HFHookBackend) and not isinstance(model.backend, FusedLlamaBackend)
        assert reason and name in reason  # e.g. "model_type 'qwen3' is not one of (...)"
        with pytest.raises(BackendError, match="Llama-family"):
            FusedLlamaBackend(model.hf_model)


@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_equals_hidden_states(zoo, side):
    name, model = zoo
    layers = list(range(model.n_layers))
    acts = model.capture(PROMPTS, RESPONSES, layers=layers, reductions=REDUCTIONS, padding_side=side, token_budget=64)
    ref = reference_reductions(model.hf_model, *_ids(model), layers)
    for r in REDUCTIONS:
        assert rel_err(acts[r], ref[r]) < 1e-4, (name, r)
    # the first layer alone: the forward stops after block 0 (no later blocks, no LM head)
    first = model.capture(PROMPTS, RESPONSES, layers=[0], reductions=REDUCTIONS, padding_side=side)
    for r in REDUCTIONS:
        assert rel_err(first[r][:, 0], ref[r][:, 0]) < 1e-4, (name, r)


def test_steered_generation_same_with_and_without_cache(zoo):
    name, model = zoo
    v = _vector(model, 1)
    ivs = [Add(v, coef=1.0, layers=[0]), Add(v, coef=-2.0, layers=[model.n_layers - 1], scope="response")]
    kw = dict(max_new_tokens=6, interventions=ivs)
    cached = model.generate(PROMPTS, capture_layers=True, reductions=REDUCTIONS, **kw)
    recomputed = model.generate(PROMPTS, use_cache=False, **kw)
    assert [g.response_ids for g in cached] == [g.response_ids for g in recomputed], name
    assert all(len(g.response_ids) > 0 for g in cached)
    # what the cached generation captured equals a capture of the finished pairs under the same steering
    after = model.capture([g.prompt_ids for g in cached], [g.response_ids for g in cached],
                          reductions=REDUCTIONS, interventions=ivs)  # fmt: skip
    for r in REDUCTIONS:
        assert rel_err(cached.activations[r], after[r]) < 1e-4, (name, r)
    plain = model.capture([g.prompt_ids for g in cached], [g.response_ids for g in cached], reductions=["response_avg"])
    assert rel_err(plain["response_avg"], after["response_avg"]) > 1e-3  # the steering bites


def test_next_token_logprobs_equal_model_logits(zoo):
    name, model = zoo
    p_ids, r_ids = _ids(model)
    got = next_token_logprobs(model, p_ids, r_ids, batch_size=3)
    for p, r, lp in zip(p_ids, r_ids, got):
        with torch.no_grad():
            logits = model.hf_model(torch.tensor([p + r])).logits[0].float()
        torch.testing.assert_close(lp, torch.log_softmax(logits[len(p) - 1 :], -1), rtol=1e-4, atol=1e-4)


def test_lora_step(zoo):
    from personaspace.engine.adapters import add_lora

    name, model = zoo
    adapted = add_lora(model, r=4, seed=0)
    assert adapted.n_trainable() > 0
    before = adapted.lora_state()
    p_ids, r_ids = _ids(model)
    batch = TokenBatch.pad(adapted.model, p_ids[:3], r_ids[:3])
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    optimizer = torch.optim.SGD(adapted.trainable(), lr=0.1)
    loss, n = token_loss(adapted.model, batch, labels)
    assert torch.isfinite(loss) and n == int(batch.attention_mask.sum()) - 3
    with torch.no_grad():  # the model's own loss: logit scaling and softcapping as the model applies them
        ref = adapted.model.hf_model(batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    torch.testing.assert_close(loss.detach(), ref.float(), rtol=1e-4, atol=1e-5)
    loss.backward()
    optimizer.step()
    after = adapted.lora_state()
    assert set(after) == set(before) and any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(t).all() for t in after.values())


def test_orthogonalize_equals_hook_ablation(zoo):
    name, model = zoo
    u = _vector(model, 2)
    if ZOO[name].post_norms:
        with pytest.raises(BackendError, match="normalises"):
            orthogonalize(model, u)
        pytest.skip(f"{name}: norms after the attention/MLP outputs; orthogonalisation refuses (tested above)")
    ids = torch.tensor([model.prompt_ids(PROMPTS[1]) + model.response_ids(RESPONSES[0])])
    with torch.no_grad():
        base = model.hf_model(ids).logits
        with component_ablation(model, u):
            hooked = model.hf_model(ids).logits
        edited = orthogonalize(model, u)
        ortho = edited(ids).logits
        assert torch.equal(model.hf_model(ids).logits, base)  # the original is untouched
    assert rel_err(ortho, hooked) < 1e-4, name
    assert rel_err(ortho, base) > 1e-3  # the edit did something
