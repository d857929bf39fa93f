"""The monitoring replication on the embedded SmolLM2-135M-Instruct, at a tiny size: the shipped evil vector
reads the graded system prompts in the right order before any answer is generated (the full experiment is
docs/results/monitoring.md, written by scripts/monitoring_replication.py)."""

from __future__ import annotations

from personaspace.monitoring.replication import GRADED_SYSTEM_PROMPTS, replicate_monitoring
from personaspace.vectors.store import load_vectors


def test_evil_projection_before_generation_follows_the_system_prompt(embedded_model):
    vectors = load_vectors("smollm2-135m-instruct")
    prompts = {"evil": [GRADED_SYSTEM_PROMPTS["evil"][0], GRADED_SYSTEM_PROMPTS["evil"][-1]]}  # levels -3 and +3
    (res,) = replicate_monitoring(embedded_model, ["evil"], vectors, prompts=prompts, n_questions=3, max_new_tokens=6,
                                  n_boot=100, n_random=2)  # fmt: skip
    caring, evil = res.levels
    assert res.layer == 17 and res.judge.startswith("offline") and res.pooled["n"] == 6
    # every question: the evil system prompt puts the last prompt token further along the evil vector
    by_q = {}
    for row in res.rows:
        by_q.setdefault(row["question"], {})[row["level"]] = row["prompt_last"]
    assert all(p[1] > p[0] + 2 for p in by_q.values()), by_q  # levels are positions: 0 = caring, 1 = evil
    assert evil["projection"] > caring["projection"] + 5
    assert res.controls["unrelated"]["trait"] != "evil" and res.controls["random_null"]["n_directions"] == 2
