"""Extraction pipeline on a tiny random model: planning, filtering, mean difference, resume."""

from __future__ import annotations

import json

import pytest
import torch

from personaspace.errors import PersonaspaceError
from personaspace.extraction.pipeline import ExtractionConfig, Row, extract, mean_difference, plan_rows, select_pairs
from personaspace.traits import load_trait

SMALL = dict(n_instructions=2, n_questions=4, max_new_tokens=5, batch_size=5, cv_folds=2)


def test_plan_pairs_pos_and_neg_rows():
    trait = load_trait("evil")
    rows = plan_rows(trait, ExtractionConfig("evil", n_instructions=2, n_questions=3, samples_per_pair=2))
    assert len(rows) == 2 * 2 * 3 * 2
    pos = {r.pair for r in rows if r.side == "pos"}
    neg = {r.pair for r in rows if r.side == "neg"}
    assert pos == neg
    assert all(r.system == trait.instructions[r.instruction].pos for r in rows if r.side == "pos")
    assert all(r.user == trait.extraction_questions[r.question] for r in rows)


def _rows():
    return [Row(i, side, 0, q, 0, "s", "u") for i, (side, q) in enumerate([("pos", 0), ("pos", 1), ("pos", 2), ("pos", 3), ("neg", 0), ("neg", 1), ("neg", 2), ("neg", 3)])]


def test_select_pairs_applies_each_threshold():
    rows = _rows()
    s = lambda t, c=90: {"trait": t, "coherence": c}  # noqa: E731
    scores = {0: s(80), 4: s(10), 1: s(40), 5: s(10), 2: s(80), 6: s(60), 3: s(80, 30), 7: s(5)}
    kept, reasons = select_pairs(rows, scores, ExtractionConfig("evil"))
    assert kept == [(0, 4)]
    assert reasons == {"no_score": 0, "pos_too_low": 1, "neg_too_high": 1, "incoherent": 1}
    scores[0] = {"trait": None, "coherence": 90}
    kept, reasons = select_pairs(rows, scores, ExtractionConfig("evil"))
    assert kept == [] and reasons["no_score"] == 1
    kept, _ = select_pairs(rows, scores, ExtractionConfig("evil"), judged=False)
    assert len(kept) == 4


def test_mean_difference_is_pos_mean_minus_neg_mean():
    acts = torch.randn(8, 3, 5)
    kept = [(0, 4), (2, 6)]
    expected = (acts[0] + acts[2]) / 2 - (acts[4] + acts[6]) / 2
    assert torch.allclose(mean_difference(acts, kept), expected)


def test_extract_end_to_end_writes_run_and_vectors(tiny_model, tmp_path):
    res = extract("evil", tiny_model, judge="none", out=tmp_path / "run", **SMALL)
    assert set(res.vectors) == {"prompt_avg", "prompt_last", "response_avg"}
    vec = res.vectors["response_avg"]
    assert vec.data.shape == (tiny_model.n_layers, tiny_model.d_model)
    assert vec.meta.n_kept == 8 and vec.meta.judge.startswith("none")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kept"] == 8 and len(summary["separation"]["response_avg"]["per_layer"]) == tiny_model.n_layers
    lines = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 16
    # the vector is exactly the mean difference of the stored activations
    from safetensors.torch import load_file

    stored = torch.zeros(16, tiny_model.n_layers, tiny_model.d_model)
    for f in (tmp_path / "run" / "activations").glob("*.safetensors"):
        data = load_file(str(f))
        stored[data["row_ids"]] = data["response_avg"]
    assert torch.allclose(vec.data, stored[:8].mean(0) - stored[8:].mean(0), atol=1e-6)


def test_interrupted_extraction_resumes_to_identical_vectors(tiny_model, tmp_path):
    whole = extract("evil", tiny_model, judge="none", out=tmp_path / "whole", **SMALL)

    def interrupt(stage, done, total):
        if stage == "generate" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("evil", tiny_model, judge="none", out=tmp_path / "cut", progress=interrupt, **SMALL)
    assert len(list((tmp_path / "cut" / "activations").glob("*.safetensors"))) == 2
    resumed = extract("evil", tiny_model, judge="none", out=tmp_path / "cut", **SMALL)
    assert resumed.summary["resumed"] is True
    for position in whole.vectors:
        assert torch.equal(whole.vectors[position].data, resumed.vectors[position].data)


def test_run_dir_with_other_settings_is_refused(tiny_model, tmp_path):
    extract("evil", tiny_model, judge="none", out=tmp_path / "run", **SMALL)
    with pytest.raises(PersonaspaceError, match="different settings"):
        extract("evil", tiny_model, judge="none", out=tmp_path / "run", **{**SMALL, "max_new_tokens": 6})


def test_invalid_settings_are_one_clear_error(tiny_model, tmp_path):
    with pytest.raises(PersonaspaceError, match="n_instructions must be 1..5"):
        extract("evil", tiny_model, judge="none", out=tmp_path / "r", n_instructions=9)
