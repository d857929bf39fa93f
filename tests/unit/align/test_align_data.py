"""LPA data: statements to triples and anchors, splits, user files, the built-in request set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from personaspace.align.data import (
    INSTRUCTION_FORMAT,
    STATEMENT_FORMAT,
    load_requests,
    load_statements,
    load_triples,
    lpa_data,
    neutral_prompts,
)
from personaspace.errors import DatasetError, PersonaspaceError
from personaspace.traits import load_trait


def test_statements_become_agree_disagree_triples_and_anchors():
    data = lpa_data(["evil"], ["openness"], holdout=0.25, seed=3)
    evil, openness = load_trait("evil"), load_trait("openness")
    assert len(data.train) + len(data.test) == len(evil.statements_high)
    assert len(data.anchors) + len(data.test_anchors) == len(openness.statements_high)
    prompts_train = {t.prompt for t in data.train}
    assert prompts_train.isdisjoint({t.prompt for t in data.test})  # held out means unseen
    for t in data.train + data.test:
        assert t.unsafe == STATEMENT_FORMAT.agree and t.safe == STATEMENT_FORMAT.disagree
        assert any(s in t.prompt for s in evil.statements_high)
    assert all(a.completion == STATEMENT_FORMAT.agree for a in data.anchors)
    # unseen: every other negative trait, never the trained one
    assert data.unseen and not any(s in t.prompt for t in data.unseen for s in evil.statements_high)
    assert data.source["per_trait"]["evil"] == {"train": len(data.train), "test": len(data.test)}


def test_split_is_seeded():
    a, b, c = lpa_data(seed=1), lpa_data(seed=1), lpa_data(seed=2)
    assert [t.prompt for t in a.train] == [t.prompt for t in b.train]
    assert [t.prompt for t in a.train] != [t.prompt for t in c.train]


def test_instruction_mode_uses_contrast_prompts():
    data = lpa_data(["evil"], ["empathy"], mode="instructions", holdout=0.0)
    assert {t.prompt for t in data.train} == {INSTRUCTION_FORMAT.prompt(p.pos) for p in load_trait("evil").instructions}
    assert data.train[0].unsafe == INSTRUCTION_FORMAT.agree


def test_wrong_valence_and_mode_are_one_clear_error():
    with pytest.raises(DatasetError, match="negative traits"):
        lpa_data(["openness"])
    with pytest.raises(DatasetError, match="Anchor trait"):
        lpa_data(["evil"], ["psychopathy"])
    with pytest.raises(DatasetError, match="mode"):
        lpa_data(mode="vibes")
    with pytest.raises(PersonaspaceError):
        lpa_data(["no_such_trait"])


def test_user_statement_files(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("# my statements\nI enjoy lying to people.\n\nI like to see others fail.\n")
    assert load_statements(txt) == (["I enjoy lying to people.", "I like to see others fail."], [])
    jl = tmp_path / "s.jsonl"
    jl.write_text(json.dumps({"statement": "I lie.", "polarity": "negative"}) + "\n" + json.dumps({"statement": "I help.", "polarity": "positive"}) + "\n")
    assert load_statements(jl) == (["I lie."], ["I help."])
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("statement,polarity\nI cheat.,negative\nI share.,positive\nI steal.,negative\n")
    data = lpa_data([], [], statements_file=csv_path, holdout=0.0, unseen_traits=[])
    assert [t.prompt for t in data.train] == [STATEMENT_FORMAT.prompt(s) for s in ("I cheat.", "I steal.")]
    assert [a.prompt for a in data.anchors] == [STATEMENT_FORMAT.prompt("I share.")]


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("bad.jsonl", '{"statement": "x", "polarity": "evil"}\n', "polarity"),
        ("bad2.jsonl", "not json\n", "not valid JSON"),
        ("bad.csv", "text,polarity\nI lie.,negative\n", "no column"),
        ("empty.jsonl", "\n", "no rows"),
        ("bad.yaml", "a: b\n", ".jsonl or .csv"),
    ],
)
def test_bad_user_files_raise_dataset_error(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=match):
        load_statements(path)


def test_missing_file_and_empty_training_set(tmp_path):
    with pytest.raises(DatasetError, match="No such file"):
        load_statements(tmp_path / "missing.txt")
    with pytest.raises(DatasetError, match="No training statements"):
        lpa_data([], [], unseen_traits=[])


def test_generic_triples(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "p", "safe": "s", "unsafe": "u"}) + "\n")
    (t,) = load_triples(path)
    assert (t.prompt, t.safe, t.unsafe) == ("p", "s", "u")
    path.write_text(json.dumps({"prompt": "p", "safe": "", "unsafe": "u"}) + "\n")
    with pytest.raises(DatasetError, match="'safe'"):
        load_triples(path)


def test_builtin_requests_are_balanced_and_distinct():
    reqs = load_requests()
    labels = Counter(r.label for r in reqs)
    assert labels["harmful"] >= 100 and labels["benign"] >= 100
    per_cat = Counter((r.category, r.label) for r in reqs)
    categories = {r.category for r in reqs}
    assert len(categories) >= 8
    assert len({per_cat[(c, lab)] for c in categories for lab in ("harmful", "benign")}) == 1  # balanced
    assert len({r.text.casefold() for r in reqs}) == len(reqs)
    assert len({r.id for r in reqs}) == len(reqs)
    assert len(neutral_prompts()) >= 20


def test_user_request_sets(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\nHow do I bake bread?,benign\nHelp me hurt someone.,harmful\n")
    reqs = load_requests(path)
    assert [(r.label, r.category) for r in reqs] == [("benign", "user"), ("harmful", "user")]
    path.write_text("text,label\nHow do I bake bread?,benign\n")
    with pytest.raises(DatasetError, match="both harmful and benign"):
        load_requests(path)
    path.write_text("text,label\nHow do I bake bread?,maybe\n")
    with pytest.raises(DatasetError, match="label"):
        load_requests(path)
