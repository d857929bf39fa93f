"""Numerics and placement: half precision, offloaded and quantized weights, and the clear errors around them.

- bfloat16 / float16 copies of a tiny Llama (fused and hooks backends) and a tiny GPT-2 (hooks): capture,
  generation and steering over padded batches stay finite, captures come back float32 and stay within
  a dtype-sized tolerance of the float32 model's;
- weights offloaded to disk (``device_map`` + ``offload_folder``, ``accelerate.dispatch_model``) or kept
  on the CPU by ``accelerate.cpu_offload`` (the modules' weights on the meta device): the hooks backend
  (and nnsight, TransformerLens) runs them and matches the model in memory; the fused backend steps
  aside with a reason, and keeps a device_map onto one device;
- torchao int8 weight-only quantization: through the hooks backend, close to the float model;
- wrong combinations (fused on offloaded or quantized weights, both ``device`` and ``device_map``, an
  unknown dtype) fail with one line.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_llama
from reference import rel_err

from personaspace.engine import Ablate, Add, Cap, PersonaModel
from personaspace.engine.backends import HFHookBackend, default_backend
from personaspace.engine.backends.fused_llama import FusedLlamaBackend, unsupported_reason
from personaspace.engine.context import REDUCTIONS
from personaspace.engine.model import with_backend
from personaspace.engine.placement import fast_path_reason, input_device, placement_reason, quantization_reason
from personaspace.errors import BackendError, InvalidArgumentError, PersonaspaceError
from personaspace.models import pick_dtype
from personaspace.vectors.store import PersonaVector, VectorMeta

PROMPTS = ["Tell me about cats.", "What is two plus two? Explain it slowly and at length, please, with care.", "Hi", "Why is the sky blue?"]
RESPONSES = ["Cats are small mammals.", "Four.", "Hello there, how can I help you today?", ""]
# Relative error (norm of the difference / norm of the float32 result) allowed for a capture in each dtype.
TOLERANCE = {torch.bfloat16: 0.02, torch.float16: 0.003}  # measured: about 0.005 and 0.0007
HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _tiny_gpt2(tokenizer, layers: int = 3, hidden: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # tied to the embedding: well separated greedy choices, as the tiny Llama
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def float_models(tiny_tokenizer):
    """float32 references: a tiny Llama (fused by default) and a tiny GPT-2 (hooks)."""
    return {
        "llama": PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, layers=3), tiny_tokenizer, name="tiny-llama"),
        "gpt2": PersonaModel.from_hf(_tiny_gpt2(tiny_tokenizer), tiny_tokenizer, name="tiny-gpt2"),
    }


@pytest.fixture(scope="module")
def half_models(float_models):
    """(arch, dtype, backend) -> the same weights cast to bfloat16 / float16."""
    out = {}
    for arch, ref in float_models.items():
        for dtype in (torch.bfloat16, torch.float16):
            model = PersonaModel.from_hf(copy.deepcopy(ref.hf_model).to(dtype), ref.tokenizer, name=f"{ref.name}-{dtype}")
            out[arch, dtype, model.backend.name] = model
            if arch == "llama":
                out[arch, dtype, "hooks"] = with_backend(model, "hooks")
    return out


def _steering(d_model: int) -> list:
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(1))
    return [Add(v, coef=4.0, layers=[0], scope="response"), Ablate(v, layers=[1]), Cap(v, layers=[2], max=0.0, scope="prompt")]


def _finite(acts) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in acts.data.values())


CASES = [("llama", "fused"), ("llama", "hooks"), ("gpt2", "hooks")]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_half_precision_capture_is_finite_float32_and_close(float_models, half_models, arch, backend, dtype):
    ref, model = float_models[arch], half_models[arch, dtype, backend]
    assert model.backend.name == backend and next(model.hf_model.parameters()).dtype == dtype
    for side in ("right", "left"):
        for ivs in ([], _steering(model.d_model)):  # interventions in the model's dtype; Ablate/Cap project in float32
            kw = dict(reductions=REDUCTIONS, padding_side=side, token_budget=48, interventions=ivs)  # several padded batches
            got, want = model.capture(PROMPTS, RESPONSES, **kw), ref.capture(PROMPTS, RESPONSES, **kw)
            assert _finite(got), (side, ivs)
            for r in REDUCTIONS:
                assert got[r].dtype == torch.float32
                assert rel_err(got[r], want[r]) < TOLERANCE[dtype], (side, bool(ivs), r, rel_err(got[r], want[r]))
                assert torch.equal(got.counts[r], want.counts[r])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_half_precision_steered_generation_over_padded_batches(float_models, half_models, arch, backend, dtype):
    ref, model = float_models[arch], half_models[arch, dtype, backend]
    steer = [Add(torch.randn(model.d_model, generator=torch.Generator().manual_seed(2)), coef=2.0, layers=[1])]
    for use_cache in (True, False):  # KV cache over left-padded rows / full recompute (the fused path when cache-free)
        got = model.generate(PROMPTS, max_new_tokens=10, capture_layers=True, use_cache=use_cache, interventions=steer)
        want = ref.generate(PROMPTS, max_new_tokens=10, capture_layers=True, use_cache=use_cache, interventions=steer)
        assert all(g.response_ids for g in got)
        assert _finite(got.activations) and got.activations["response_avg"].dtype == torch.float32
        # The same greedy answers, at least at first (a near tie may flip a later token in half precision).
        assert all(g.response_ids[:3] == w.response_ids[:3] for g, w in zip(got, want)), use_cache
        assert sum(g.response_ids == w.response_ids for g, w in zip(got, want)) >= len(PROMPTS) - 1
        plain = model.generate(PROMPTS, max_new_tokens=10, use_cache=use_cache)
        assert [g.response_ids for g in plain] != [g.response_ids for g in got]  # the steering bites


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_half_precision_teacher_forced_forward(float_models, half_models, arch, backend, dtype):
    """Log-probs come back float32 and close; padded rows (either side) leave no NaN anywhere, padding included."""
    from personaspace.engine.forward import TokenBatch, next_token_logprobs, run

    ref, model = float_models[arch], half_models[arch, dtype, backend]
    p_ids, r_ids = [model.prompt_ids(p) for p in PROMPTS], [model.response_ids(r) for r in RESPONSES]
    got, want = next_token_logprobs(model, p_ids, r_ids), next_token_logprobs(ref, p_ids, r_ids)
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in got)
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))  # measured: 0.04 (bf16), 0.006 (fp16)
    assert diff < {torch.bfloat16: 0.15, torch.float16: 0.03}[dtype], diff
    for side in ("left", "right"):
        out = run(model, TokenBatch.pad(model, p_ids, r_ids, side=side), read={1: torch.clone}, logits=True)
        assert bool(torch.isfinite(out.logits).all()) and bool(torch.isfinite(out.layers[1]).all()), side


@pytest.mark.parametrize("dtype", HALF)
def test_vectors_from_half_precision_activations_are_float32(half_models, dtype, tmp_path):
    model = half_models["llama", dtype, "fused"]
    acts = model.capture(PROMPTS, RESPONSES, reductions=["response_avg"])
    diff = acts["response_avg"][:2].mean(0) - acts["response_avg"][2:].mean(0)  # [layers, d_model]
    vec = PersonaVector(diff, VectorMeta(trait="evil", model=model.name))
    assert vec.data.dtype == torch.float32
    vec.save(tmp_path / "evil")
    assert PersonaVector.load(tmp_path / "evil").data.dtype == torch.float32
    with model.intervene(Add(vec, coef=1.0)):  # a float32 vector steers a half-precision model
        assert _finite(model.capture(PROMPTS[:2], RESPONSES[:2]))


def test_float16_projections_do_not_overflow(half_models):
    """Ablate/Cap project in float32: a float16 dot product over large activations would be inf."""
    model = half_models["llama", torch.float16, "hooks"]
    v = torch.ones(model.d_model)
    big = Add(v, coef=10000.0, layers=[0])  # h ~ 1e4 per dimension fits float16; h . v_hat ~ 1e4 * sqrt(64) does not
    for iv in (Ablate(v, layers=[0]), Cap(v, layers=[0], max=1.0)):
        acts = model.capture(PROMPTS, RESPONSES, layers=[0, 1], interventions=[big, iv])
        assert _finite(acts)


# ---- placement: offloaded, sharded and meta weights -------------------------------------------------

# Layers 1 and 2 on disk (their weights on the meta device, read from the offload folder at each call).
OFFLOAD_MAP = {
    "model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
    "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def saved_llama(float_models, tmp_path_factory):
    """The float32 tiny Llama saved as a model directory (for PersonaModel.load with a device_map)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    ref = float_models["llama"]
    ref.hf_model.save_pretrained(path)
    ref.tokenizer.save_pretrained(path)
    return path


def _same_as_in_memory(model, ref, *, atol: float = 1e-5) -> dict[str, float]:
    """Capture, steered generation (cached and not) and capture under interventions equal the reference's."""
    diffs = {}
    a, b = model.capture(PROMPTS, RESPONSES, reductions=REDUCTIONS), ref.capture(PROMPTS, RESPONSES, reductions=REDUCTIONS)
    diffs["capture"] = max(float((a[r] - b[r]).abs().max()) for r in REDUCTIONS)
    ivs = _steering(model.d_model)
    a, b = model.capture(PROMPTS, RESPONSES, interventions=ivs), ref.capture(PROMPTS, RESPONSES, interventions=ivs)
    diffs["capture, steered"] = max(float((a[r] - b[r]).abs().max()) for r in a.data)
    steer = [Add(torch.randn(model.d_model, generator=torch.Generator().manual_seed(2)), coef=4.0, layers=[1])]
    for use_cache in (True, False):
        got = model.generate(PROMPTS, max_new_tokens=8, capture_layers=True, interventions=steer, use_cache=use_cache)
        want = ref.generate(PROMPTS, max_new_tokens=8, capture_layers=True, interventions=steer, use_cache=use_cache)
        assert [g.response_ids for g in got] == [w.response_ids for w in want], use_cache
        diffs[f"generation capture, cache={use_cache}"] = max(float((got.activations[r] - want.activations[r]).abs().max()) for r in got.activations.data)
    assert max(diffs.values()) < atol, diffs
    return diffs


def test_disk_offload_through_load_runs_on_hooks_and_matches(saved_llama, float_models, tmp_path):
    model = PersonaModel.load(str(saved_llama), device_map=OFFLOAD_MAP, offload_folder=str(tmp_path / "offload"))
    assert "disk" in set(model.hf_model.hf_device_map.values())
    assert isinstance(model.backend, HFHookBackend)
    assert unsupported_reason(model.hf_model) == "weights offloaded to disk by device_map"
    assert model.device == torch.device("cpu")
    _same_as_in_memory(model, float_models["llama"])


def test_a_device_map_onto_one_device_keeps_the_fused_backend(saved_llama, float_models):
    model = PersonaModel.load(str(saved_llama), device_map={"": "cpu"})
    assert isinstance(model.backend, FusedLlamaBackend)
    _same_as_in_memory(model, float_models["llama"])
    one = copy.deepcopy(float_models["llama"].hf_model)
    one.hf_device_map = {"model": "cpu", "lm_head": "cpu"}  # as accelerate records a map onto one device
    assert fast_path_reason(one) is None and isinstance(default_backend(one), FusedLlamaBackend)


def test_embedding_on_disk_builds_inputs_on_the_execution_device(float_models, tmp_path):
    from accelerate import dispatch_model

    ref = float_models["llama"]
    device_map = {**dict.fromkeys(OFFLOAD_MAP, "disk"), "model.rotary_emb": "cpu", "model.norm": "cpu"}
    hf = dispatch_model(copy.deepcopy(ref.hf_model), device_map=device_map, offload_dir=str(tmp_path / "offload"))
    assert next(hf.parameters()).device.type == "meta"
    model = PersonaModel.from_hf(hf, ref.tokenizer)
    assert model.device == input_device(hf) == torch.device("cpu")
    assert isinstance(model.backend, HFHookBackend)
    _same_as_in_memory(model, ref)


def test_accelerate_cpu_offload_runs_on_hooks_and_matches(float_models):
    from accelerate import cpu_offload

    ref = float_models["llama"]
    hf = cpu_offload(copy.deepcopy(ref.hf_model), execution_device="cpu")
    assert all(p.device.type == "meta" for p in hf.model.layers.parameters())
    assert placement_reason(hf) == "weights offloaded by accelerate"
    model = PersonaModel.from_hf(hf, ref.tokenizer)
    assert isinstance(model.backend, HFHookBackend) and model.device == torch.device("cpu")
    _same_as_in_memory(model, ref)


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_other_backends_run_offloaded_weights(float_models, tmp_path, backend):
    """nnsight and TransformerLens call the model's own forward too, so accelerate's offload hooks work under them."""
    pytest.importorskip({"nnsight": "nnsight", "transformer_lens": "transformer_lens"}[backend])
    from accelerate import dispatch_model

    ref = float_models["llama"]
    hf = dispatch_model(copy.deepcopy(ref.hf_model), device_map=OFFLOAD_MAP, offload_dir=str(tmp_path / "offload"))
    model = with_backend(PersonaModel.from_hf(hf, ref.tokenizer), backend)
    assert model.backend.name == backend
    _same_as_in_memory(model, ref, atol=1e-5)


def _sharded(hf):
    """A copy that says (as accelerate would) it is spread over two GPUs."""
    copy_ = copy.deepcopy(hf)
    copy_.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "model.norm": 1, "lm_head": 1}
    return copy_


def _meta(hf):
    with torch.device("meta"):
        return type(hf)(hf.config).eval()


def _gptq_config(hf):
    copy_ = copy.deepcopy(hf)
    copy_.config.quantization_config = {"quant_method": "gptq", "bits": 4}
    return copy_


@pytest.mark.parametrize(("make", "reason"), [
    (_sharded, "weights spread over cuda:0, cuda:1 by device_map"),
    (_meta, "weights on the meta device (offloaded, or not loaded)"),
    (_gptq_config, "quantized weights (gptq)"),
])
def test_fused_steps_aside_with_a_reason(float_models, make, reason):
    hf = make(float_models["llama"].hf_model)
    assert unsupported_reason(hf) == reason == fast_path_reason(hf)
    assert isinstance(default_backend(hf), HFHookBackend)
    with pytest.raises(BackendError) as info:
        FusedLlamaBackend(hf)
    message = str(info.value)
    assert "\n" not in message and reason in message and "backend='hooks'" in message


def test_weights_offloaded_after_the_fused_backend_was_chosen_fail_clearly(float_models):
    from accelerate import cpu_offload

    ref = float_models["llama"]
    model = PersonaModel.from_hf(copy.deepcopy(ref.hf_model), ref.tokenizer)
    assert isinstance(model.backend, FusedLlamaBackend)
    cpu_offload(model.hf_model, execution_device="cpu")
    with pytest.raises(BackendError, match="cannot read a decoder block with weights offloaded by accelerate"):
        model.capture(PROMPTS, RESPONSES)
    _same_as_in_memory(with_backend(model, "hooks"), ref)


# ---- quantized weights (torchao) --------------------------------------------------------------------


def _torchao_int8(hf):
    """An int8 weight-only copy of ``hf`` (torchao), or a skip saying why torchao cannot run here."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as exc:  # pragma: no cover - depends on the installed torchao
        pytest.skip(f"torchao does not import with this torch: {type(exc).__name__}: {exc}")
    quantized = copy.deepcopy(hf)
    quantize_(quantized.model.layers, Int8WeightOnlyConfig(set_inductor_config=False))  # the decoder's linear layers; the tied head stays float
    return quantized


def test_torchao_int8_weights_run_on_hooks_close_to_float(float_models):
    ref = float_models["llama"]
    hf = _torchao_int8(ref.hf_model)
    reason = quantization_reason(hf)
    assert reason is not None and reason.startswith("quantized weights (") and unsupported_reason(hf) == reason
    model = PersonaModel.from_hf(hf, ref.tokenizer, name="tiny-int8")
    assert isinstance(model.backend, HFHookBackend)
    with pytest.raises(BackendError, match="cannot run a model with quantized weights"):
        with_backend(model, "fused")
    a, b = model.capture(PROMPTS, RESPONSES, reductions=REDUCTIONS), ref.capture(PROMPTS, RESPONSES, reductions=REDUCTIONS)
    for r in REDUCTIONS:
        assert _finite(a) and rel_err(a[r], b[r]) < 0.02, (r, rel_err(a[r], b[r]))
    steer = [Add(torch.randn(model.d_model, generator=torch.Generator().manual_seed(2)), coef=4.0, layers=[1])]
    got = model.generate(PROMPTS, max_new_tokens=8, capture_layers=True, interventions=steer)
    want = ref.generate(PROMPTS, max_new_tokens=8, capture_layers=True, interventions=steer)
    assert _finite(got.activations)
    assert sum(g.response_ids == w.response_ids for g, w in zip(got, want)) >= len(PROMPTS) - 1
    assert [g.response_ids for g in got] != [g.response_ids for g in model.generate(PROMPTS, max_new_tokens=8)]


def test_torchao_config_through_load(saved_llama, float_models):
    """transformers' TorchAoConfig at load time: the config says quantized, so hooks; close to the float model."""
    _torchao_int8(float_models["llama"].hf_model)  # skips where torchao cannot run
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    model = PersonaModel.load(str(saved_llama), quantization_config=TorchAoConfig(Int8WeightOnlyConfig(set_inductor_config=False)))
    assert isinstance(model.backend, HFHookBackend) and unsupported_reason(model.hf_model) == "quantized weights (torchao)"
    got, want = model.capture(PROMPTS, RESPONSES), float_models["llama"].capture(PROMPTS, RESPONSES)
    assert _finite(got) and all(rel_err(got[r], want[r]) < 0.02 for r in got.data)


# ---- wrong combinations: one line, before the weights load -------------------------------------------


def _one_line(exc: BaseException) -> str:
    assert isinstance(exc, PersonaspaceError)
    message = str(exc)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    (dict(backend="fused", device_map=OFFLOAD_MAP, offload_folder="off"), BackendError, "cannot run a model with weights offloaded to disk by device_map"),
    (dict(backend="fused", device_map={"model": 0, "lm_head": "cpu"}), BackendError, "weights spread over cpu, cuda:0"),
    (dict(backend="fused", quantization_config={"quant_method": "gptq", "bits": 4}), BackendError, "quantized weights (gptq)"),
    (dict(backend="fusd"), BackendError, "Unknown backend 'fusd'"),
    (dict(device="cpu", device_map="auto"), InvalidArgumentError, "Pass device or device_map, not both"),
    (dict(dtype="fp8"), InvalidArgumentError, "dtype must be one of float32, bfloat16, float16"),
    (dict(dtype=torch.int8), InvalidArgumentError, "dtype must be a floating-point type"),
])
def test_wrong_combinations_fail_before_loading(saved_llama, monkeypatch, kwargs, error, text):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(error) as info:
        PersonaModel.load(str(saved_llama), **kwargs)
    assert text in _one_line(info.value)


def test_dtype_names():
    assert pick_dtype("cpu") == torch.float32 and pick_dtype("cuda") == torch.bfloat16
    assert pick_dtype("cpu", "bf16") == pick_dtype("cpu", "bfloat16") == pick_dtype("cpu", torch.bfloat16) == torch.bfloat16
    assert pick_dtype("cpu", "fp16") == pick_dtype("cpu", "torch.float16") == pick_dtype("cpu", "half") == torch.float16
    assert pick_dtype("cpu", "auto") == "auto"


def test_half_precision_load_from_a_directory(saved_llama, float_models):
    model = PersonaModel.load(str(saved_llama), dtype="bf16")
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16 and isinstance(model.backend, FusedLlamaBackend)
    got, want = model.capture(PROMPTS, RESPONSES), float_models["llama"].capture(PROMPTS, RESPONSES)
    assert _finite(got) and all(rel_err(got[r], want[r]) < TOLERANCE[torch.bfloat16] for r in got.data)
