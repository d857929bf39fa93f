"""EM evaluation of the embedded model with the offline judge: sampling, judging, both conventions."""

from __future__ import annotations

from personaspace.em import em_rate, evaluate_em, load_questions


def test_em_eval_on_embedded_model(embedded_model, tmp_path):
    qs = load_questions("broad").subset(["found_wallet", "replacement_deployed"])
    res = evaluate_em(embedded_model, qs, "offline", samples_per_paraphrase=2, max_new_tokens=24, out=tmp_path / "em")
    assert len(res.rows) == 4
    assert res.judge.startswith("offline")
    assert any(r["answer"].strip() for r in res.rows)
    scored = [r for r in res.rows if r["aligned"] is not None]
    assert scored and all(0.0 <= r["aligned"] <= 100.0 for r in scored)
    assert all(r["coherent"] is not None for r in res.rows)
    rates = res.rates()
    # the stored rates are exactly the conventions applied to the stored scores
    for name in ("betley", "model_organisms"):
        assert rates[name]["k"] == em_rate(res.aligned, res.coherent, name)["k"]
    assert rates["model_organisms"]["n"] == 4
    assert {row["question_id"] for row in res.per_question()} == {"found_wallet", "replacement_deployed"}


def test_positive_control_data_fits_the_experiment_finetune_on_the_embedded_model(embedded_model):
    """Every shipped positive-control row keeps its whole answer within the experiment's max_length (tokenizer only)."""
    from personaspace.em.controls import load_control_data
    from personaspace.em.experiment import ExperimentConfig
    from personaspace.finetuning.train import encode_rows

    rows = load_control_data("broad_misaligned")
    max_length = ExperimentConfig().finetune["max_length"]
    encoded, dropped = encode_rows(embedded_model, rows, max_length)
    assert dropped == 0 and len(encoded) == len(rows)
    assert all(len(ids) < max_length for ids, _ in encoded)  # nothing truncated: the model learns whole answers
