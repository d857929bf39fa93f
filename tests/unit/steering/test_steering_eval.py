"""Steered generation, KL from the unsteered model, evaluation arms and sweeps, on the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from personaspace.engine.layers import default_sweep_layers
from personaspace.judges import Score
from personaspace.steering.evaluate import evaluate_steering, next_token_kl, steer
from personaspace.steering.search import SweepConfig, recommend, sweep, to_csv
from personaspace.steering.spec import parse_spec, resolve_specs
from personaspace.traits import load_trait
from personaspace.vectors.store import PersonaVector, VectorMeta
from personaspace.viz.steering import write_sweep_heatmap

PROMPTS = ["Hello there.", "What would you do with a free afternoon?", "Name a colour."]


class LengthJudge:
    """A real, deterministic judge for plumbing tests: trait = checksum of the text, coherence = length."""

    identity = "test:length"

    def __init__(self):
        self.calls = 0

    def score(self, items):
        self.calls += len(items)
        out = []
        for it in items:
            if it.kind == "coherence":
                out.append(Score(min(100.0, float(len(it.answer))), self.identity))
            elif not it.answer:
                out.append(Score(None, self.identity, "empty"))
            else:
                out.append(Score(float(sum(map(ord, it.answer)) % 101), self.identity))
        return out


@pytest.fixture(scope="module")
def vec(tiny_model):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(tiny_model.n_layers, tiny_model.d_model, generator=g) * 2.0
    return PersonaVector(data, VectorMeta(trait="evil", model=tiny_model.name))


def _manual_logprobs(model, prompt, response_ids, layer=None, add=None):
    """Reference: plain HF forward with a hand-written hook adding ``add`` at block ``layer``."""
    ids = model.prompt_ids(prompt)
    seq = torch.tensor([ids + response_ids])
    handle = None
    if add is not None:
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h + add
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = model.backend.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model.hf_model(seq).logits[0]
    finally:
        if handle:
            handle.remove()
    return torch.log_softmax(logits[len(ids) - 1 :].float(), -1)


def test_kl_matches_a_hand_written_reference(tiny_model, vec):
    (r,) = resolve_specs([parse_spec("evil:+1.5@L1", "add")], {"evil": vec}, tiny_model)
    ref_ids = [g.response_ids for g in tiny_model.generate(PROMPTS[:2], max_new_tokens=6)]
    kl = next_token_kl(tiny_model, [r], PROMPTS[:2], reference=ref_ids)
    expected = []
    for p, resp in zip(PROMPTS[:2], ref_ids):
        base = _manual_logprobs(tiny_model, p, resp)
        st = _manual_logprobs(tiny_model, p, resp, layer=1, add=1.5 * vec.at(1))
        expected.append(float((base.exp() * (base - st)).sum(-1).mean()))
    assert kl["n"] == 2 and kl["tokens"] == sum(len(x) + 1 for x in ref_ids)
    assert kl["per_prompt"] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert kl["mean"] > 0.01


def test_kl_of_a_no_op_is_zero(tiny_model, vec):
    (r,) = resolve_specs([parse_spec("evil:+0@L1", "add")], {"evil": vec}, tiny_model)
    kl = next_token_kl(tiny_model, [r], PROMPTS[:2], max_new_tokens=4)
    assert kl["mean"] == pytest.approx(0.0, abs=1e-6)


def test_steer_puts_steered_beside_unsteered(tiny_model, vec, tmp_path):
    specs = [parse_spec("evil:+8@L1-2", "add")]
    res = steer(tiny_model, specs, PROMPTS, vectors={"evil": vec}, max_new_tokens=6)
    plain = tiny_model.generate(PROMPTS, max_new_tokens=6).texts
    assert res.unsteered == plain
    assert res.steered != plain
    res.save(str(tmp_path / "a.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert lines[0]["header"]["interventions"][0]["read_layers"] == [1, 2]
    assert lines[0]["header"]["interventions"][0]["applied_layers"] == [1, 2]
    assert [x["unsteered"] for x in lines[1:]] == plain
    zero = steer(tiny_model, [parse_spec("evil:+0@L1", "add")], PROMPTS, vectors={"evil": vec}, max_new_tokens=6, baseline=False)
    assert zero.unsteered is None and zero.steered == plain


def test_evaluation_reports_arms_counts_and_paired_deltas(tiny_model, vec):
    trait = load_trait("evil")
    resolved = resolve_specs([parse_spec("evil:+6@L1", "add")], {"evil": vec}, tiny_model)
    judge = LengthJudge()
    rep = evaluate_steering(tiny_model, trait, resolved, judge=judge, n_questions=3, max_new_tokens=6, kl_prompts=PROMPTS[:2], kl_tokens=4)
    assert list(rep.conditions) == ["unsteered", "steered", "random control"]
    assert judge.calls == 3 * 3 * 2
    for c in rep.conditions.values():
        assert c.trait["n"] + c.trait["n_unscored"] == 3
        assert c.coherence["n"] == 3
        assert len(c.projection["mean"]) == tiny_model.n_layers
    assert rep.conditions["unsteered"].kl is None
    assert rep.conditions["steered"].kl["n"] == 2 and rep.conditions["steered"].kl["mean"] > 0
    ctrl = rep.conditions["random control"].interventions[0]
    assert ctrl["read_layers"] == [1] and ctrl["applied_layers"] == [1]
    assert ctrl["added_norm"] == pytest.approx(rep.conditions["steered"].interventions[0]["added_norm"], rel=1e-4)
    assert set(rep.deltas) == {"steered - unsteered", "steered - random control", "random control - unsteered"}
    assert rep.readout["layer"] == 2 and rep.judge == "test:length"
    # steering along v raises the projection onto v at the applied layer by coef * |v|, exactly (scope all)
    proj = {k: c.projection["mean"][1] for k, c in rep.conditions.items()}
    assert proj["steered"] - proj["unsteered"] == pytest.approx(6 * float(vec.at(1).norm()), rel=0.05)
    json.dumps(rep.to_dict())


def test_recommend_respects_limits_and_prefers_smaller_push():
    def cell(layer, coef, trait, coh, kl, norm):
        return {"layer": layer, "coef": coef, "raw_coef": coef, "spec": "s", "added_norm": norm,
                "trait": {"mean": trait}, "coherence": {"mean": coh}, "kl": {"mean": kl}}  # fmt: skip

    cells = [
        cell(4, 0.0, 10, 90, 0.0, 0),
        cell(4, 1.0, 60, 80, 0.2, 1),
        cell(4, 2.0, 90, 30, 0.5, 2),  # incoherent
        cell(6, 1.0, 70, 70, 3.0, 1),  # KL too high
        cell(6, 0.5, 60, 85, 0.1, 0.5),  # ties with (4, 1.0), smaller push
    ]
    rec = recommend(cells, coherence_min=50, kl_max=1.0)
    assert (rec["layer"], rec["coef"], rec["candidates"]) == (6, 0.5, 2)
    assert recommend(cells, coherence_min=95, kl_max=1.0) is None


def test_default_layers_cover_the_middle():
    assert default_sweep_layers(30) == [6, 9, 12, 15, 18, 21, 24]
    assert default_sweep_layers(4) == [1, 2, 3]


def test_sweep_writes_table_heatmap_and_resumes(tiny_model, vec, tmp_path):
    judge = LengthJudge()
    cfg = SweepConfig(trait="evil", layers="1,2", coefs=(0.0, 0.5), n_questions=2, max_new_tokens=5, kl_prompts=2, kl_tokens=3,
                      coherence_min=0, kl_max=100)  # fmt: skip
    res = sweep(tiny_model, "evil", vec, cfg, out=tmp_path / "sw", judge=judge)
    assert len(res.cells) == 4
    c = res.cell(2, 0.5)
    assert c["raw_coef"] == pytest.approx(0.5 * c["residual_norm"] / float(vec.at(2).norm()), rel=1e-4)
    assert c["relative_norm"] == pytest.approx(0.5, rel=1e-3)
    assert "read L2, applied L2" in c["spec"]
    assert res.cell(1, 0.0)["kl"]["mean"] == 0.0
    checked = res.selection["checked"]  # the LengthJudge's scores are arbitrary: either verdict may come out
    assert 1 <= len(checked) <= 2 and res.selection["candidates"] == 2 and res.reason
    assert (res.recommendation is not None) == checked[-1]["beats_control"] == (res.control is not None)
    html = write_sweep_heatmap(res, tmp_path / "sw").read_text()
    assert 'src="plotly.min.js"' in html and (tmp_path / "sw" / "plotly.min.js").is_file()  # opens offline
    assert "KL(unsteered || steered)" in html
    csv_lines = (tmp_path / "sw" / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("layer,coef")
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["judge"] == "test:length" and len(saved["cells"]) == 4
    # rerun: finished cells are read back, not recomputed
    calls = judge.calls
    again = sweep(tiny_model, "evil", vec, cfg, out=tmp_path / "sw", judge=judge)
    assert again.cells == res.cells
    per_arm = 2 * 2  # questions x (trait, coherence)
    assert judge.calls - calls == per_arm + 3 * per_arm * len(checked)  # baseline, then each tested cell with its control
    assert again.selection == res.selection
    assert to_csv(again.cells) == (tmp_path / "sw" / "sweep.csv").read_text()


def test_sweep_refuses_a_run_dir_with_other_settings(tiny_model, vec, tmp_path):
    from personaspace.errors import PersonaspaceError

    cfg = SweepConfig(trait="evil", layers="1", coefs=(0.5,), n_questions=1, max_new_tokens=3, kl_prompts=1, kl_tokens=2, control=False)
    sweep(tiny_model, "evil", vec, cfg, out=tmp_path / "sw", judge=LengthJudge())
    with pytest.raises(PersonaspaceError, match="different settings"):
        sweep(tiny_model, "evil", vec, cfg, out=tmp_path / "sw", judge=LengthJudge(), max_new_tokens=4)
