"""Generation: cached = uncached, capture during generation = capture of the finished pairs, seeding."""

from __future__ import annotations

import pytest
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
    from personaspace.engine.generation import RowStreams, SamplingConfig, sample_next

    cfg = SamplingConfig(temperature=1.0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).clamp(min=1e-12)).expand(4000, -1)
    draws = sample_next(logits, cfg, RowStreams(0, range(4000)).uniforms(cfg, range(4000)))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=0.03)
    assert freq[4] == 0
    top_cfg = SamplingConfig(temperature=1.0, top_p=0.7)
    top = sample_next(logits, top_cfg, RowStreams(0, range(4000)).uniforms(top_cfg, range(4000)))
    assert set(top.tolist()) <= {0, 1}


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, 1.5])
def test_chunked_head_sampler_draws_what_the_whole_vocabulary_sampler_draws(temperature, monkeypatch):
    """The LM head fused with the sampler, chunked over the vocabulary (a vocabulary that is not a
    multiple of the chunk, so the last chunk is short), picks the token the whole-vocabulary sampler
    picks at the same uniform: identical for greedy, and for sampling everywhere except where the
    uniform falls within float rounding of a CDF step."""
    import personaspace.engine.generation as gen

    monkeypatch.setattr(gen, "VOCAB_CHUNK", 64)
    gen_ = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3000, 16, generator=gen_), torch.randn(1000, 16, generator=gen_)
    cfg = gen.SamplingConfig(temperature=temperature)
    uniforms = gen.RowStreams(1, range(3000)).uniforms(cfg, range(3000))
    chunked = gen.sample_from_hidden(hidden, weight, cfg, uniforms)
    whole = gen.sample_next(hidden @ weight.T, cfg, uniforms)
    assert chunked.dtype == torch.long and chunked.shape == (3000,)
    assert int((chunked < 0).sum() + (chunked >= 1000).sum()) == 0
    mismatches = int((chunked != whole).sum())
    assert mismatches == 0 if temperature == 0 else mismatches <= 3, mismatches


def test_chunked_greedy_keeps_the_first_of_tied_maxima(monkeypatch):
    import personaspace.engine.generation as gen

    monkeypatch.setattr(gen, "VOCAB_CHUNK", 4)
    weight = torch.zeros(10, 2)
    weight[[2, 5, 9], 0] = 1.0  # three tokens tie for the maximum, in three chunks
    token = gen.sample_from_hidden(torch.tensor([[1.0, 0.0]]), weight, gen.SamplingConfig(), None)
    assert token.tolist() == [2]


def test_chunked_sampler_follows_the_distribution(monkeypatch):
    import personaspace.engine.generation as gen

    monkeypatch.setattr(gen, "VOCAB_CHUNK", 2)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    weight = torch.eye(5)
    hidden = torch.log(probs.clamp(min=1e-30)).expand(4000, -1).contiguous()
    cfg = gen.SamplingConfig(temperature=1.0)
    draws = gen.sample_from_hidden(hidden, weight, cfg, gen.RowStreams(0, range(4000)).uniforms(cfg, range(4000)))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.03)
    assert freq[4] == 0