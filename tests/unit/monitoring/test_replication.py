"""The monitoring replication (projection before generation vs judged trait, with controls) on the tiny model:
its numbers are the ones recomputed by hand from the hidden states, and the question bootstrap resamples
questions, not answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personaspace.errors import InvalidArgumentError
from personaspace.judges import Score
from personaspace.monitoring.replication import GRADED_SYSTEM_PROMPTS, question_bootstrap, replicate_monitoring
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

LAYER = 2


class ChecksumJudge:
    """A deterministic judge whose trait score varies with the answer (checksum of the text)."""

    identity = "test:checksum"

    def score(self, items):
        return [Score(None if not it.answer else float(sum(map(ord, it.answer)) % 101), self.identity) for it in items]


@pytest.fixture(scope="module")
def vectors(tiny_model):
    g = torch.Generator().manual_seed(5)
    names = ["evil", "humor", "optimism"]
    return VectorSet({t: PersonaVector(torch.randn(tiny_model.n_layers, tiny_model.d_model, generator=g), VectorMeta(trait=t, model=tiny_model.name)) for t in names})


def _last_prompt_hidden(model, chat, layer):
    ids = model.prompt_ids(chat)
    with torch.no_grad():
        out = model.hf_model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0, -1]


def test_replication_numbers_match_the_hidden_states(tiny_model, vectors):
    from personaspace.engine.chat import Chat

    prompts = {"evil": GRADED_SYSTEM_PROMPTS["evil"][::3]}  # levels -3, 0, +3
    # sampled: the tiny random model answers every prompt alike when greedy, and r needs scores that vary
    (res,) = replicate_monitoring(tiny_model, ["evil"], vectors, prompts=prompts, layer=LAYER, scan_layers=[1, LAYER],
                                  judge=ChecksumJudge(), n_questions=4, max_new_tokens=4, temperature=1.0, n_boot=200, n_random=3)  # fmt: skip
    assert res.settings["levels"] == [-1, 0, 1] and len(res.rows) == 12 and res.layer == LAYER
    u = vectors["evil"].unit(LAYER)
    for row in res.rows[::5]:
        h = _last_prompt_hidden(tiny_model, Chat(user=row["question"], system=row["system"]), LAYER)
        assert row["prompt_last"] == pytest.approx(float(h @ u), abs=1e-4)
    x = [r["prompt_last"] for r in res.rows]
    y = [r["trait_score"] for r in res.rows]
    assert len(set(x)) > 1 and len(set(y)) > 1
    assert res.pooled["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-6)
    assert res.pooled["n"] == 12 and res.pooled["questions"] == 4
    lo, hi = res.pooled["ci95"]
    assert -1 <= lo <= hi <= 1
    # the level means are the means of the rows of each level
    for lv in res.levels:
        sel = [r for r in res.rows if r["level"] == lv["level"]]
        assert lv["projection"] == pytest.approx(np.mean([r["prompt_last"] for r in sel]))
    # unrelated-trait control: the other vector with the smallest |cosine| at the layer
    cos = {t: abs(float(u @ vectors[t].unit(LAYER))) for t in ("humor", "optimism")}
    assert res.controls["unrelated"]["trait"] == min(cos, key=cos.get)
    assert res.controls["random_null"]["n_directions"] == 3
    assert 0 <= res.controls["random_null"]["q95_abs_r"] <= 1
    assert [e["layer"] for e in res.by_layer] == [1, LAYER] and res.by_layer[1]["pearson"] == res.pooled["pearson"]
    assert res.to_dict(rows=False).keys() >= {"pooled", "level_means", "within", "controls"}


def test_question_bootstrap_resamples_questions_not_answers():
    rng = np.random.default_rng(0)
    # 6 questions x 7 levels; within a question the points move together (shared offset), so answers are not independent
    q = [k for k in range(6) for _ in range(7)]
    lv = list(range(7)) * 6
    off = rng.normal(0, 3, 6)
    x = [lvl + off[k] for k, lvl in zip(q, lv)]
    y = [lvl + off[k] + rng.normal(0, 0.5) for k, lvl in zip(q, lv)]
    res = question_bootstrap(x, y, q, lv, n_boot=500)
    assert res["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert res["n"] == 42 and res["questions"] == 6 and res["group_means"]["n"] == 7
    lo, hi = res["ci95"]
    assert lo <= res["pearson"] <= hi
    # a missing score drops its row, not its question
    y2 = list(y)
    y2[0] = None
    assert question_bootstrap(x, y2, q)["n"] == 41
    # one question: no interval
    one = question_bootstrap(x[:7], y[:7], q[:7])
    assert np.isnan(one["ci95"][0]) and one["questions"] == 1


def test_bad_input_is_refused_before_any_generation(tiny_model, vectors):
    with pytest.raises(InvalidArgumentError, match="No graded system prompts for trait 'apathy'"):
        replicate_monitoring(tiny_model, ["apathy"], vectors, judge=ChecksumJudge())
    with pytest.raises(InvalidArgumentError, match="at least two graded system prompts"):
        replicate_monitoring(tiny_model, ["evil"], vectors, prompts={"evil": ["only one"]}, judge=ChecksumJudge())
    with pytest.raises(InvalidArgumentError, match="No vector for trait 'impoliteness'"):
        replicate_monitoring(tiny_model, ["impoliteness"], vectors, judge=ChecksumJudge())


def test_many_directions_from_one_forward_equal_monitoring_each_alone(tiny_model, vectors):
    """The replication's controls read every direction from one forward of the prompts; each column is exactly
    what monitoring that direction alone reports (same kernel per direction), for vectors and raw directions."""
    from personaspace.engine.chat import Chat
    from personaspace.monitoring.projections import monitor, prompt_last_projections

    chats = [Chat(user=q, system=s) for s in GRADED_SYSTEM_PROMPTS["evil"][:2] for q in ("Hi?", "How are you today?")]
    raw = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(3))
    at = {LAYER: [raw, vectors["humor"], vectors["evil"]], 1: [vectors["optimism"]]}
    xs = prompt_last_projections(tiny_model, chats, at)
    assert xs[LAYER].shape == (len(chats), 3) and xs[1].shape == (len(chats), 1)
    for layer, directions in at.items():
        for j, direction in enumerate(directions):
            alone = monitor(tiny_model, direction, chats, layer=layer, responses=[""] * len(chats), tokens=False)
            assert xs[layer][:, j].tolist() == [r["prompt_last"] for r in alone.rows]
