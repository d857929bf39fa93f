"""``personaspace report RUN_DIR``: regenerates report.html of a real run; a path without a run is one line, exit 2."""

from __future__ import annotations

import pytest

from personaspace.cli.root import run
from personaspace.extraction.pipeline import extract


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-report") / "run"
    extract("evil", tiny_model, judge="none", out=out, n_instructions=2, n_questions=2, max_new_tokens=4, batch_size=8, cv_folds=2)
    return out


def test_report_command_writes_report_html(run_dir, capsys):
    assert not (run_dir / "report.html").exists()
    assert run(["report", str(run_dir), "--tokens", "0"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Extraction: evil on tiny-random-llama" in text and "Judge <code>none</code>: every pair is kept" in text
    # the token view needs the model: this one was built in memory and cannot be loaded by name, which the page says
    assert run(["report", str(run_dir)]) == 0
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Token projection view" in text and "Not shown:" in text and "tiny-random-llama" in text


def test_report_command_on_a_path_without_a_run_is_one_line(tmp_path, capsys):
    assert run(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is not a run directory" in err[0]
    assert err[0].endswith("(details: personaspace explain run-directory)")
    assert run(["report", str(tmp_path / "nothing-here")]) == 2
    assert "There is no run directory at" in capsys.readouterr().err
    assert run(["report", str(tmp_path), "--tokens", "-1"]) == 2


def test_a_report_that_cannot_be_written_warns_without_failing_the_finished_run(tmp_path, capsys):
    from personaspace.cli.report import write_run_report

    write_run_report(tmp_path)  # the command's run is saved: a report problem is a warning, not an error
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: no report written:" in err and "is not a run directory" in err and "personaspace --debug report" in err


def test_extract_command_ends_with_the_report_and_its_token_view(tiny_model, tmp_path, capsys):
    model_dir = tmp_path / "tiny-model"  # a model directory the report can load again by the name in config.json
    tiny_model.hf_model.save_pretrained(model_dir)
    tiny_model.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    code = run(["extract", "--trait", "evil", "--model", str(model_dir), "--judge", "none", "--instructions", "2", "--questions", "2",
                "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert f"report: {out / 'report.html'}" in " ".join(capsys.readouterr().out.split())
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count('<iframe class="tokens"') == 4 and "Not shown" not in text
