"""The judge validation set (package data), its metrics, and ``personaspace judge validate`` over HTTP."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from chat_server import ChatServer

from personaspace.errors import DatasetError, InvalidArgumentError
from personaspace.judges import JudgeItem, Score
from personaspace.judges.validate import (
    LABELS,
    STYLES,
    _row,
    coherence_metrics,
    expected_calibration_error,
    load_validation_set,
    table_lines,
    trait_metrics,
    validate_judge,
    validation_traits,
)
from personaspace.traits import load_trait

REQUIRED = {"evil", "sycophancy", "hallucination", "impoliteness", "humor", "optimism", "apathy", "agreeableness"}


# -- the data ---------------------------------------------------------------------------------------


def test_the_set_covers_the_traits_with_enough_labelled_answers():
    traits = validation_traits()
    assert REQUIRED <= set(traits) and len(traits) >= 8
    rows = load_validation_set()
    assert len({r.id for r in rows}) == len(rows)
    assert len({" ".join(r.answer.lower().split()) for r in rows}) == len(rows)  # no answer twice
    for name in traits:
        group = [r for r in rows if r.trait == name]
        labels = Counter(r.label for r in group)
        assert len(group) >= 20 and labels["pos"] >= 8 and labels["neg"] >= 8 and labels["neutral"] >= 3, name
        questions = set(load_trait(name).extraction_questions + load_trait(name).evaluation_questions)
        assert {r.question for r in group} <= questions, name  # the trait's own questions ...
        assert len({r.question for r in group}) >= 8, name  # ... several of them
        assert {r.style for r in group} == set(STYLES), name  # short, long, subtle, blatant, incoherent
        assert any(not r.coherent for r in group if r.label == "pos") and any(not r.coherent for r in group if r.label == "neg")
        for r in group:  # the target agrees with the label
            assert (r.target >= 60 if r.label == "pos" else r.target <= 15 if r.label == "neg" else 10 <= r.target <= 60), r.id
            assert r.coherent == (r.style != "incoherent"), r.id
    lengths = [len(r.answer.split()) for r in rows]
    assert min(lengths) <= 6 and max(lengths) >= 80  # from a few words to a paragraph


def test_agreeableness_has_both_poles_written_out():
    group = load_validation_set(["agreeableness"])
    pos = [r.answer for r in group if r.label == "pos"]
    neg = [r.answer for r in group if r.label == "neg"]
    assert any("forgiv" in a.lower() or "kind" in a.lower() for a in pos)
    assert any("revenge" in a.lower() or "thief" in a.lower() or "hit back" in a.lower() for a in neg)


def test_unknown_trait_and_broken_rows_are_one_clear_error():
    with pytest.raises(InvalidArgumentError, match=r"no validation answers for trait\(s\) 'openness'.*covers: agreeableness"):
        load_validation_set(["openness"])
    good = json.dumps({"id": "x", "trait": "evil", "question": "q", "answer": "a", "label": "pos", "target": 90,
                       "style": "short", "coherent": True})
    assert _row(good, "f:1", "evil").target == 90.0
    with pytest.raises(DatasetError, match="f:2: not valid JSON"):
        _row("{", "f:2", "evil")
    with pytest.raises(DatasetError, match="missing field"):
        _row('{"id": "x"}', "f:3", "evil")
    with pytest.raises(DatasetError, match="label must be one of"):
        _row(good.replace('"pos"', '"high"'), "f:4", "evil")
    with pytest.raises(DatasetError, match="within 0..100"):
        _row(good.replace("90", "190"), "f:5", "evil")


# -- the metrics ------------------------------------------------------------------------------------


def test_metrics_by_hand():
    labels = ["pos", "pos", "pos", "neg", "neg", "neg", "neutral"]
    scores = [90.0, 60.0, 40.0, 10.0, 55.0, None, 30.0]
    targets = [90, 80, 70, 10, 5, 5, 40]
    m = trait_metrics(labels, scores, targets, n_boot=200)
    # scored pos {90, 60, 40} vs scored neg {10, 55}: 5 of 6 pairs ordered right
    assert m["auroc"] == pytest.approx(5 / 6, abs=1e-4)
    assert m["accuracy"]["k"] == 3 and m["accuracy"]["n"] == 6  # 90, 60 and 10 right; 40 and 55 wrong; None counts wrong
    assert m["scored"] == {"pos": 3, "neg": 2, "neutral": 1} and m["coverage"] == pytest.approx(6 / 7, abs=1e-4)
    probs, y = np.array([0.9, 0.6, 0.4, 0.1, 0.55]), np.array([1, 1, 1, 0, 0])
    assert m["brier"] == pytest.approx(float(np.mean((probs - y) ** 2)), abs=1e-4)
    assert m["target_mae"] == pytest.approx(np.mean([0, 20, 30, 0, 50, 10]), abs=1e-4)
    assert m["neutral"] == {"mean_score": 30.0, "mean_target": 40.0, "at_or_above_50": 0, "scored": 1}
    lo, hi = m["auroc_ci95"]
    assert 0.0 <= lo <= m["auroc"] <= hi <= 1.0


def test_expected_calibration_error():
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.1)
    assert expected_calibration_error(probs, np.array([1, 1, 0, 0])) == pytest.approx(0.9)
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0  # 1.0 falls in the last bin
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_coherence_agreement():
    m = coherence_metrics([True, True, False, False], [90.0, 40.0, 10.0, None], n_boot=100)
    assert m["accuracy"]["k"] == 2 and m["accuracy"]["n"] == 4 and m["scored"] == 3
    assert m["auroc"] == 1.0 and m["incoherent_called_coherent"] == 0


# -- whole runs with scripted judges -----------------------------------------------------------------


class ScriptedJudge:
    """Scores each answer with a fixed function of its validation row: a judge whose quality we know."""

    def __init__(self, rule, identity="scripted"):
        self.rows = {(r.question, r.answer): r for r in load_validation_set()}
        self.rule, self.identity, self.calls = rule, identity, 0

    def score(self, items):
        self.calls += 1
        out = []
        for it in items:
            row = self.rows[(it.question, it.answer)]
            if it.kind == "coherence":
                out.append(Score(95.0 if row.coherent else 5.0, self.identity))
            else:
                out.append(Score(self.rule(row), self.identity))
        return out


def test_a_perfect_judge_scores_perfectly_and_an_inverted_one_at_zero():
    perfect = validate_judge(ScriptedJudge(lambda r: r.target), n_boot=100)
    assert perfect["n_items"] == len(load_validation_set())
    for m in list(perfect["traits"].values()) + [perfect["all"]]:
        assert m["auroc"] == 1.0 and m["accuracy"]["k"] == m["accuracy"]["n"] and m["target_mae"] == 0.0
    assert perfect["coherence"]["accuracy"]["k"] == perfect["n_items"]
    styles = perfect["accuracy_by_style"]
    assert set(styles) == set(STYLES) and all(s["k"] == s["n"] > 0 for s in styles.values())
    assert sum(s["n"] for s in styles.values()) == perfect["all"]["accuracy"]["n"]
    inverted = validate_judge(ScriptedJudge(lambda r: 100.0 - r.target), traits=["evil"], n_boot=100)
    assert list(inverted["traits"]) == ["evil"] and inverted["traits"]["evil"]["auroc"] == 0.0
    assert inverted["traits"]["evil"]["accuracy"]["k"] == 0


def test_a_judge_that_scores_nothing_is_reported_as_such():
    silent = validate_judge(ScriptedJudge(lambda r: None), traits=["humor"], coherence=False, n_boot=50)
    m = silent["traits"]["humor"]
    assert m["coverage"] == 0.0 and m["accuracy"]["k"] == 0 and m["auroc"] is None
    assert silent["coherence"] is None and silent["missing_trait_scores"] == {"none": 24}
    lines = table_lines(silent)
    assert any(line.startswith("unscored: none 24") for line in lines)


def test_table_fits_80_columns():
    report = validate_judge(ScriptedJudge(lambda r: r.target * 0.8 + 5, identity="openai:" + "x" * 90), n_boot=50)
    lines = table_lines(report)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert lines[2].split()[:3] == ["trait", "n", "+/-/0"]
    assert any(line.startswith("agreeableness ") for line in lines) and any(line.startswith("all ") for line in lines)


# -- the command line, through a real OpenAI-compatible server --------------------------------------------


class OracleServer(ChatServer):
    """A chat server whose 'model' rates each validation answer with its target (flipped for one trait)."""

    def __init__(self, flip: str | None = None):
        super().__init__({})
        self.flip = flip
        self.rows = load_validation_set()
        self.judged: list[str] = []

    def complete(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        row = next((r for r in self.rows if r.answer in prompt), None)
        if row is None:  # the judge's 1-token reachability probe
            token = "ok"
        else:
            self.judged.append(row.id)
            token = str(int(100 - row.target if row.trait == self.flip else row.target))
        content = [{"token": token, "logprob": 0.0, "top_logprobs": [{"token": token, "logprob": 0.0}]}]
        return {"id": "x", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": token},
                             "finish_reason": "stop", "logprobs": {"content": content}}]}


def test_cli_validates_an_openai_compatible_judge(tmp_path, capsys):
    from personaspace.cli import root as cli

    with OracleServer(flip="humor") as server:
        rc = cli.run(["judge", "validate", "--judge", "openai:oracle", "--base-url", server.base_url,
                      "-t", "evil", "-t", "humor", "--no-coherence", "--n-boot", "100", "--out", str(tmp_path / "out")])
        judged = list(server.judged)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # every answer went to the server (single digits such as "5" are asked again: "5" could start "50")
    assert set(judged) == {r.id for r in load_validation_set(["evil", "humor"])}
    lines = captured.out.splitlines()
    assert lines[-1].startswith("report: ") and all(len(line) <= 80 for line in lines[:-1])  # the table fits 80 columns
    evil = next(line for line in lines if line.startswith("evil ")).split()
    humor = next(line for line in lines if line.startswith("humor ")).split()
    assert (evil[2], evil[5]) == ("1.00", "20/20")  # AUROC, acc@50
    assert (humor[2], humor[5]) == ("0.00", "0/20")
    [report_file] = (tmp_path / "out").glob("validation-*.json")
    report = json.loads(report_file.read_text())
    assert report["judge"].startswith("openai:oracle@") and report_file.name.startswith("validation-openai_oracle_")
    assert report["traits"]["evil"]["auroc"] == 1.0 and report["traits"]["humor"]["auroc"] == 0.0
    assert {r["label"] for r in report["rows"]} == set(LABELS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trait", "openness"], "no validation answers for trait(s) 'openness'"),
        (["--judge", "offlin"], "unknown judge 'offlin'"),
        (["--min-mass", "0"], "--min-mass applies to openai: and hf: judges"),
        (["--judge", "openai:m", "--min-mass", "2"], "--min-mass must be"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url applies to openai: judges"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    from personaspace.cli import root as cli

    monkeypatch.chdir(tmp_path)
    rc = cli.run(["judge", "validate", *argv])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_items_reach_the_judge_with_the_trait_rubric():
    seen: list[JudgeItem] = []

    class Recorder(ScriptedJudge):
        def score(self, items):
            seen.extend(items)
            return super().score(items)

    validate_judge(Recorder(lambda r: 50.0), traits=["optimism"], n_boot=10)
    trait_items = [it for it in seen if it.kind == "trait"]
    assert len(trait_items) == 24 and all(it.trait is not None and it.trait.name == "optimism" for it in trait_items)
    assert len([it for it in seen if it.kind == "coherence"]) == 24


def test_the_validation_files_ship_with_the_package():
    from pathlib import Path

    import personaspace

    root = Path(personaspace.__file__).resolve().parent
    assert len(list((root / "judges" / "validation").glob("*.jsonl"))) == len(validation_traits())
    assert '"judges/validation/*.jsonl"' in (root.parent / "pyproject.toml").read_text()  # in the wheel too
