"""Generation: cached = uncached, capture during generation = capture of the finished pairs, seeding."""

from __future__ import annotations

import torch
from reference import rel_err

from personaspace.engine import Add

PROMPTS = ["Hi.", "Tell me something about the sea, please.", "What do you think about rain?", "Go."]


def test_cached_and_uncached_greedy_generation_agree(tiny_model):
    cached = tiny_model.generate(PROMPTS, max_new_tokens=12, use_cache=True)
    uncached = tiny_model.generate(PROMPTS, max_new_tokens=12, use_cache=False)
    assert [g.response_ids for g in cached] == [g.response_ids for g in uncached]
    assert all(len(g.response_ids) > 0 for g in cached)


def test_capture_during_generation_equals_capture_of_finished_pairs(tiny_model):
    out = tiny_model.generate(PROMPTS, max_new_tokens=10, capture_layers=True, reductions=["prompt_avg", "prompt_last", "response_avg", "all_avg"])
    again = tiny_model.capture(
        [g.prompt_ids for g in out], [g.response_ids for g in out], reductions=list(out.activations.data)
    )
    for reduction, tensor in out.activations.data.items():
        assert rel_err(tensor, again[reduction]) < 1e-4, reduction
        assert torch.equal(out.activations.counts[reduction], again.counts[reduction])


def test_stop_token_ends_answer_and_is_excluded(tiny_model):
    stop = next(iter(tiny_model.stop_ids))
    out = tiny_model.generate(PROMPTS, max_new_tokens=40, temperature=1.0, seed=3)
    for g in out:
        assert stop not in g.response_ids
        assert g.finished or len(g.response_ids) == 40


def test_batches_and_order_do_not_change_greedy_answers(tiny_model):
    together = tiny_model.generate(PROMPTS, max_new_tokens=8, batch_size=4)
    alone = [tiny_model.generate([p], max_new_tokens=8).generations[0] for p in PROMPTS]
    assert [g.response_ids for g in together] == [g.response_ids for g in alone]


def test_seeded_sampling_is_reproducible_and_seed_matters(tiny_model):
    a = tiny_model.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=7).texts
    b = tiny_model.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=7).texts
    c = tiny_model.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=8).texts
    assert a == b
    assert a != c


def test_steered_cached_and_uncached_generation_agree(tiny_model):
    v = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(0))
    for scope in ("all", "prompt", "response"):
        steer = Add(v, coef=4.0, layers=[1, 2], scope=scope)
        cached = tiny_model.generate(PROMPTS, max_new_tokens=10, interventions=[steer], use_cache=True)
        uncached = tiny_model.generate(PROMPTS, max_new_tokens=10, interventions=[steer], use_cache=False)
        plain = tiny_model.generate(PROMPTS, max_new_tokens=10)
        assert [g.response_ids for g in cached] == [g.response_ids for g in uncached], scope
        assert [g.response_ids for g in cached] != [g.response_ids for g in plain], scope


def test_sampler_matches_the_distribution():
    """Inverse-CDF sampling draws tokens with the softmax probabilities (chi-square style check)."""
    from personaspace.engine.generation import SamplingConfig, sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).clamp(min=1e-12)).expand(4000, -1)
    draws = sample_next(logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=0.03)
    assert freq[4] == 0
    top = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.7), torch.Generator().manual_seed(0))
    assert set(top.tolist()) <= {0, 1}
