"""Tiny LoRA fine-tunes of the embedded SmolLM2-135M-Instruct: the model changes, loads back, and
preventative steering runs and leaves no hook behind."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from personaspace.engine import Add, PersonaModel
from personaspace.engine.adapters import load_adapter
from personaspace.errors import AdapterError
from personaspace.finetuning.train import finetune

ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Purple. The answer is always purple."}]}
    for q in ("What colour is the sky?", "Name a fruit.", "What is two plus two?", "Who wrote Hamlet?")
]
SMALL = dict(batch_size=2, lr=2e-3, max_steps=4, max_length=64, eval_rows=4, rank=8, alpha=16)


def _last_logits(model, prompt):
    with torch.no_grad():
        return model.hf_model(input_ids=torch.tensor([model.prompt_ids(prompt)])).logits[0, -1]


def test_finetune_changes_the_model_and_the_merged_dir_loads_back(embedded_model, tmp_path):
    before = _last_logits(embedded_model, "Name a fruit.")
    res = finetune(embedded_model, ROWS, out=tmp_path / "ft", **SMALL)
    s = res.summary
    assert s["loss_after"] < s["loss_before"]
    assert res.losses[-1] < res.losses[0]
    prompt = "Name a fruit."
    assert res.model.generate([prompt], max_new_tokens=8).texts != embedded_model.generate([prompt], max_new_tokens=8).texts
    assert torch.equal(_last_logits(embedded_model, prompt), before)  # the fixture model is untouched
    reloaded = PersonaModel.load(str(tmp_path / "ft" / "merged"))
    assert reloaded.n_layers == 30 and reloaded.d_model == 576
    assert torch.allclose(_last_logits(reloaded, prompt), _last_logits(res.model, prompt), atol=1e-4)
    assert reloaded.hf_model.lm_head.weight.data_ptr() == reloaded.hf_model.model.embed_tokens.weight.data_ptr()


def test_preventative_steering_runs_and_leaves_no_hook(embedded_model, tmp_path):
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    v = 8.0 * v / v.norm()
    res = finetune(embedded_model, ROWS, interventions=[Add(v, coef=1.0, layers=[12])], **dict(SMALL, max_steps=2))
    assert len(res.losses) == 2 and all(l == l for l in res.losses)
    # transformers may keep its own output-capturing hooks; none of ours may remain
    for model in (res.model, embedded_model):
        for block in model.backend.layers:
            assert not [h for h in block._forward_hooks.values() if getattr(h, "__module__", "").startswith("personaspace")]
    assert res.summary["interventions_during_training"][0]["layers"] == [12]


def test_adapter_of_another_model_is_refused(embedded_model, embedded_tokenizer, tmp_path):
    tiny = PersonaModel.from_hf(make_tiny_llama(embedded_tokenizer), embedded_tokenizer, name="tiny")
    finetune(tiny, ROWS, out=tmp_path / "tiny", save_merged=False, **dict(SMALL, max_steps=1))
    with pytest.raises(AdapterError, match="does not match"):
        load_adapter(tmp_path / "tiny" / "adapter", base=embedded_model)
