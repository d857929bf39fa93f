"""Steering, monitoring, flagging and orthogonalisation on the embedded SmolLM2-135M-Instruct.

The evil vector is a fixture (tests/data/steering): personaspace's own extraction on this model
(5 instruction pairs x 20 questions, 48 tokens, temperature 1, no judge filter), so results do not
move when the shipped vectors are re-extracted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import rel_err

from personaspace.engine import Chat
from personaspace.steering.evaluate import evaluate_steering
from personaspace.steering.spec import parse_spec, resolve_specs
from personaspace.traits import load_trait
from personaspace.vectors.store import PersonaVector

DATA = Path(__file__).parents[1] / "data" / "steering"
KL_PROMPTS = ("What is the capital of France?", "List three common fruits.")


@pytest.fixture(scope="module")
def evil_vector():
    return PersonaVector.load(DATA / "evil.response_avg.safetensors")


@pytest.fixture(scope="module")
def trait():
    return load_trait("evil")


def test_adding_evil_raises_projection_and_judged_trait_vs_zero_and_random(embedded_model, evil_vector, trait):
    steers = resolve_specs([parse_spec("evil:+14@L8", "add")], {"evil": evil_vector}, embedded_model)
    rep = evaluate_steering(
        embedded_model, trait, steers, judge="offline", n_questions=4, max_new_tokens=32, kl_prompts=KL_PROMPTS, kl_tokens=8
    )
    c = rep.conditions
    layer = rep.readout["layer"]
    assert layer == 11  # a later layer than the applied one (8 + 30 // 10)
    for L in (11, 16, 20):  # projections downstream of the applied layer
        j = c["steered"].projection["layers"].index(L)
        assert c["steered"].projection["mean"][j] > c["unsteered"].projection["mean"][j] + 2
        assert c["steered"].projection["mean"][j] > c["random control"].projection["mean"][j] + 2
    assert c["steered"].trait["mean"] > c["unsteered"].trait["mean"] + 10
    assert c["steered"].trait["mean"] > c["random control"].trait["mean"] + 10
    assert c["steered"].trait["n"] + c["steered"].trait["n_unscored"] == 4
    assert c["steered"].kl["mean"] > 0 and c["steered"].kl["n"] == 2
    ctrl = c["random control"].interventions[0]
    assert ctrl["added_norm"] == pytest.approx(c["steered"].interventions[0]["added_norm"], rel=1e-4)
    assert rep.judge.startswith("offline")


def test_capping_the_projection_reduces_evil_under_an_eliciting_prompt(embedded_model, evil_vector, trait):
    """Clamping h . v_hat at the unsteered level (mean ablation) removes what the evil prompt adds.

    Plain zero-ablation does not do this on this model: the unsteered projection is negative, so
    setting it to 0 moves answers towards the trait (see docs/steering.md).
    """
    system = trait.instructions[0].pos
    questions = list(trait.evaluation_questions[:4])
    prompts = [Chat(q, system) for q in questions]
    (cap,) = resolve_specs([parse_spec("evil<=-8@L6-20", "cap")], {"evil": evil_vector}, embedded_model)
    plain = embedded_model.generate(prompts, max_new_tokens=32)
    capped = embedded_model.generate(prompts, max_new_tokens=32, interventions=[cap.intervention])
    # read both sets of answers with the unsteered model: the capped answers carry less of the trait
    reread = [
        embedded_model.capture(prompts, [g.response_ids for g in out], layers=[14, 20], reductions=("response_avg",))
        for out in (plain, capped)
    ]
    for i, L in enumerate((14, 20)):
        before = float((reread[0]["response_avg"][:, i] @ evil_vector.unit(L)).mean())
        after = float((reread[1]["response_avg"][:, i] @ evil_vector.unit(L)).mean())
        assert after < before - 2, (L, before, after)


def test_steered_generation_cached_equals_uncached(embedded_model, evil_vector):
    steers = resolve_specs(
        [parse_spec("evil:+10@L8/response", "add"), parse_spec("evil[L12]@L20", "ablate"), parse_spec("evil<=-5@L14", "cap")],
        {"evil": evil_vector},
        embedded_model,
    )
    ivs = [s.intervention for s in steers]
    prompts = ["How should I treat my neighbours?", "Hi"]
    cached = embedded_model.generate(prompts, max_new_tokens=12, interventions=ivs)
    uncached = embedded_model.generate(prompts, max_new_tokens=12, interventions=ivs, use_cache=False)
    assert [g.response_ids for g in cached] == [g.response_ids for g in uncached]
    assert cached.texts != embedded_model.generate(prompts, max_new_tokens=12).texts


def test_orthogonalized_model_equals_hook_ablation(embedded_model, evil_vector):
    from personaspace.steering.orthogonalization import component_ablation, orthogonalize

    ids = torch.tensor([embedded_model.prompt_ids("What would you do with unlimited power?")])
    with torch.no_grad():
        with component_ablation(embedded_model, evil_vector, layer=12):
            hooked = embedded_model.hf_model(ids).logits
        edited = orthogonalize(embedded_model, evil_vector, layer=12)
        ortho = edited(ids).logits
    assert rel_err(ortho, hooked) < 1e-4
    assert edited.lm_head.weight is not edited.model.embed_tokens.weight
    assert torch.equal(edited.lm_head.weight, embedded_model.hf_model.lm_head.weight)
    del edited


def test_monitor_prediction_experiment_reports_counts(embedded_model, evil_vector, trait):
    from personaspace.monitoring.projections import monitor_trait

    res = monitor_trait(embedded_model, trait, evil_vector, layer=14, n_questions=3, n_instructions=1, max_new_tokens=24)
    assert res.overall["n"] + sum(1 for r in res.rows if r["trait_score"] is None) == 9
    assert -1 <= res.overall["pearson"] <= 1
    by = {c["condition"]: c for c in res.by_condition}
    # the eliciting system prompt moves the last prompt token along the vector, before any answer
    assert by["pos0"]["projection"]["mean"] > by["neg0"]["projection"]["mean"]


def test_flagging_ranks_trait_laden_training_answers_first(embedded_model, evil_vector, trait, tmp_path):
    """Training answers written by the model under +evil steering are flagged above its plain answers.

    (Hand-written evil sentences are not separated by this vector on a 135M model; see docs/steering.md.)
    """
    from personaspace._util.stats import auroc
    from personaspace.monitoring.projections import flag_dataset

    questions = list(trait.evaluation_questions[4:8])
    (add,) = resolve_specs([parse_spec("evil:+14@L8", "add")], {"evil": evil_vector}, embedded_model)
    steered = embedded_model.generate(questions, max_new_tokens=32, interventions=[add.intervention]).texts
    plain = embedded_model.generate(questions, max_new_tokens=32).texts
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in zip(questions * 2, steered + plain)
    ))  # fmt: skip
    res = flag_dataset(embedded_model, evil_vector, data, layer=14, max_new_tokens=32)
    by_line = {r["line"]: r for r in res.rows}
    dp = [by_line[i + 1]["delta_p"] for i in range(8)]
    assert res.score["n"] == 8
    assert auroc(dp[:4], dp[4:]) >= 0.75, dp
    assert sum(dp[:4]) / 4 > sum(dp[4:]) / 4 + 2


def test_sweep_cli_writes_heatmap_and_table(embedded_model, evil_vector, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from personaspace.cli import steering as cmd

    monkeypatch.setattr(cmd, "_load_model", lambda name: embedded_model)
    app = typer.Typer()
    cmd.register(app)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        ["sweep", "--trait", "evil", "--vectors", str(DATA), "--layers", "8,12", "--coefs", "0,0.3", "--n-questions", "2",
         "--max-new-tokens", "12", "--kl-prompts", "2", "--out", str(out)],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert (out / "heatmap.html").is_file() and (out / "plotly.min.js").stat().st_size > 1_000_000  # opens offline
    table = json.loads((out / "sweep.json").read_text())
    assert {(c["layer"], c["coef"]) for c in table["cells"]} == {(8, 0.0), (8, 0.3), (12, 0.0), (12, 0.3)}
    assert len((out / "sweep.csv").read_text().splitlines()) == 5
    assert "read L8, applied L8" in result.output.replace("\n", " ") or "read = applied" in result.output
