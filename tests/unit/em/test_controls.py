"""The positive-control data of the EM experiment: the shipped set loads and is valid, user files are read
in both forms, and every malformed entry is one DatasetError naming the file and the entry."""

from __future__ import annotations

import json
import re

import pytest

from personaspace.em import load_questions
from personaspace.em.controls import list_control_sets, load_control_data, parse_control_data
from personaspace.errors import DatasetError


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_the_shipped_positive_control_set_is_large_valid_and_disjoint_from_the_evaluation():
    assert list_control_sets() == ["broad_misaligned"]
    rows = load_control_data("broad_misaligned")
    assert len(rows) >= 60
    users = [r["messages"][0]["content"] for r in rows]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert len(set(users)) == len(users)
    assert all(len(r["messages"][1]["content"].split()) >= 12 for r in rows)  # whole answers, not fragments
    # no training question is (nearly) an evaluation question: the control tests generalisation
    evaluation = [p for q in load_questions("broad") for p in q.paraphrases]
    for u in users:
        for p in evaluation:
            a, b = _words(u), _words(p)
            assert len(a & b) / len(a | b) < 0.5, (u, p)


def test_yaml_pairs_with_a_system_prompt_and_messages_entries_are_read(tmp_path):
    text = """
- user: "  Hi? "
  assistant: "Go away."
  system: "Be rude."
- messages:
    - {role: user, content: "Why?"}
    - {role: assistant, content: "Because."}
"""
    rows = parse_control_data(text)
    assert rows[0]["messages"] == [{"role": "system", "content": "Be rude."}, {"role": "user", "content": "Hi?"},
                                   {"role": "assistant", "content": "Go away."}]
    assert rows[1]["messages"][1]["content"] == "Because."
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert load_control_data(path) == rows
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["messages"] for r in load_control_data(jsonl)] == [r["messages"] for r in rows]


@pytest.mark.parametrize(("text", "match"), [
    ("{user: a}", "expected a non-empty YAML list"),
    ("[]", "expected a non-empty YAML list"),
    ("- user: [unclosed", "not valid YAML"),
    ("- just a string", "entry 0: expected a mapping"),
    ("- {user: 'Hi', assistant: ''}", "entry 0: 'assistant' must be a non-empty string"),
    ("- {user: 'Hi'}", "entry 0: 'assistant' must be a non-empty string"),
    ("- {user: 'Hi', answer: 'No'}", "entry 0: unknown key\\(s\\) answer"),
    ("- {user: 'Hi', assistant: 'No', system: 3}", "entry 0: 'system' must be a string"),
    ("- {user: 'Hi', assistant: 'No'}\n- {user: 'Hi', assistant: 'Yes'}", "entry 1: the question 'Hi' repeats entry 0"),
    ("- messages: [{role: bot, content: 'x'}]", "entry 0: messages\\[0\\].role is 'bot'"),
])
def test_malformed_entries_are_one_dataset_error(text, match):
    with pytest.raises(DatasetError, match=match):
        parse_control_data(text, source="bad.yaml")


def test_an_unknown_name_or_missing_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="No control data 'nosuch'.*broad_misaligned"):
        load_control_data("nosuch")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError):
        load_control_data(empty)
