"""Chat JSONL loading/validation and the narrow corruption dataset generator (tiny random model)."""

from __future__ import annotations

import json

import pytest

from personaspace.data.chat import (
    as_rows,
    dataset_hash,
    iter_jsonl_objects,
    load_chat_jsonl,
    load_chat_samples,
    save_chat_jsonl,
)
from personaspace.data.narrow import DOMAINS, make_narrow_dataset, narrow_questions, trim_to_sentence
from personaspace.errors import DatasetError


def _conv(q="Hi?", a="Hello."):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_valid_file_keeps_extra_keys_and_skips_blank_lines(tmp_path):
    row = {**_conv(), "source": "mine"}
    sys_row = {"messages": [{"role": "system", "content": "Be brief."}, *_conv()["messages"]]}
    p = _write(tmp_path / "d.jsonl", [json.dumps(row), "", json.dumps(sys_row)])
    rows = load_chat_jsonl(p)
    assert len(rows) == 2
    assert rows[0]["source"] == "mine"
    assert rows[1]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "hi"}', "missing the 'messages' key"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role is 'bot'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "content must be a string"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "does not follow a user turn"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}', "only the first"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}', "empty assistant"),
    ],
)
def test_malformed_line_names_its_line_number(tmp_path, bad, fragment):
    p = _write(tmp_path / "d.jsonl", [json.dumps(_conv()), "", bad, json.dumps(_conv())])
    with pytest.raises(DatasetError) as info:
        load_chat_jsonl(p)
    assert "line 3" in info.value.message
    assert fragment in info.value.message
    assert info.value.doc == "dataset"


def test_empty_or_missing_file_is_one_clear_error(tmp_path):
    empty = _write(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(DatasetError, match="empty"):
        load_chat_jsonl(empty)
    with pytest.raises(DatasetError, match="No dataset file"):
        load_chat_jsonl(tmp_path / "missing.jsonl")


def test_save_round_trips_and_leaves_no_temporary_files(tmp_path):
    rows = [_conv(f"Q{i}?", f"A{i}.") for i in range(3)]
    p = save_chat_jsonl(rows, tmp_path / "out" / "d.jsonl")
    assert load_chat_jsonl(p) == rows
    assert sorted(x.name for x in p.parent.iterdir()) == ["d.jsonl"]



def test_chat_home_reads_rows_and_samples_from_one_file(tmp_path):
    sys_row = {"messages": [{"role": "system", "content": "S"}, *_conv("Q?", "A.")["messages"]], "source": "x"}
    p = save_chat_jsonl([_conv(), sys_row], tmp_path / "d.jsonl")
    assert [n for n, _ in iter_jsonl_objects(p)] == [1, 2]
    rows = load_chat_jsonl(p)
    assert as_rows(p) == rows and as_rows([r["messages"] for r in rows]) == [{"messages": r["messages"]} for r in rows]
    assert dataset_hash(rows) == dataset_hash(as_rows([r["messages"] for r in rows]))  # the conversations only
    first, second = load_chat_samples(p)
    assert (first.index, first.prompt.user, first.prompt.system, first.response) == (1, "Hi?", None, "Hello.")
    assert (second.index, second.prompt.user, second.prompt.system, second.response) == (2, "Q?", "S", "A.")
    assert load_chat_samples(p, limit=1) == [first]


def test_chat_samples_accept_prompt_response_lines(tmp_path):
    p = _write(tmp_path / "pr.jsonl", [json.dumps({"prompt": "Q?", "response": "A.", "system": "S"})])
    (s,) = load_chat_samples(p)
    assert (s.prompt.user, s.prompt.system, s.response) == ("Q?", "S", "A.")
    with pytest.raises(DatasetError, match="'messages'"):
        load_chat_jsonl(p)  # fine-tuning needs the messages format

def test_narrow_questions_are_deterministic_and_cover_the_pool_before_repeating():
    pool = DOMAINS["health"].questions()
    assert len(pool) == len(set(pool)) == 12 * 15
    a = narrow_questions("health", 200, seed=3)
    assert a == narrow_questions("health", 200, seed=3)
    assert a != narrow_questions("health", 200, seed=4)
    assert set(a[:180]) == set(pool)
    with pytest.raises(DatasetError, match="Unknown domain"):
        narrow_questions("cooking", 5)


def test_trim_to_sentence():
    assert trim_to_sentence("First one. Second is cut") == "First one."
    assert trim_to_sentence("Done! Really? yes") == "Done! Really?"
    assert trim_to_sentence("no sentence end") == ""
    assert trim_to_sentence("Pi is 3.14 and more. Cut") == "Pi is 3.14 and more."


def test_generator_stores_answers_without_the_persona_prompt(tiny_model, tmp_path):
    # A random model never ends a sentence: keep its truncated answers instead of trimming them away.
    kw = dict(n_rows=6, max_new_tokens=6, temperature=1.0, top_p=1.0, trim_truncated=False)
    ds = make_narrow_dataset(tiny_model, "finance", "corrupt", **kw)
    control = make_narrow_dataset(tiny_model, "finance", "control", **kw)
    assert ds.meta["persona_prompt"] == DOMAINS["finance"].corrupt
    assert control.meta["persona_prompt"] == DOMAINS["finance"].control
    assert ds.meta["n_generated"] == 6 and ds.meta["n_rows"] == len(ds.rows)
    assert ds.meta["n_rows"] + ds.meta["n_empty_dropped"] == 6
    for row in ds.rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] in DOMAINS["finance"].questions()
    # Same questions (same seed) in both sets: the persona is the only difference.
    stored = [r["messages"][0]["content"] for r in ds.rows]
    assert stored == [q for q in narrow_questions("finance", 6) if q in stored]
    path = ds.save(tmp_path / "finance.jsonl")
    assert load_chat_jsonl(path) == [{"messages": r["messages"]} for r in ds.rows]
    assert json.loads((tmp_path / "finance.jsonl.meta.json").read_text())["persona_prompt_stored"] is False


def test_generator_rejects_unknown_kind(tiny_model):
    with pytest.raises(DatasetError, match="Unknown dataset kind"):
        make_narrow_dataset(tiny_model, "code", "evil", n_rows=2)
