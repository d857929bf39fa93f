"""Extraction end to end on the embedded SmolLM2 with the offline judge, at small sizes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from personaspace.cli.root import _mount_subapps, app
from personaspace.extraction.pipeline import extract

SIZES = dict(n_instructions=5, n_questions=10, max_new_tokens=32, batch_size=100, cv_folds=5)


def test_extracted_vector_separates_heldout_pos_and_neg(embedded_model, tmp_path):
    res = extract("evil", embedded_model, judge="offline", out=tmp_path / "run", **SIZES)
    s = res.summary
    assert s["judge"].startswith("offline:")
    assert s["kept"] >= 5, s["dropped"]
    assert s["mean_scores"]["pos"]["trait"] > s["mean_scores"]["neg"]["trait"]
    sep = s["separation"]["response_avg"]
    assert sep["best"] > 0.9, sep
    vec = res.vectors["response_avg"]
    assert vec.meta.n_kept == s["kept"] and vec.meta.thresholds["coherence_min"] == 50.0
    assert vec.meta.model == "smollm2-135m-instruct" and vec.meta.model_hash


def test_cli_extract_runs_and_reports(tmp_path):
    _mount_subapps()
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(
        app,
        ["extract", "--trait", "evil", "--judge", "none", "--instructions", "1", "--questions", "4",
         "--max-new-tokens", "8", "--out", str(out), "--save-to", str(tmp_path / "vecs")],
    )
    assert result.exit_code == 0, result.output
    assert "pairs kept" in result.output and "held-out AUROC" in result.output
    index = json.loads((tmp_path / "vecs" / "index.json").read_text())
    assert {e["position"] for e in index["entries"]} == {"prompt_avg", "prompt_last", "response_avg"}
    # the run's report: one offline page with the separation curves, the pairs and the token view of kept answers
    from personaspace.viz.html import find_remote_loads

    report = (out / "report.html").read_text(encoding="utf-8")
    assert f"report: {out / 'report.html'}" in " ".join(result.output.split())
    assert find_remote_loads(report) == [] and "Separation per layer" in report and report.count('<iframe class="tokens"') == 4
