"""Extraction with judges that fail: endpoint down, junk answers. Nothing generated is lost."""

from __future__ import annotations

import json

import pytest
from chat_server import ChatServer

from personaspace.errors import JudgeUnavailableError, PersonaspaceError
from personaspace.extraction.pipeline import extract
from personaspace.judges import get_judge

SMALL = dict(n_instructions=1, n_questions=4, max_new_tokens=4, batch_size=8, cv_folds=2)


def test_judge_down_keeps_generations_and_resumes_without_regenerating(tiny_model, tmp_path):
    # A judge that is down from the start is refused before any generation (tests/unit/test_bad_inputs_api.py);
    # this one passes the start-up probe (a busy 503 counts as reachable) and then keeps failing.
    with ChatServer({}) as server:
        server.fail_next(*[(503, '{"error": {"message": "overloaded"}}')] * 200)
        dead = get_judge("openai:judge-model", base_url=server.base_url, max_retries=1, timeout=2.0)
        with pytest.raises(JudgeUnavailableError, match="127.0.0.1"):
            extract("evil", tiny_model, judge=dead, out=tmp_path / "run", **SMALL)
    batches = sorted((tmp_path / "run" / "activations").glob("*.safetensors"))
    assert len(batches) == 1
    stamp = batches[0].stat().st_mtime_ns
    done = extract("evil", tiny_model, judge="none", out=tmp_path / "run", **SMALL)
    assert done.summary["resumed"] and done.summary["kept"] == 4
    assert batches[0].stat().st_mtime_ns == stamp  # not regenerated


def test_judge_answering_junk_drops_every_pair_with_a_clear_reason(tiny_model, tmp_path):
    with ChatServer({}) as server:
        junk = get_judge("openai:judge-model", base_url=server.base_url, max_retries=0)
        with pytest.raises(PersonaspaceError, match="No pair passed the filter.*no_score 4"):
            extract("evil", tiny_model, judge=junk, out=tmp_path / "run", **SMALL)
        assert len(server.requests) >= 16  # 8 answers x (trait + coherence)
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 8 and all(s["trait"] is None for s in scores)
