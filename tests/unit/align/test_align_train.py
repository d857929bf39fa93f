"""Defence step, LoRA adapter, the LPA / SFT loops and saved adapters, on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from personaspace.align.lat import (
    Anchor,
    AttackConfig,
    DefenceWeights,
    Triple,
    base_logprobs,
    defence_step,
    pack_anchors,
    pack_triples,
    pgd_attack,
    sequence_logprob,
    target_logits,
)
from personaspace.align.training import TrainConfig, train
from personaspace.engine.adapters import add_lora, load_adapter
from personaspace.errors import PersonaspaceError

TRIPLES = [
    Triple('Here is a statement: "I am cruel."\nDo you agree or disagree with it?', "I do not agree with this statement.", "I agree with this statement."),
    Triple('Here is a statement: "I lie to get ahead."\nDo you agree or disagree with it?', "I do not agree with this statement.", "I agree with this statement."),
    Triple('Here is a statement: "I enjoy hurting others."\nDo you agree or disagree with it?', "I do not agree with this statement.", "I agree with this statement."),
]
ANCHORS = [
    Anchor('Here is a statement: "I love learning."\nDo you agree or disagree with it?', "I agree with this statement."),
    Anchor('Here is a statement: "I keep my promises."\nDo you agree or disagree with it?', "I agree with this statement."),
]
SMALL = TrainConfig(outer_steps=2, batch_size=2, anchor_batch_size=2, pgd_steps=2, model_steps=2, lora_r=4, lr=1e-3)


def _unsafe_logprob(model, batch, perturbation=None) -> float:
    with torch.no_grad():
        _, unsafe = target_logits(model, batch, perturbation)
    return float(sequence_logprob(unsafe, batch.second).mean())


def _preferred_triples(model) -> list[Triple]:
    """Triples whose unsafe completion is the tiny model's own greedy continuation (so it is likely)."""
    prompts = [t.prompt for t in TRIPLES]
    out = model.generate(prompts, max_new_tokens=3)
    return [Triple(p, "I do not agree with this statement.", tuple(g.response_ids)) for p, g in zip(prompts, out.generations)]


def test_defence_step_lowers_unsafe_likelihood_and_changes_only_lora(tiny_model):
    adapted = add_lora(tiny_model, r=4, seed=0)
    m = adapted.model
    base_state = {k: v.clone() for k, v in tiny_model.hf_model.state_dict().items()}
    batch = pack_triples(m, _preferred_triples(tiny_model))
    anchors = pack_anchors(m, ANCHORS)
    with adapted.base_view() as base:
        anchor_base = base_logprobs(base, anchors)
    attack = pgd_attack(m, batch, AttackConfig(eps=1.0, steps=4, lr=0.05))
    before_unsafe = _unsafe_logprob(m, batch, attack.perturbation)
    assert before_unsafe > -15.0  # far above chance (3 tokens x log(49152) = 32 nats): away has a gradient
    lora_before = adapted.lora_state()
    optimizer = torch.optim.Adam(adapted.trainable(), lr=2e-2)
    losses = []
    for _ in range(3):
        parts = defence_step(m, optimizer, batch, attack.perturbation, anchors, anchor_base, DefenceWeights())
        losses.append(parts["towards"] + parts["away"])
    assert set(parts) == {"towards", "away", "kl"}
    assert parts["kl"] > 0  # the adapter moved away from the base on the anchors, and the KL term sees it
    assert losses[-1] < losses[0]
    assert _unsafe_logprob(m, batch, attack.perturbation) < before_unsafe - 0.5
    lora_after = adapted.lora_state()
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)  # LoRA weights changed
    # the base model object is untouched (the adapter lives on a copy)
    for k, v in tiny_model.hf_model.state_dict().items():
        assert torch.equal(v, base_state[k]), k
    # switching the adapter off gives back the base model exactly
    with adapted.base_view() as base, torch.no_grad():
        torch.testing.assert_close(target_logits(base, batch)[1], target_logits(tiny_model, batch)[1])


def test_lpa_training_run_and_saved_adapter_round_trip(tiny_model, tmp_path):
    seen = []
    result = train(tiny_model, TRIPLES, ANCHORS, SMALL, method="lpa", progress=lambda step, entry: seen.append(step))
    assert seen == [1, 2]
    assert result.counts["model_updates"] == 4 and result.counts["pgd_steps"] == 4
    assert result.counts["triples_used"] == 3 and result.counts["anchors_used"] == 2  # 2 batches of 2 over 3 triples
    assert result.counts["trainable_params"] > 0
    assert {"adv_loss_start", "adv_loss_end", "delta_max_norm", "def_towards", "def_away", "def_kl"} <= set(result.log[0])
    assert result.config["eps"] == pytest.approx(6.0 * (tiny_model.d_model / 4096) ** 0.5)
    def ours(model):  # transformers may keep its own output-capturing hooks; none of ours may remain
        return [h for b in model.backend.layers for h in b._forward_hooks.values() if getattr(h, "__module__", "").startswith("personaspace")]

    assert ours(result.model) == [] and ours(tiny_model) == []
    out = result.save(tmp_path / "run")
    summary = json.loads((out / "train.json").read_text())
    assert summary["method"] == "lpa" and summary["counts"] == result.counts
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no leftovers
    loaded = load_adapter(out, tiny_model)
    assert loaded.model.name == f"{tiny_model.name}+run"
    meta = json.loads((out / "adapter" / "personaspace-finetune.json").read_text())  # same stack as fine-tuning
    assert meta["method"] == "lpa" and meta["d_model"] == tiny_model.d_model and meta["base_model"] == tiny_model.name
    batch = pack_triples(tiny_model, TRIPLES)
    with torch.no_grad():
        reloaded = target_logits(loaded.model, batch)[1]
        torch.testing.assert_close(reloaded, target_logits(result.model, batch)[1])
        assert not torch.allclose(reloaded, target_logits(tiny_model, batch)[1])


def test_sft_ablation_has_no_adversary_and_no_away_term(tiny_model):
    result = train(tiny_model, TRIPLES, ANCHORS, SMALL, method="sft")
    assert result.counts["pgd_steps"] == 0 and result.counts["model_updates"] == 4
    assert "adv_loss_start" not in result.log[0] and "def_away" not in result.log[0]
    assert result.config["away"] == 0.0 and result.config["eps"] is None


def test_bad_training_input_is_one_clear_error(tiny_model, tmp_path):
    with pytest.raises(PersonaspaceError, match="outer_steps"):
        train(tiny_model, TRIPLES, ANCHORS, TrainConfig(outer_steps=0))
    with pytest.raises(PersonaspaceError, match="No training triples"):
        train(tiny_model, [], ANCHORS, SMALL)
    with pytest.raises(PersonaspaceError, match="method"):
        train(tiny_model, TRIPLES, ANCHORS, SMALL, method="dpo")
    with pytest.raises(PersonaspaceError, match="LoRA target"):
        add_lora(tiny_model, targets=("c_attn",))
    with pytest.raises(PersonaspaceError, match="not a LoRA adapter"):
        load_adapter(tmp_path, tiny_model)
    with pytest.raises(PersonaspaceError, match="path comes first"):
        load_adapter(tiny_model, tmp_path)
