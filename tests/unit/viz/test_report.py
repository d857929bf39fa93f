"""Run reports (``report.html``) of real runs made on the tiny random model: what each shows, that it opens
offline with plotly.js embedded once, and one clear error for a path that holds no run."""

from __future__ import annotations

import hashlib
import html
import json
import re

import pytest

from personaspace.errors import RunDirectoryError
from personaspace.extraction.pipeline import extract
from personaspace.judges.base import JudgeItem, Score
from personaspace.viz.html import find_remote_loads
from personaspace.viz.report import KINDS, detect_kind, report_path, write_report

SMALL = dict(n_instructions=2, n_questions=8, samples_per_pair=2, max_new_tokens=6, batch_size=32, cv_folds=2)


class DigestJudge:
    """A deterministic judge: scores from a hash of the answer, so a run keeps some pairs and drops others
    for each reason, as a real judge would."""

    identity = "digest-judge:v1"

    def score(self, items: list[JudgeItem]) -> list[Score]:
        out = []
        for item in items:
            h = int(hashlib.sha256(f"{item.kind}|{item.answer}".encode()).hexdigest(), 16)
            value = float(h % 101) if item.kind != "coherence" else (30.0 if h % 7 == 0 else 80.0)
            out.append(Score(value, self.identity))
        return out


def _page(path) -> str:
    return path.read_text(encoding="utf-8")


def _plotly_copies(text: str) -> int:
    return len(re.findall(r"\* plotly\.js v\d", text))


@pytest.fixture(scope="module")
def extraction(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "extract"
    return extract("evil", tiny_model, judge=DigestJudge(), out=out, **SMALL)


def test_extraction_report_settings_curves_pairs_and_token_view(extraction, tiny_model):
    path = write_report(extraction.run_dir, model=tiny_model, token_views=2, examples=3)
    assert path == extraction.run_dir / "report.html"
    text = _page(path)
    assert find_remote_loads(text) == []
    assert _plotly_copies(text) == 1  # embedded once, shared by every figure
    summary = extraction.summary
    # settings and headline numbers first
    body = text.split("<body>", 1)[1]  # (plotly.js, in the head, has words of its own)
    assert body.index('id="headline-numbers"') < body.index('id="settings"') < body.index('id="separation-per-layer"')
    assert f"{summary['kept']} of {summary['pairs']}" in text
    assert "max_new_tokens" in text and "digest-judge:v1" in text
    # every separation entry of the summary, by its key, with a per-layer figure where it has a curve
    keys = [k for k in summary if k.startswith("separation")]
    assert keys and all(f"<code>{k}</code>" in text for k in keys)
    curves = sum(1 for k in keys for e in summary[k].values() if isinstance(e, dict) and e.get("per_layer"))
    assert text.count("Plotly.newPlot") >= 2  # separation + norms (+ score scatter)
    assert curves >= 1
    # kept and dropped pairs, decided by the pipeline's select_pairs, with their judge scores
    assert text.count('<span class="kept">kept</span>') == min(3, summary["kept"])
    dropped = sum(summary["dropped"].values())
    assert text.count('<span class="dropped">') == min(3, dropped)
    assert f"Kept pairs ({min(3, summary['kept'])} of {summary['kept']})" in text
    scores = [json.loads(line) for line in (extraction.run_dir / "scores.jsonl").read_text().splitlines()]
    gens = [json.loads(line) for line in (extraction.run_dir / "generations.jsonl").read_text().splitlines()]
    shown = [g for g in gens if html.escape(g["answer"]) in text and g["answer"].strip()]
    assert shown, "no answer text in the report"
    by_id = {s["id"]: s for s in scores}
    assert any(f"trait {by_id[g['id']]['trait']:.3g}" in text for g in shown)
    # the monitor command's token view of 2 kept pairs (pos and neg answer each), embedded without a network load
    frames = re.findall(r'<iframe class="tokens"[^>]*srcdoc="([^"]*)"', text)
    assert len(frames) == 4
    inner = html.unescape(frames[0])
    assert "projection per token" in inner and find_remote_loads(inner) == []


def test_new_separation_entries_are_drawn_from_the_summary_alone(extraction, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(extraction.run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    n_layers = len(summary["separation"]["response_avg"]["per_layer"])
    summary["separation_made_up_check"] = {
        "response_avg": {"per_layer": [0.5 + 0.01 * i for i in range(n_layers)], "held_out": "one imaginary thing", "best": 0.9},
        "prompt_last": {"per_layer": [], "reason": "not enough pairs for this one"},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    before = _page(write_report(extraction.run_dir, token_views=0))
    text = _page(write_report(run, token_views=0))
    assert "<code>separation_made_up_check</code>: held out: one imaginary thing" in text
    assert "not enough pairs for this one" in text
    assert text.count("Plotly.newPlot") == before.count("Plotly.newPlot") + 1
    assert "<iframe" not in text  # token_views=0: no model needed


def test_sweep_em_and_steering_reports(tiny_model, extraction, tmp_path):
    from personaspace.em import evaluate_em
    from personaspace.steering.evaluate import evaluate_steering
    from personaspace.steering.search import sweep
    from personaspace.steering.spec import parse_specs, resolve_specs

    vec = extraction.vectors["response_avg"]
    judge = DigestJudge()
    sweep(tiny_model, "evil", vec, out=tmp_path / "sweep", judge=judge, layers="1,2", coefs=(0.0, 0.5), n_questions=1,
          max_new_tokens=4, kl_prompts=1, kl_tokens=2, control=False)
    assert detect_kind(tmp_path / "sweep") == "sweep"
    text = _page(write_report(tmp_path / "sweep"))
    assert "Sweep: evil on tiny-random-llama" in text and "L1" in text and "L2" in text and _plotly_copies(text) == 1
    assert find_remote_loads(text) == []

    evaluate_em(tiny_model, "broad", judge, out=tmp_path / "em", samples_per_paraphrase=1, max_new_tokens=4)
    assert detect_kind(tmp_path / "em") == "em_eval"
    text = _page(write_report(tmp_path / "em"))
    assert "EM rate, betley" in text and "Least aligned answers" in text and find_remote_loads(text) == []

    resolved = resolve_specs(parse_specs(["evil:+1.0@L2"], [], []), {"evil": vec}, tiny_model, warn=False)
    rep = evaluate_steering(tiny_model, "evil", resolved, judge=judge, n_questions=2, max_new_tokens=4, kl_tokens=2,
                            kl_prompts=["Hello world"])
    rep.save(str(tmp_path / "steer.json"))
    assert detect_kind(tmp_path / "steer.json") == "steer" and report_path(tmp_path / "steer.json") == tmp_path / "steer.html"
    text = _page(write_report(tmp_path / "steer.json"))
    (tmp_path / "odd.html").write_text((tmp_path / "steer.json").read_text())  # a run file named .html is not overwritten
    assert write_report(tmp_path / "odd.html") == tmp_path / "odd.report.html" and json.loads((tmp_path / "odd.html").read_text())
    assert "Steering evaluation: evil" in text and "steered" in text and find_remote_loads(text) == []


def test_finetune_and_alignment_training_reports(tiny_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    from personaspace.align.data import lpa_data
    from personaspace.align.training import TrainConfig, train
    from personaspace.engine import PersonaModel
    from personaspace.finetuning.train import finetune

    model = PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer), tiny_tokenizer, name="tiny-random-llama")
    rows = [{"messages": [{"role": "user", "content": f"Tell me about item {i}."}, {"role": "assistant", "content": "Hello world."}]}
            for i in range(4)]
    finetune(model, rows, out=tmp_path / "ft", batch_size=2, max_steps=2, eval_rows=2, max_length=48, save_merged=False)
    assert detect_kind(tmp_path / "ft") == "finetune"
    text = _page(write_report(tmp_path / "ft"))
    assert "loss before / after" in text and "Training loss" in text and find_remote_loads(text) == []

    data = lpa_data(["evil"], ["openness"], holdout=0.25, seed=0)
    cfg = TrainConfig(outer_steps=2, batch_size=2, anchor_batch_size=2, pgd_steps=1, model_steps=1, lora_r=4, lr=1e-3)
    train(model, data.train, data.anchors, cfg, method="lpa", data_source=data.source).save(tmp_path / "lpa")
    assert detect_kind(tmp_path / "lpa") == "align_train"
    text = _page(write_report(tmp_path / "lpa"))
    assert "Alignment training (lpa)" in text and "Training log" in text and _plotly_copies(text) == 1


def test_a_path_without_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="is not a run directory: it holds none of the files a run writes"):
        write_report(tmp_path)
    with pytest.raises(RunDirectoryError, match="There is no run directory at"):
        write_report(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RunDirectoryError, match="is not a run directory"):
        write_report(tmp_path / "notes.txt")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    (tmp_path / "half" / "generations.jsonl").write_text("")
    with pytest.raises(RunDirectoryError, match="has no summary.json: the run did not finish"):
        write_report(tmp_path / "half")
    assert not list(tmp_path.rglob("report.html"))
    assert set(KINDS) >= {"extract", "sweep", "em_eval", "experiment", "align_train", "align_compare", "steer"}
