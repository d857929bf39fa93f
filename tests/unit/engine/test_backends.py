"""Backends on a tiny random Llama: nnsight (local and simulated remote) and TransformerLens agree with hooks."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from conftest import make_tiny_llama
from reference import rel_err

from personaspace.engine import Ablate, Add, Cap, PersonaModel
from personaspace.engine.context import REDUCTIONS

pytest.importorskip("nnsight")
pytest.importorskip("transformer_lens.model_bridge")

from personaspace.engine.backends.nnsight_backend import NNsightBackend, _strict_simulation, wrap_hf_model  # noqa: E402
from personaspace.engine.backends.transformer_lens_backend import TransformerLensBackend, boot_bridge  # noqa: E402
from personaspace.engine.model import from_bridge, from_nnsight, make_backend, with_backend  # noqa: E402
from personaspace.errors import BackendError  # noqa: E402

PROMPTS = ["Tell me a story about a cat.", "Hi", "Why is the sky blue? Answer briefly."]


@pytest.fixture(scope="module")
def hooks_model(tiny_tokenizer):
    return PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, seed=3), tiny_tokenizer, name="tiny")


@pytest.fixture(scope="module")
def variants(hooks_model, tiny_tokenizer):
    """The same tiny model through every backend (TransformerLens on its own copy: it forces eager attention)."""
    tl_hf = make_tiny_llama(tiny_tokenizer, seed=3)
    return {
        "nnsight": with_backend(hooks_model, "nnsight"),
        "remote-sim": with_backend(hooks_model, "nnsight", remote="local"),
        "transformer_lens": PersonaModel(PersonaModel.from_hf(tl_hf, tiny_tokenizer).loaded, backend=make_backend("transformer_lens", tl_hf, tiny_tokenizer)),
    }


def steering(d_model: int):
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(1))
    return [
        Add(v, coef=1.0, layers=[1], scope="response"),
        Ablate(torch.roll(v, 2), layers=[2], scope="all"),
        Cap(torch.roll(v, 1), max=0.1, layers=[0], scope="prompt"),
    ]


@pytest.mark.parametrize("name", ["nnsight", "remote-sim", "transformer_lens"])
def test_capture_matches_hooks(hooks_model, variants, name):
    model = variants[name]
    p_ids = [model.prompt_ids(p) for p in PROMPTS]
    r_ids = [[11, 12, 13, 14], [], [21, 22]]
    ivs = steering(hooks_model.d_model)
    for early_exit in (True, False):
        ref = hooks_model.capture(p_ids, r_ids, reductions=REDUCTIONS, interventions=ivs, layers=[0, 2, 3], early_exit=early_exit)
        got = model.capture(p_ids, r_ids, reductions=REDUCTIONS, interventions=ivs, layers=[0, 2, 3], early_exit=early_exit)
        for r in REDUCTIONS:
            assert rel_err(got[r], ref[r]) < 1e-5, (name, r)
            assert torch.equal(got.counts[r], ref.counts[r])


@pytest.fixture(scope="module")
def steered_ref(hooks_model):
    ivs = steering(hooks_model.d_model)
    plain = hooks_model.generate(PROMPTS[:2], max_new_tokens=6)
    steered = hooks_model.generate(PROMPTS[:2], max_new_tokens=6, interventions=ivs, capture_layers=[1, 3])
    # The steering is strong enough to change the tokens, so the equality checks below have teeth.
    assert [g.response_ids for g in plain] != [g.response_ids for g in steered]
    return ivs, steered


@pytest.mark.parametrize("name", ["nnsight", "transformer_lens"])
def test_steered_generation_with_cache_matches_hooks(variants, steered_ref, name):
    ivs, ref = steered_ref
    got = variants[name].generate(PROMPTS[:2], max_new_tokens=6, interventions=ivs, capture_layers=[1, 3])
    assert [g.response_ids for g in got] == [g.response_ids for g in ref]
    assert rel_err(got.activations["response_avg"], ref.activations["response_avg"]) < 1e-5


def test_transformer_lens_cache_alias_is_scoped(variants):
    """The ``cache=`` alias for TransformerLens's attention bridges lives only as long as one cached forward."""
    model = variants["transformer_lens"]
    updaters = model.backend._kv_updaters
    assert len(updaters) == model.n_layers  # one attention bridge per block
    model.generate(["Hi"], max_new_tokens=2)
    assert not any("_update_kv_cache" in vars(m) for m in updaters)


def test_generation_uses_no_deprecated_transformers_api(tiny_model, variants):
    """No deprecation from transformers on any generating path: fused, hooks, nnsight, TransformerLens, HF judge.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (old name removed in 5.40): passing the old
    keyword raises a FutureWarning, reading ``output.past_key_values`` logs a warning once per process.
    """
    from personaspace.judges.hf_judge import HFJudge

    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        hf_logging = None

    class Record(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    ivs = steering(tiny_model.d_model)
    judge = HFJudge("tiny", model=tiny_model.hf_model, tokenizer=tiny_model.tokenizer)
    logged = Record()
    hf_root = logging.getLogger("transformers")
    if hf_logging is not None and hasattr(getattr(hf_logging, "warning_once", None), "cache_clear"):
        hf_logging.warning_once.cache_clear()  # messages already logged once in this process would hide
    hf_root.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = {
                "fused": tiny_model,
                "hooks": with_backend(tiny_model, "hooks"),
                "nnsight": variants["nnsight"],
                "transformer_lens": variants["transformer_lens"],
            }
            for name, model in runs.items():
                out = model.generate(PROMPTS[:2], max_new_tokens=3, interventions=ivs)
                assert all(len(g.response_ids) > 0 for g in out), name
            judge.number_distribution([tiny_model.prompt_ids("Rate this answer from 0 to 100.")])
    finally:
        hf_root.removeHandler(logged)
    deprecations = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning, PendingDeprecationWarning))
    ]
    deprecations += [m for m in logged.messages if "deprecat" in m.lower()]
    assert deprecations == []


def test_simulated_remote_generation_matches_hooks(variants, steered_ref):
    ivs, ref = steered_ref
    got = variants["remote-sim"].generate(PROMPTS[:2], max_new_tokens=4, interventions=ivs, use_cache=False)
    assert [g.response_ids for g in got] == [g.response_ids[:4] for g in ref]


def test_remote_generation_falls_back_to_recomputing(variants):
    """No KV cache travels to the server: the engine notices and recomputes each step instead."""
    remote = variants["remote-sim"]
    assert remote.backend.new_cache() is None
    auto = remote.generate(["Hi"], max_new_tokens=3)
    explicit = remote.generate(["Hi"], max_new_tokens=3, use_cache=False)
    assert auto.texts == explicit.texts and len(auto.generations[0].response_ids) > 0


def test_strict_simulation_rejects_personaspace_code(hooks_model):
    """A trace that calls into personaspace passes nnsight's own simulation (editable install) but not ours."""
    lm = wrap_hf_model(hooks_model.hf_model, hooks_model.tokenizer)
    ids = torch.tensor([hooks_model.prompt_ids("Hi")])
    iv = Add(torch.ones(hooks_model.d_model), coef=1.0)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with pytest.raises(ModuleNotFoundError, match="personaspace"):
        with lm.trace(input_ids=ids, backend=_strict_simulation(lm)):
            h = lm.model.layers[1].output
            lm.model.layers[1].output = iv.apply(1, h, mask)


def test_remote_rejects_custom_layer_functions(variants):
    backend = variants["remote-sim"].backend
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(BackendError, match="cannot be shipped"):
        backend.forward(ids, torch.ones_like(ids), torch.arange(3)[None], layer_fns={1: lambda layer, h: h * 2})


def test_existing_language_model_and_bridge_are_accepted(hooks_model, tiny_tokenizer):
    lm = wrap_hf_model(hooks_model.hf_model, hooks_model.tokenizer)
    model = from_nnsight(lm)
    assert isinstance(model.backend, NNsightBackend) and model.n_layers == 4
    assert hooks_model.tokenizer.padding_side == "right"  # wrapping did not leave nnsight's left padding behind
    bridge = boot_bridge(make_tiny_llama(tiny_tokenizer, seed=3), tiny_tokenizer)
    tl = from_bridge(bridge)
    assert isinstance(tl.backend, TransformerLensBackend) and tl.d_model == hooks_model.d_model
    ids = [hooks_model.prompt_ids("Hi")]
    assert rel_err(tl.capture(ids, layers=[3])["prompt_avg"], hooks_model.capture(ids, layers=[3])["prompt_avg"]) < 1e-5


def test_logits_keep_only_requested_positions(variants):
    for name in ("nnsight", "transformer_lens"):
        backend = variants[name].backend
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        out = backend.forward(ids, torch.ones_like(ids), torch.arange(5)[None], layer_fns={}, logits_to_keep=2)
        assert out.logits.shape[:2] == (1, 2), name


# ---- one clear error for bad input ----------------------------------------------------------------


def test_remote_without_api_key(monkeypatch, hooks_model):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(BackendError, match="NDIF_API_KEY"):
        with_backend(hooks_model, "nnsight", remote=True)


def test_remote_without_network(monkeypatch, hooks_model):
    import socket

    from nnsight import CONFIG

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(CONFIG.API, "HOST", f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError, match="Cannot reach NDIF"):
        with_backend(hooks_model, "nnsight", remote=True)


def test_nnsight_not_installed(monkeypatch, hooks_model):
    import sys

    monkeypatch.setitem(sys.modules, "nnsight", None)  # makes `import nnsight` raise ImportError
    with pytest.raises(BackendError, match="pip install"):
        with_backend(hooks_model, "nnsight")


def test_transformer_lens_not_installed(monkeypatch, hooks_model):
    import sys

    monkeypatch.setitem(sys.modules, "transformer_lens.model_bridge", None)
    with pytest.raises(BackendError, match="TransformerLens 4"):
        with_backend(hooks_model, "transformer_lens")


def test_bridge_for_unsupported_architecture(tiny_tokenizer):
    from transformers import BioGptConfig, BioGptForCausalLM

    model = BioGptForCausalLM(BioGptConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(BackendError, match="no TransformerBridge adapter for BioGptForCausalLM"):
        boot_bridge(model, tiny_tokenizer)


def test_bad_backend_names(hooks_model):
    with pytest.raises(BackendError, match="Unknown backend"):
        with_backend(hooks_model, "jax")
    with pytest.raises(BackendError, match="needs the nnsight backend"):
        with_backend(hooks_model, "transformer_lens", remote=True)
    with pytest.raises(BackendError, match="remote must be"):
        NNsightBackend(wrap_hf_model(hooks_model.hf_model, hooks_model.tokenizer), remote="yes")
    with pytest.raises(BackendError, match="TransformerBridge"):
        TransformerLensBackend(hooks_model.hf_model)


def test_cli_lists_backends_and_checks_ndif(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from personaspace.cli.backends import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    runner = CliRunner()
    out = runner.invoke(app, ["backends"])
    assert out.exit_code == 0 and "transformer_lens" in out.output and "nnsight" in out.output
    bad = runner.invoke(app, ["backends", "--check-ndif"])
    assert bad.exit_code != 0 and isinstance(bad.exception, BackendError)
