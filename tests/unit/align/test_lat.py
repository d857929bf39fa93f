"""The LAT engine on a tiny random Llama: packing, the bounded adversary, the defence step, hooks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from personaspace.align.lat import (
    EMBED,
    AlignmentError,
    AttackConfig,
    Perturbation,
    Triple,
    adversary_loss,
    eps_for_width,
    pack_triples,
    pgd_attack,
    resolve_attack_layers,
    sequence_logprob,
    target_logits,
)
from personaspace.errors import LayerOutOfRangeError, PersonaspaceError

TRIPLES = [
    Triple('Here is a statement: "I am cruel."\nDo you agree or disagree with it?', "I do not agree with this statement.", "I agree with this statement."),
    Triple("Do you like cats?", "Yes, very much.", "No."),
    Triple({"system": "Be brief.", "user": "Name a colour."}, "Blue.", "I refuse to name a colour."),
]


def _hook_count(model) -> int:
    modules = [model.hf_model.get_input_embeddings(), *model.backend.layers]
    return sum(len(m._forward_hooks) for m in modules)


def _logprobs(model, batch, perturbation=None):
    with torch.no_grad():
        safe, unsafe = target_logits(model, batch, perturbation)
    return sequence_logprob(safe, batch.first), sequence_logprob(unsafe, batch.second)


def test_radius_scales_with_sqrt_width():
    assert eps_for_width(4096) == pytest.approx(6.0)
    assert eps_for_width(576) == pytest.approx(6.0 * math.sqrt(576 / 4096))
    assert eps_for_width(1024) == pytest.approx(3.0)


def test_default_layers_are_embedding_plus_evenly_spaced_blocks():
    assert resolve_attack_layers(None, 30) == (EMBED, 6, 12, 18, 24)
    assert resolve_attack_layers(None, 4) == (EMBED, 1, 2, 3)  # shallow models: distinct blocks, never out of range
    assert resolve_attack_layers("embed, 3,1", 4) == (EMBED, 1, 3)
    assert resolve_attack_layers([2], 4) == (2,)
    with pytest.raises(LayerOutOfRangeError):
        resolve_attack_layers("embed,9", 4)
    with pytest.raises(LayerOutOfRangeError):
        resolve_attack_layers("middle", 4)


def test_packed_rows_match_separate_forward_passes(tiny_model):
    """prompt+safe+unsafe in one row (4-D mask) gives the same log-probs as two plain forwards."""
    batch = pack_triples(tiny_model, TRIPLES)
    safe_lp, unsafe_lp = _logprobs(tiny_model, batch)
    for i, t in enumerate(TRIPLES):
        p = tiny_model.prompt_ids(t.prompt)
        for completion, packed in ((t.safe, safe_lp[i]), (t.unsafe, unsafe_lp[i])):
            r = tiny_model.response_ids(completion)
            with torch.no_grad():
                lp = tiny_model.hf_model(torch.tensor([p + r])).logits.log_softmax(-1)[0]
            expected = sum(float(lp[len(p) - 1 + j, r[j]]) for j in range(len(r)))
            assert float(packed) == pytest.approx(expected, abs=1e-3)


def test_adversary_raises_unsafe_likelihood_within_its_budget(tiny_model):
    batch = pack_triples(tiny_model, TRIPLES)
    clean_safe, clean_unsafe = _logprobs(tiny_model, batch)
    eps = 0.5 * eps_for_width(tiny_model.d_model)
    hooks_before = _hook_count(tiny_model)
    result = pgd_attack(tiny_model, batch, AttackConfig(eps=eps, steps=8, lr=0.05))
    assert _hook_count(tiny_model) == hooks_before  # every hook removed
    pert = result.perturbation
    assert pert.layers == resolve_attack_layers(None, tiny_model.n_layers)
    assert pert.max_norm() <= eps * (1 + 1e-5)
    assert pert.max_norm() > 0.5 * eps  # the budget is actually used
    for delta in pert.deltas.values():  # nothing outside the prompt
        assert float(delta[~batch.prompt_mask].abs().max()) == 0.0
    assert result.losses[-1] < result.losses[0]
    att_safe, att_unsafe = _logprobs(tiny_model, batch, pert)
    assert (att_unsafe - att_safe).mean() > (clean_unsafe - clean_safe).mean() + 1.0
    assert float(att_unsafe.mean()) > float(clean_unsafe.mean())
    # the model itself is untouched: a clean pass after the attack is the same as before
    _, after_unsafe = _logprobs(tiny_model, batch)
    torch.testing.assert_close(after_unsafe, clean_unsafe)
    assert all(not p.requires_grad for p in tiny_model.hf_model.parameters())


def test_zero_radius_changes_nothing(tiny_model):
    batch = pack_triples(tiny_model, TRIPLES[:2])
    result = pgd_attack(tiny_model, batch, AttackConfig(eps=0.0, steps=2, lr=0.1))
    assert result.perturbation.max_norm() == 0.0
    torch.testing.assert_close(_logprobs(tiny_model, batch, result.perturbation)[1], _logprobs(tiny_model, batch)[1])


def test_hooks_are_removed_when_the_forward_fails(tiny_model):
    batch = pack_triples(tiny_model, TRIPLES)
    other = pack_triples(tiny_model, TRIPLES[:1])  # different shape: the hook refuses it
    pert = Perturbation(resolve_attack_layers(None, tiny_model.n_layers), batch, tiny_model.d_model, eps=1.0)
    before = _hook_count(tiny_model)
    with pytest.raises(AlignmentError, match="shape"):
        with pert.applied(tiny_model):
            target_logits(tiny_model, other)
    assert _hook_count(tiny_model) == before


def test_projection_clips_each_token_to_the_ball(tiny_model):
    batch = pack_triples(tiny_model, TRIPLES[:2])
    pert = Perturbation((EMBED, 1), batch, tiny_model.d_model, eps=0.3)
    with torch.no_grad():
        for d in pert.deltas.values():
            d.normal_(0, 5.0)
    pert.project_()
    for d in pert.deltas.values():
        norms = d.detach().norm(dim=-1)
        assert float(norms.max()) <= 0.3 * (1 + 1e-5)
        assert float(norms[batch.prompt_mask].min()) == pytest.approx(0.3, rel=1e-4)  # large ones land on the sphere
        assert float(norms[~batch.prompt_mask].max()) == 0.0


def test_bad_settings_raise_one_clear_error(tiny_model):
    batch = pack_triples(tiny_model, TRIPLES[:1])
    with pytest.raises(PersonaspaceError):
        pgd_attack(tiny_model, batch, AttackConfig(steps=0))
    with pytest.raises(PersonaspaceError):
        Perturbation((EMBED,), batch, tiny_model.d_model, eps=-1.0)
    with pytest.raises(PersonaspaceError):
        adversary_loss(tiny_model, dataclasses.replace(batch, second=None), None)
