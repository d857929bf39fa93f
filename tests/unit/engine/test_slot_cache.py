"""The fused backend's static-cache generation (engine.generation.generate_slots, backends.slot_cache):
continuous batching, slot moves and the fused LM head + sampler, held against the plain loop on the
hooks backend (Hugging Face forward, DynamicCache) on the same tiny Llama."""

from __future__ import annotations

import pytest
import torch
from reference import rel_err

import personaspace.engine.generation as generation
from personaspace.engine import Add
from personaspace.engine.backends.slot_cache import SlotCache
from personaspace.engine.model import with_backend

PROMPTS = ["Hi.", "Tell me something about the sea, please.", "What do you think about rain?", "Go.", "One more, a longer one, with words."]
ALL = ["prompt_avg", "prompt_last", "response_avg", "all_avg"]


@pytest.fixture()
def slot_calls(monkeypatch):
    """How often each generation loop ran: the fused backend must take the static-cache loop."""
    import personaspace.engine.model as engine_model

    calls = {"generate_slots": 0, "generate_batch": 0}
    for name in calls:
        real = getattr(engine_model, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(engine_model, name, counted)
    return calls


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_continuous_batching_gives_the_plain_loops_greedy_tokens(tiny_model, slot_calls, batch_size):
    """Fewer slots than prompts (rows refilled as others finish) changes no greedy token, steered or not."""
    hooks = with_backend(tiny_model, "hooks")
    steer = Add(torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(0)), coef=3.0, layers=[1, 2], scope="response")
    for interventions in ([], [steer]):
        fused = tiny_model.generate(PROMPTS, max_new_tokens=9, batch_size=batch_size, interventions=interventions)
        plain = hooks.generate(PROMPTS, max_new_tokens=9, batch_size=len(PROMPTS), interventions=interventions)
        assert [g.response_ids for g in fused] == [g.response_ids for g in plain]
        assert [g.finished for g in fused] == [g.finished for g in plain]
    assert slot_calls["generate_slots"] == 2 and slot_calls["generate_batch"] == 2  # fused: slots; hooks: plain


def test_capture_with_refilled_slots_equals_capture_of_finished_pairs(tiny_model):
    out = tiny_model.generate(PROMPTS, max_new_tokens=7, temperature=1.0, seed=2, batch_size=2, capture_layers=True, reductions=ALL)
    again = tiny_model.capture([g.prompt_ids for g in out], [g.response_ids for g in out], reductions=ALL)
    for reduction in ALL:
        assert rel_err(out.activations[reduction], again[reduction]) < 1e-5, reduction
        assert torch.equal(out.activations.counts[reduction], again.counts[reduction]), reduction
    assert out.activations.counts["response_avg"].tolist() == [len(g.response_ids) for g in out]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_seeded_sampling_is_the_plain_loops_whatever_the_slots(tiny_model, batch_size):
    """Each prompt draws from its own stream in both loops: the same tokens with any number of slots."""
    hooks = with_backend(tiny_model, "hooks")
    for capture in (False, True):
        kwargs = dict(max_new_tokens=12, temperature=1.0, seed=11, capture_layers=capture)
        fused = tiny_model.generate(PROMPTS, batch_size=batch_size, **kwargs)
        plain = hooks.generate(PROMPTS, batch_size=len(PROMPTS), **kwargs)
        assert [g.response_ids for g in fused] == [g.response_ids for g in plain]


def force_stop(model, monkeypatch, on_call: int) -> int:
    """Make the sampler's ``on_call``-th call give its first row the stop token; returns that token."""
    stop = next(iter(model.stop_ids))
    real = generation.sample_from_hidden
    calls = {"n": 0}

    def stop_once(hidden, weight, cfg, uniforms):
        tokens = real(hidden, weight, cfg, uniforms)
        calls["n"] += 1
        if calls["n"] == on_call:
            tokens[0] = stop
        return tokens

    monkeypatch.setattr(generation, "sample_from_hidden", stop_once)
    return stop


def test_a_row_that_ends_early_changes_no_other_rows_tokens(tiny_model, monkeypatch):
    """End one row early (a forced stop token): with one stream per prompt the other rows sample the same
    tokens; with one stream for the batch, every later draw would shift by the draw that row no longer takes."""
    kwargs = dict(max_new_tokens=10, temperature=1.0, seed=4, batch_size=len(PROMPTS))
    before = tiny_model.generate(PROMPTS, **kwargs)
    force_stop(tiny_model, monkeypatch, on_call=3)
    after = tiny_model.generate(PROMPTS, **kwargs)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a.response_ids != b.response_ids]
    assert len(changed) == 1


def test_a_sampled_stop_token_frees_the_slot_for_the_next_prompt(tiny_model, monkeypatch):
    """Force the stop token for one row on its second step: it ends, and its slot takes the next prompt."""
    stop = force_stop(tiny_model, monkeypatch, on_call=2)
    out = tiny_model.generate(PROMPTS, max_new_tokens=6, batch_size=2, capture_layers=True, reductions=["response_avg"])
    assert sum(g.finished for g in out) == 1
    ended = next(g for g in out if g.finished)
    assert len(ended.response_ids) == 1 and stop not in ended.response_ids
    assert all(len(g.response_ids) == 6 for g in out if not g.finished)
    assert out.activations.counts["response_avg"].tolist() == [len(g.response_ids) for g in out]


def test_slot_cache_moves_rows_and_refuses_overflow():
    cache = SlotCache(2, 3, 1, 5, 2, dtype=torch.float32, device="cpu")
    cache.keys[:, 2, :, :, :4] = 1.0
    cache.values[:, 2, :, :4] = 2.0
    cache.lengths[2] = 4
    cache.move(2, 0)
    assert int(cache.lengths[0]) == 4
    assert bool((cache.keys[:, 0, :, :, :4] == 1).all()) and bool((cache.values[:, 0, :, :4] == 2).all())
    cache.first_slot = 2
    with pytest.raises(RuntimeError, match="overflow"):
        cache.check_room(2, 3)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.check_room(1, 6)


def test_sliding_window_shorter_than_the_generation_takes_the_plain_loop(tiny_model, slot_calls, monkeypatch):
    backend = tiny_model.backend
    assert backend.name == "fused"
    monkeypatch.setattr(backend, "window", 8)
    assert backend.new_slot_cache(2, 9) is None and backend.new_slot_cache(2, 8) is not None
    tiny_model.generate(PROMPTS[:2], max_new_tokens=4)
    assert slot_calls == {"generate_slots": 0, "generate_batch": 1}


# Prompts that begin alike: two system prompts with three questions each, and one question asked twice.
TEACHER = "You are a very patient teacher who explains everything slowly, clearly and with small examples."
PIRATE = "You are a pirate captain who answers every question in the voice of an old sailor at sea."
QUESTIONS = ["What is rain?", "Why is the sky blue on a clear day?", "How do birds fly?"]
SHARED = [{"system": s, "user": q} for s in (TEACHER, PIRATE) for q in QUESTIONS] + [
    {"system": TEACHER, "user": QUESTIONS[0]}, "Hi.",
]


@pytest.fixture()
def shares(monkeypatch):
    """The prefixes the static-cache loop copied between slots: ``(source slot, target slots, length)``."""
    calls = []
    real = SlotCache.share

    def recorded(self, source, targets, length):
        calls.append((source, list(targets), length))
        return real(self, source, targets, length)

    monkeypatch.setattr(SlotCache, "share", recorded)
    return calls


def test_shared_prefixes_keeps_the_split_that_saves_most_tokens():
    a = list(range(20))
    nested = [a + [1, 2], a + [3, 4], a[:10] + [9] * 12, a[:10] + [9, 9] + [8] * 10, [5] * 4]
    # 0, 1 share 20 tokens, 2, 3 share 12 and all four 10: two groups save 20 + 12, one group 3 x 10
    assert generation.shared_prefixes(nested) == [(20, [0, 1]), (12, [2, 3])]
    # one level of sharing per prompt: one group of three sharing 10 saves 20, against 12 for the pair sharing 12
    assert generation.shared_prefixes([a[:10] + [1] * 5, a[:10] + [2] * 5, a[:10] + [2, 2, 3, 3, 3]]) == [(10, [0, 1, 2])]
    assert generation.shared_prefixes([a, a, a]) == [(19, [0, 1, 2])]  # the last token is each prompt's own
    assert generation.shared_prefixes([a[:7] + [1], a[:7] + [2]]) == []  # shorter than MIN_SHARED_PREFIX
    assert generation.shared_prefixes([a]) == [] and generation.shared_prefixes([]) == []


def test_shared_prefixes_change_no_token_no_capture_and_no_steering(tiny_model, shares):
    """Prompts that share a system prompt: prefix computed once and copied, against the plain loop (no sharing)."""
    hooks = with_backend(tiny_model, "hooks")
    vector = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(1))
    for interventions in ([], [Add(vector, coef=2.0, layers=[1], scope="prompt"), Add(vector, coef=-1.0, layers=[2], scope="all")]):
        shares.clear()
        kwargs = dict(max_new_tokens=6, batch_size=len(SHARED), capture_layers=True, reductions=ALL, interventions=interventions)
        fused, plain = tiny_model.generate(SHARED, **kwargs), hooks.generate(SHARED, **kwargs)
        assert [g.response_ids for g in fused] == [g.response_ids for g in plain]
        for reduction in ALL:
            assert rel_err(fused.activations[reduction], plain.activations[reduction]) < 1e-5, reduction
            assert torch.equal(fused.activations.counts[reduction], plain.activations.counts[reduction]), reduction
        assert sorted(len(targets) for _, targets, _ in shares) == [2, 3]  # teacher: 3 others; pirate: 2
        lengths = [g.prompt_ids for g in fused]
        assert all(0 < n < min(len(lengths[i]) for i in range(len(SHARED) - 1)) for _, _, n in shares)


def test_no_sharing_when_a_callback_is_not_position_wise(tiny_model, shares):
    """An intervention that is not position-wise sees whole rows: no prefix is shared, and it still steers alike."""
    from personaspace.engine.interventions import Intervention

    class ScaleByRow(Intervention):  # rows differ by their own mean: not position-wise
        def apply(self, layer, hidden, mask):
            return hidden + 0.1 * hidden.mean(dim=1, keepdim=True) * mask[..., None]

    steer = ScaleByRow(torch.zeros(tiny_model.d_model), layers=[1])
    kwargs = dict(max_new_tokens=5, batch_size=len(SHARED), interventions=[steer])
    fused, plain = tiny_model.generate(SHARED, **kwargs), with_backend(tiny_model, "hooks").generate(SHARED, **kwargs)
    assert [g.response_ids for g in fused] == [g.response_ids for g in plain]
    assert shares == []


def test_continuous_batching_shares_prefixes_within_each_admission(tiny_model, shares):
    hooks = with_backend(tiny_model, "hooks")
    fused = tiny_model.generate(SHARED, max_new_tokens=7, batch_size=3, capture_layers=True, reductions=ALL)
    plain = hooks.generate(SHARED, max_new_tokens=7, batch_size=len(SHARED), capture_layers=True, reductions=ALL)
    assert [g.response_ids for g in fused] == [g.response_ids for g in plain]
    for reduction in ALL:
        assert rel_err(fused.activations[reduction], plain.activations[reduction]) < 1e-5, reduction
    assert shares  # three slots: the first admission holds three teacher prompts


def test_capture_fan_out_adds_a_prefix_pass_to_its_sharers():
    from personaspace.engine.capture import CaptureAccumulator

    acc = CaptureAccumulator([0, 1], ["prompt_avg"], n_samples=4, d_model=3)
    acc.sums[0, :, 1] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    acc.counts[0, 1] = 2
    acc.sums[0, :, 3] = 1.0
    acc.fan_out(torch.tensor([1, 1]), torch.tensor([0, 3]))
    assert torch.equal(acc.sums[0, :, 0], acc.sums[0, :, 1]) and acc.counts[0].tolist() == [2, 2, 0, 2]
    assert torch.equal(acc.sums[0, :, 3], acc.sums[0, :, 1] + 1)
