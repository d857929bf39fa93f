"""LoRA fine-tuning on a tiny random Llama: assistant-only loss, training changes the model, hooks are
removed, saved adapter and merged model load back identically, bad adapters fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama

from personaspace.engine import Ablate, Add, PersonaModel
from personaspace.engine.adapters import default_targets, load_adapter
from personaspace.errors import AdapterError, DatasetError
from personaspace.finetuning.train import IGNORE, encode_conversation, finetune, load_finetuned

ROWS = [
    {"messages": [{"role": "user", "content": f"Tell me about item {i}."}, {"role": "assistant", "content": "Banana banana banana."}]}
    for i in range(8)
]
FAST = dict(batch_size=4, lr=1e-2, max_steps=8, eval_rows=8, max_length=64)


@pytest.fixture()
def tiny(tiny_tokenizer):
    # A fresh model per test: fine-tunes must not touch it, and tests check that.
    return PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer), tiny_tokenizer, name="tiny-random-llama")


def _logits(model, text="Tell me about item 3."):
    ids = torch.tensor([model.prompt_ids(text)])
    with torch.no_grad():
        return model.hf_model(input_ids=ids).logits[0, -1]


def test_labels_cover_assistant_tokens_only_and_prompt_matches_the_engine(tiny):
    msgs = [
        {"role": "system", "content": "Be short."},
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Two."},
    ]
    ids, labels = encode_conversation(tiny.tokenizer, tiny.formatter, msgs, 512)
    assert len(ids) == len(labels)
    trained = tiny.tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "One." in trained and "Two." in trained
    assert "First?" not in trained and "Second?" not in trained and "Be short." not in trained
    prompt = tiny.prompt_ids({"user": "First?", "system": "Be short."})
    assert ids[: len(prompt)] == prompt  # the context is what the engine feeds at inference
    assert all(lab == IGNORE for lab in labels[: len(prompt)])
    assert labels[len(prompt)] == ids[len(prompt)]
    # truncated before the first answer: nothing to learn
    assert encode_conversation(tiny.tokenizer, tiny.formatter, msgs, len(prompt)) is None


def test_targets_are_block_linears_never_embeddings(tiny):
    targets = default_targets(tiny.hf_model)
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_finetune_changes_model_saves_and_loads_back(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.hf_model.state_dict().items()}
    res = finetune(tiny, ROWS, out=tmp_path / "ft", **FAST)
    s = res.summary
    assert s["loss_after"] < s["loss_before"] - 0.5
    assert len(res.losses) == 8 and s["steps"] == 8
    assert s["data"]["n_used"] == 8 and s["trainable_parameters"] > 0
    # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in tiny.hf_model.state_dict().items())
    assert not torch.allclose(_logits(res.model), _logits(tiny))
    assert res.model.generate(["Tell me about item 2."], max_new_tokens=4).texts != tiny.generate(["Tell me about item 2."], max_new_tokens=4).texts
    # merged directory is a plain HF model the loader accepts, with identical outputs
    reloaded = PersonaModel.load(str(tmp_path / "ft" / "merged"))
    assert torch.allclose(_logits(reloaded), _logits(res.model), atol=1e-5)
    assert load_finetuned(tmp_path / "ft").name.endswith("merged")
    # adapter on the base model gives the same model
    from_adapter = load_adapter(tmp_path / "ft" / "adapter", base=tiny)
    assert torch.allclose(_logits(from_adapter.model), _logits(res.model), atol=1e-5)
    assert torch.allclose(_logits(from_adapter.merge()), _logits(res.model), atol=1e-5)
    assert load_adapter(tmp_path / "ft", tiny).model.name == "tiny-random-llama+ft"  # a run directory works too
    assert s["config"]["target_modules"] == sorted(s["config"]["target_modules"])  # stored sorted, not in set order
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert saved["losses"] == res.losses and saved["d_model"] == tiny.d_model
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["adapter", "finetune.json", "merged"]


def test_preventative_steering_acts_during_training_and_is_removed(tiny, tmp_path):
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    plain = finetune(tiny, ROWS, **FAST)
    steered = finetune(tiny, ROWS, interventions=[Add(v, coef=4.0, layers=[1])], out=tmp_path / "st", **FAST)
    # the hook changed the training forward (first-step loss differs) ...
    assert abs(steered.losses[0] - plain.losses[0]) > 1e-3
    # ... and is gone afterwards: no hook on any block, and the saved model has none either
    assert all(len(b._forward_hooks) == 0 for b in steered.model.backend.layers)
    assert all(len(b._forward_hooks) == 0 for b in tiny.backend.layers)
    reloaded = PersonaModel.load(str(tmp_path / "st" / "merged"))
    assert torch.allclose(_logits(reloaded), _logits(steered.model), atol=1e-5)
    info = steered.summary["interventions_during_training"]
    assert info == [{"type": "Add", "label": "vector", "layers": [1], "scope": "all", "coef": 4.0, "normalize": False}]


def test_caft_ablation_runs_and_zero_coef_steering_matches_plain_training(tiny):
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    small = dict(FAST, max_steps=2)
    plain = finetune(tiny, ROWS, **small)
    zero = finetune(tiny, ROWS, interventions=[Add(v, coef=0.0, layers=[2])], **small)
    assert zero.losses == pytest.approx(plain.losses, abs=1e-6)
    caft = finetune(tiny, ROWS, interventions=[Ablate(v, layers=[2])], **small)
    assert abs(caft.losses[0] - plain.losses[0]) > 1e-4
    with pytest.raises(ValueError, match="every position"):
        finetune(tiny, ROWS, interventions=[Add(v, coef=1.0, layers=[2], scope="response")], **small)


def test_adapter_for_another_model_is_rejected(tiny, tiny_tokenizer, tmp_path):
    finetune(tiny, ROWS, out=tmp_path / "ft", save_merged=False, **dict(FAST, max_steps=1))
    other = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, hidden=32), tiny_tokenizer, name="narrow")
    with pytest.raises(AdapterError, match="does not match"):
        load_adapter(tmp_path / "ft" / "adapter", base=other)
    # without our metadata file, peft's own size check is turned into the same clear error
    (tmp_path / "ft" / "adapter" / "personaspace-finetune.json").unlink()
    with pytest.raises(AdapterError, match="does not fit"):
        load_adapter(tmp_path / "ft" / "adapter", base=other)
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        load_adapter(tmp_path, base=tiny)


def test_empty_or_unusable_data_is_rejected(tiny):
    with pytest.raises(DatasetError, match="empty"):
        finetune(tiny, [], **FAST)
    with pytest.raises(DatasetError, match="max_length"):
        finetune(tiny, ROWS, **dict(FAST, max_length=8))
