"""The sweep's recommendation must beat a random direction of equal norm (interval over questions above 0),
or there is none and the result says why. Both outcomes on the tiny random model, with a judge that can
tell whether the steer did what it was meant to."""

from __future__ import annotations

import json

import pytest
import torch

from personaspace.judges import Score
from personaspace.steering.search import MIN_CONTROL_QUESTIONS, SweepConfig, control_verdict, sweep
from personaspace.vectors.store import PersonaVector, VectorMeta

LAYER = 3  # the tiny model's last block: what is added there goes straight to the final norm and the unembedding


class WordJudge:
    """Trait score = the share of the answer's characters taken up by one word (0-100); coherence 100.

    A real judge of a real, checkable property: steering along the word's unembedding row makes the model
    say the word, a random direction of equal norm does not.
    """

    identity = "test:word"

    def __init__(self, word: str):
        self.word = word
        self.calls = 0

    def score(self, items):
        self.calls += len(items)
        out = []
        for it in items:
            if it.kind == "coherence":
                out.append(Score(100.0, self.identity))
            elif not it.answer:
                out.append(Score(None, self.identity, "empty"))
            else:
                out.append(Score(100.0 * it.answer.count(self.word) * len(self.word) / len(it.answer), self.identity))
        return out


@pytest.fixture(scope="module")
def word_and_vector(tiny_model):
    """The token whose unembedding row is longest (so it wins the logits when pushed along), and a vector
    holding that row at LAYER."""
    w_u = tiny_model.hf_model.get_output_embeddings().weight.detach().float()
    token = int(w_u.norm(dim=-1).argmax())
    data = torch.zeros(tiny_model.n_layers, tiny_model.d_model)
    data[LAYER] = w_u[token]
    return tiny_model.tokenizer.decode([token]), PersonaVector(data, VectorMeta(trait="evil", model=tiny_model.name))


def _cfg(**kw):
    base = dict(trait="evil", layers=str(LAYER), coefs=(0.0, 3.0), n_questions=4, max_new_tokens=6, kl_prompts=1, kl_tokens=2,
                coherence_min=0, kl_max=1e9)  # fmt: skip
    return SweepConfig(**{**base, **kw})


def test_a_vector_that_does_the_job_beats_its_random_control(tiny_model, word_and_vector, tmp_path):
    word, vec = word_and_vector
    res = sweep(tiny_model, "evil", vec, _cfg(), out=tmp_path / "sw", judge=WordJudge(word))
    rec = res.recommendation
    assert rec is not None and (rec["layer"], rec["coef"]) == (LAYER, 3.0)
    delta = rec["vs_control"]["trait_delta"]
    assert delta["n"] == 4 and delta["ci95"][0] > 0 and delta["mean"] > 50  # the word fills the steered answers
    assert res.control is not None and res.control["steered"]["trait"]["mean"] > res.control["random"]["trait"]["mean"] + 50
    assert res.selection["recommended"] and len(res.selection["checked"]) == 1
    assert "beats its random-direction control" in res.reason and "interval above 0" in res.reason
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["recommendation"]["vs_control"]["trait_delta"]["ci95"][0] > 0 and saved["selection"]["reason"] == res.reason


def test_a_vector_that_does_nothing_for_the_trait_is_not_recommended(tiny_model, word_and_vector, tmp_path):
    word, _ = word_and_vector
    g = torch.Generator().manual_seed(1)
    other = PersonaVector(torch.randn(tiny_model.n_layers, tiny_model.d_model, generator=g), VectorMeta(trait="evil", model=tiny_model.name))
    cfg = _cfg(coefs=(0.0, 2.0, 3.0), control_checks=2)
    res = sweep(tiny_model, "evil", other, cfg, out=tmp_path / "sw", judge=WordJudge(word))
    assert res.recommendation is None and res.control is None
    checked = res.selection["checked"]
    assert [c["coef"] for c in checked] == [c["coef"] for c in sorted(checked, key=lambda c: -c["steered_trait"]["mean"])]
    assert len(checked) == 2 and not any(c["beats_control"] for c in checked)
    assert all(c["trait_delta"]["ci95"][0] <= 0 for c in checked)
    assert res.reason.startswith("No cell beats its random-direction control") and "interval not above 0" in res.reason
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["recommendation"] is None and saved["selection"]["reason"] == res.reason


def test_cli_prints_the_verdict(tiny_model, word_and_vector, tmp_path):
    from rich.console import Console

    from personaspace.cli.steering import recommendation_line, sweep_table

    word, vec = word_and_vector
    res = sweep(tiny_model, "evil", vec, _cfg(control=False), judge=WordJudge(word))
    assert res.recommendation is None and res.selection["checked"] == []
    assert "control is off" in res.reason and res.selection["best_within_limits"] == res.cells[1]["spec"]
    console = Console(width=200, record=True)
    console.print(sweep_table(res))
    console.print(recommendation_line(res))
    text = console.export_text()
    assert "Recommended: None" in text and "control is off" in text


def test_one_question_gives_no_interval_and_no_recommendation(tiny_model, word_and_vector):
    word, vec = word_and_vector
    res = sweep(tiny_model, "evil", vec, _cfg(n_questions=1, coefs=(2.0, 3.0)), judge=WordJudge(word))
    assert res.recommendation is None
    assert len(res.selection["checked"]) == 1  # the other cells have as few questions: not tested
    assert f"an interval needs at least {MIN_CONTROL_QUESTIONS}" in res.reason


def test_verdict_pairs_by_question_and_averages_samples():
    def arm(scores):
        return [{"question": q, "trait_score": s} for q, s in scores]

    steered = arm([("a", 90), ("a", 70), ("b", 60), ("b", None), ("c", 80), ("c", 80)])
    random = arm([("a", 10), ("a", 30), ("b", 20), ("b", 99), ("c", 40), ("c", 40)])
    v = control_verdict(steered, random)
    assert v["trait_delta"]["n"] == 3  # questions, not answers; the unscored pair is left out
    assert v["trait_delta"]["mean"] == pytest.approx((60 + 40 + 40) / 3)
    assert v["beats_control"] and v["trait_delta"]["ci95"][0] == pytest.approx(40)
    mixed = control_verdict(arm([("a", 90), ("b", 10), ("c", 80)]), arm([("a", 10), ("b", 60), ("c", 40)]))
    assert not mixed["beats_control"] and mixed["trait_delta"]["ci95"][0] < 0 < mixed["trait_delta"]["mean"]
    with pytest.raises(Exception, match="not paired"):
        control_verdict(arm([("a", 1)]), arm([("b", 1)]))


def test_checking_a_cell_against_its_control_does_not_generate_its_answers_again(tiny_model, word_and_vector, monkeypatch):
    word, vec = word_and_vector
    generated = []
    original = tiny_model.generate

    def counting(*args, **kwargs):
        generated.append(len(kwargs.get("interventions", ())))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "generate", counting)
    res = sweep(tiny_model, "evil", vec, _cfg(coefs=(0.0, 2.0, 3.0), control_checks=2), judge=WordJudge(word))
    checked = len(res.selection["checked"])
    assert checked >= 1
    # unsteered answers, the KL reference, one steered arm per nonzero cell, one random control per checked cell
    assert len(generated) == 2 + 2 + checked
    assert generated.count(0) == 2
