"""Trait schema, validation messages, the built-in library, saving, generation and the CLI."""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml

from personaspace.errors import TraitFileError, UnknownTraitError
from personaspace.traits import (
    InstructionPair,
    Trait,
    generate_trait,
    list_traits,
    load_trait,
    save_trait,
    validate_trait_dict,
)
from personaspace.traits.generate import extract_yaml
from personaspace.traits.library import LIBRARY_DIR, load_trait_file
from personaspace.traits.schema import parse_trait_yaml, trait_to_yaml

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
SRC = "t.yaml"


def valid_data(name: str = "patience") -> dict:
    """A small but complete trait in the file shape, written for these tests."""
    return {
        "name": name,
        "description": "The high pole waits calmly. It does not rush others.",
        "family": "other",
        "valence": "positive",
        "poles": {"high": "patient", "low": "impatient"},
        "instructions": [
            {"pos": f"You are patient, variant {i}.", "neg": f"You are impatient, variant {i}."}
            for i in range(5)
        ],
        "questions": {
            "extraction": [f"Extraction question number {i}?" for i in range(20)],
            "evaluation": [f"Evaluation question number {i}?" for i in range(20)],
        },
        "rubric": "Rate patience.\nQ: {question}\nA: {answer}\nReply 0-100 or REFUSAL.",
        "statements": {
            "high": [f"I wait calmly in situation {i}." for i in range(10)],
            "low": [f"I hate waiting in situation {i}." for i in range(10)],
        },
    }


def problems_of(data: object, **kwargs) -> str:
    with pytest.raises(TraitFileError) as info:
        validate_trait_dict(data, SRC, **kwargs)
    return info.value.message


# ---------------------------------------------------------------- the built-in library


def test_library_holds_the_big_five():
    names = list_traits()
    assert names == sorted(names)
    assert set(BIG_FIVE) <= set(names)


@pytest.mark.parametrize("name", list_traits())
def test_every_builtin_trait_validates(name):
    trait = load_trait(name)
    assert trait.name == name
    assert Path(trait.source) == LIBRARY_DIR / f"{name}.yaml"
    assert len(trait.instructions) == 5
    assert len(trait.extraction_questions) == len(trait.evaluation_questions) == 20
    assert not set(trait.extraction_questions) & set(trait.evaluation_questions)
    assert len(trait.statements_high) >= 10 and len(trait.statements_low) >= 10
    prompt = trait.judge_prompt("How are you?", "Fine.")
    assert "How are you?" in prompt and "Fine." in prompt
    assert "{question}" not in prompt and "{answer}" not in prompt


@pytest.mark.parametrize("name", BIG_FIVE)
def test_big_five_metadata(name):
    trait = load_trait(name)
    assert trait.family == "big_five"
    assert trait.valence == ("negative" if name == "neuroticism" else "positive")
    assert len(trait.statements_high) >= 12 and len(trait.statements_low) >= 12
    for pair in trait.instructions:
        assert pair.pos.startswith("You ") and pair.neg.startswith("You ")
        assert len(pair.pos) < 160 and len(pair.neg) < 160  # short enough for a tiny model


def test_unknown_trait_suggests_the_closest_name():
    with pytest.raises(UnknownTraitError) as info:
        load_trait("opennes")
    message = info.value.message
    assert "unknown trait 'opennes'" in message
    assert "Did you mean 'openness'?" in message
    assert "conscientiousness" in message and "neuroticism" in message
    assert info.value.pointer == "personaspace explain unknown-trait"
    assert info.value.doc_path.endswith("unknown-trait.md")


def test_unknown_trait_without_close_match_still_lists_names():
    with pytest.raises(UnknownTraitError) as info:
        load_trait("zzzzqqq")
    assert "Did you mean" not in info.value.message
    assert "openness" in info.value.message


def test_missing_file_is_a_trait_file_error(tmp_path):
    with pytest.raises(TraitFileError, match="no such file"):
        load_trait(tmp_path / "absent.yaml")
    with pytest.raises(TraitFileError, match="no such file"):
        load_trait(str(tmp_path / "absent.yaml"))


# ---------------------------------------------------------------- validation messages


def test_valid_data_builds_a_trait():
    trait = validate_trait_dict(valid_data(), SRC)
    assert trait.pole_high == "patient"
    assert trait.instructions[0] == InstructionPair("You are patient, variant 0.", "You are impatient, variant 0.")
    assert trait.source == SRC


def test_question_count_message():
    data = valid_data()
    data["questions"]["extraction"] = data["questions"]["extraction"][:17]
    assert problems_of(data) == (
        "t.yaml: field 'questions.extraction': expected exactly 20 questions, got 17"
    )


def test_every_problem_is_reported_at_once():
    data = valid_data()
    data["valence"] = "good"
    data["family"] = "big5"
    data["statements"]["low"] = data["statements"]["low"][:3]
    lines = problems_of(data).splitlines()
    assert lines == [
        "t.yaml: field 'family': expected one of big_five, dark_triad, llm, other, got 'big5'",
        "t.yaml: field 'valence': expected one of positive, negative, neutral, got 'good'",
        "t.yaml: field 'statements.low': expected at least 10 statements, got 3",
    ]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.pop("rubric"), "t.yaml: field 'rubric': missing"),
        (lambda d: d.update(rubirc="x"), "t.yaml: unknown field 'rubirc'; did you mean 'rubric'?"),
        (lambda d: d.update(name="Patience"), "t.yaml: field 'name': expected a lowercase identifier"),
        (lambda d: d.update(name=""), "t.yaml: field 'name': expected a non-empty string, got an empty one"),
        (lambda d: d.update(description=3), "t.yaml: field 'description': expected a non-empty string, got int"),
        (lambda d: d.update(poles=["a", "b"]), "t.yaml: field 'poles': expected a mapping with keys high, low, got list"),
        (lambda d: d["poles"].pop("low"), "t.yaml: field 'poles.low': missing"),
        (lambda d: d["poles"].update(mid="x"), "t.yaml: field 'poles': unknown key 'mid' (allowed: high, low)"),
        (lambda d: d["poles"].update(low="Patient"), "t.yaml: field 'poles': high and low are the same label 'patient'"),
        (lambda d: d["instructions"].pop(), "t.yaml: field 'instructions': expected exactly 5 instruction pairs, got 4"),
        (lambda d: d["instructions"][2].pop("neg"), "t.yaml: field 'instructions[2].neg': missing"),
        (lambda d: d["instructions"][1].update(pos="  "), "t.yaml: field 'instructions[1].pos': expected a non-empty string, got an empty one"),
        (
            lambda d: d["instructions"][3].update(neg="You are patient, variant 0."),
            "t.yaml: field 'instructions[3].neg': duplicate of instructions[0].pos",
        ),
        (lambda d: d.update(instructions="be nice"), "t.yaml: field 'instructions': expected a list of {pos, neg} pairs, got str"),
        (
            lambda d: d["questions"]["evaluation"].__setitem__(4, "extraction QUESTION number 7?"),
            "t.yaml: field 'questions.evaluation[4]': also appears in questions.extraction[7]",
        ),
        (
            lambda d: d["questions"]["extraction"].__setitem__(5, "Extraction question number 2?"),
            "t.yaml: field 'questions.extraction[5]': duplicate of item 2",
        ),
        (lambda d: d["questions"]["evaluation"].__setitem__(0, True), "t.yaml: field 'questions.evaluation[0]': expected a non-empty string, got bool (quote it in YAML)"),
        (lambda d: d["questions"].pop("evaluation"), "t.yaml: field 'questions.evaluation': missing"),
        (lambda d: d["questions"].update(extraction="one?"), "t.yaml: field 'questions.extraction': expected a list of questions, got str"),
        (lambda d: d.update(rubric="Rate {question} only. REFUSAL"), "t.yaml: field 'rubric': must contain the slot {answer}"),
        (lambda d: d.update(rubric="Rate {answer} only. REFUSAL"), "t.yaml: field 'rubric': must contain the slot {question}"),
        (lambda d: d.update(rubric="{question} {answer} 0-100"), "t.yaml: field 'rubric': must tell the judge to answer REFUSAL"),
        (lambda d: d["statements"]["high"].append(None), "t.yaml: field 'statements.high[10]': expected a non-empty string, got null"),
        (
            lambda d: d["statements"]["low"].__setitem__(9, "I wait calmly in situation 1."),
            "t.yaml: field 'statements.low[9]': also appears in statements.high[1]",
        ),
        (lambda d: d["statements"].update(high=[]), "t.yaml: field 'statements.high': expected at least 10 statements, got 0"),
    ],
)
def test_each_field_error(mutate, expected):
    data = valid_data()
    mutate(data)
    assert expected in problems_of(data)


def test_top_level_must_be_a_mapping():
    assert problems_of(None) == "t.yaml: the file is empty; expected a mapping of trait fields"
    assert problems_of([1, 2]) == "t.yaml: expected a mapping of trait fields at the top, got list"


def test_name_must_match_expected_stem():
    assert problems_of(valid_data("calm"), expected_name="patience") == (
        "t.yaml: field 'name': is 'calm' but the file is named 'patience'.yaml"
    )


def test_library_files_must_be_named_after_their_stem(tmp_path):
    path = tmp_path / "patience.yaml"
    path.write_text(yaml.safe_dump(valid_data("calm")), encoding="utf-8")
    assert load_trait(path).name == "calm"  # user files may be named freely
    with pytest.raises(TraitFileError, match="is 'calm' but the file is named 'patience'.yaml"):
        load_trait_file(path, expected_name="patience")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndescription: fine\npoles:\n  high: [unclosed\n  low: x\n", encoding="utf-8")
    with pytest.raises(TraitFileError) as info:
        load_trait(path)
    message = info.value.message
    assert message.startswith(f"{path}: line ")
    assert "invalid YAML" in message
    line = int(message.split("line ")[1].split(",")[0])
    assert 4 <= line <= 6


def test_tab_indentation_reports_its_line():
    with pytest.raises(TraitFileError) as info:
        parse_trait_yaml("name: x\npoles:\n\thigh: a\n", "tabs.yaml")
    assert info.value.message.startswith("tabs.yaml: line 3, column 1: invalid YAML")


def test_duplicate_keys_are_refused():
    text = yaml.safe_dump(valid_data(), sort_keys=False) + "rubric: again {question} {answer} REFUSAL\n"
    with pytest.raises(TraitFileError) as info:
        parse_trait_yaml(text, "dup.yaml")
    assert info.value.message.startswith("dup.yaml: line ")
    assert "key 'rubric' appears twice" in info.value.message


def test_validation_error_points_at_its_doc():
    with pytest.raises(TraitFileError) as info:
        validate_trait_dict({}, SRC)
    assert info.value.pointer == "personaspace explain trait-file"
    assert info.value.doc_path.endswith("trait-file.md")
    assert "t.yaml: field 'name': missing" in str(info.value)


# ---------------------------------------------------------------- the Trait object


def test_judge_prompt_is_safe_with_braces():
    trait = validate_trait_dict(valid_data(), SRC)
    prompt = trait.judge_prompt("What is {answer}?", "Use {x} and {question} literally {0}.")
    assert prompt == (
        "Rate patience.\nQ: What is {answer}?\nA: Use {x} and {question} literally {0}.\n"
        "Reply 0-100 or REFUSAL."
    )


def test_trait_accepts_lists_and_stays_hashable():
    trait = validate_trait_dict(valid_data(), SRC)
    rebuilt = Trait(**{**trait.__dict__, "extraction_questions": list(trait.extraction_questions)})
    assert rebuilt.extraction_questions == trait.extraction_questions
    assert isinstance(rebuilt.extraction_questions, tuple)
    assert hash(rebuilt) == hash(trait) and rebuilt == trait


def test_to_dict_has_the_file_shape():
    data = valid_data()
    assert validate_trait_dict(copy.deepcopy(data), SRC).to_dict() == data


def test_content_hash_is_stable_and_content_sensitive(tmp_path):
    first = load_trait("openness")
    again = load_trait("openness")
    assert first.content_hash == again.content_hash
    assert len(first.content_hash) == 64
    # Formatting, key order and the path do not matter; content does.
    reordered = dict(reversed(list(first.to_dict().items())))
    copy_path = tmp_path / "elsewhere.yaml"
    copy_path.write_text(json.dumps(reordered, indent=4), encoding="utf-8")  # JSON is valid YAML
    assert load_trait(copy_path).content_hash == first.content_hash
    changed = first.to_dict()
    changed["statements"]["high"][0] += " Always."
    assert validate_trait_dict(changed, SRC).content_hash != first.content_hash
    # The documented recipe, and a pinned value so caches keyed on it survive refactoring.
    small = validate_trait_dict(valid_data(), SRC)
    canonical = json.dumps(valid_data(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert small.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert small.content_hash == "724ab9b3d8b1dd7586c9f97a99abb962d5faf9c5c6536175df5f6c95c72ad2e7"


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize("name", BIG_FIVE)
def test_round_trip_save_load(tmp_path, name):
    trait = load_trait(name)
    path = tmp_path / "sub" / f"{name}.yaml"
    save_trait(trait, path)
    loaded = load_trait(path)
    assert loaded == trait
    assert loaded.content_hash == trait.content_hash
    assert loaded.source == str(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"name: {name}\n")
    assert "rubric: |" in text and "description: >" in text


def test_save_refuses_an_invalid_trait_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "patience.yaml"
    good = validate_trait_dict(valid_data(), SRC)
    save_trait(good, path)
    before = path.read_bytes()
    bad = Trait(**{**good.__dict__, "evaluation_questions": good.evaluation_questions[:3]})
    with pytest.raises(TraitFileError, match="expected exactly 20 questions, got 3"):
        save_trait(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["patience.yaml"]


def test_trait_to_yaml_keeps_awkward_strings():
    data = valid_data()
    data["statements"]["high"][0] = 'I say: "wait", #1 - and {braces}.'
    data["questions"]["extraction"][0] = "no"
    data["rubric"] = "Line one:\n  {question}\n\n{answer}  \nREFUSAL"
    trait = validate_trait_dict(data, SRC)
    assert parse_trait_yaml(trait_to_yaml(trait), "again.yaml") == trait


# ---------------------------------------------------------------- generation


class RecordingClient:
    """Replays fixed replies in the ChatResult shape and keeps the conversations it was sent."""

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.calls: list[list[dict]] = []

    def chat(self, messages, *, temperature=0.0, max_tokens=512, logprobs=False, top_logprobs=0):
        self.calls.append(copy.deepcopy(messages))
        return type("Reply", (), {"text": self.replies.pop(0), "top_logprobs": None})()


def test_extract_yaml_strips_fences():
    assert extract_yaml("Here you go:\n```yaml\nname: x\n```\nEnjoy") == "name: x\n"
    assert extract_yaml("name: x\n") == "name: x\n"
    assert extract_yaml("```\nname: x\n") == "name: x\n"  # truncated reply without closing fence


def test_generate_retries_with_the_validation_error():
    good = yaml.safe_dump(valid_data("calm"), sort_keys=False)
    short = valid_data("calm")
    short["questions"]["evaluation"] = short["questions"]["evaluation"][:19]
    client = RecordingClient([yaml.safe_dump(short), "```yaml\n" + good + "```"])
    trait = generate_trait("calm and unhurried", name="patience", client=client)
    assert trait.name == "patience"  # the requested name is imposed
    assert len(client.calls) == 2
    retry = client.calls[1]
    assert retry[-2]["role"] == "assistant"
    assert "field 'questions.evaluation': expected exactly 20 questions, got 19" in retry[-1]["content"]


def test_generate_gives_up_after_max_attempts():
    client = RecordingClient(["not: [valid", "still: [not", "unused"])
    with pytest.raises(TraitFileError) as info:
        generate_trait("anything", client=client, max_attempts=2)
    assert len(client.calls) == 2
    assert "did not write a valid trait file in 2 attempt(s)" in info.value.message
    assert "invalid YAML" in info.value.message


def test_generate_rejects_bad_arguments():
    with pytest.raises(TraitFileError, match="non-empty"):
        generate_trait("   ", client=RecordingClient([]))
    with pytest.raises(TraitFileError, match="lowercase identifier"):
        generate_trait("x", name="Bad Name", client=RecordingClient([]))


class _ChatServer(http.server.ThreadingHTTPServer):
    def __init__(self, replies: list[str]):
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.replies = list(replies)
        self.requests: list[dict] = []


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    """Answers POST .../chat/completions in the OpenAI response format."""

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: _ChatServer = self.server  # type: ignore[assignment]
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        server.requests.append(body)
        text = server.replies.pop(0)
        payload = json.dumps(
            {
                "id": f"chatcmpl-{len(server.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "test-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    servers: list[_ChatServer] = []

    def start(replies: list[str]) -> _ChatServer:
        server = _ChatServer(replies)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _base_url(server: _ChatServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_generate_over_http_retries_with_the_error(chat_server):
    compat = pytest.importorskip("personaspace._util.http")
    good = yaml.safe_dump(valid_data("calm"), sort_keys=False)
    server = chat_server(["name: calm\nrubric: rate: {answer}\n", good])
    client = compat.OpenAICompatClient(
        base_url=_base_url(server), api_key="test-key", model="test-model", max_retries=0
    )
    with client:
        trait = generate_trait("calm and unhurried", client=client)
    assert trait == validate_trait_dict(valid_data("calm"), SRC)
    assert len(server.requests) == 2
    first, retry = server.requests
    assert first["model"] == "test-model"
    assert first["messages"][0]["role"] == "system" and "{question}" in first["messages"][0]["content"]
    assert retry["messages"][-2] == {"role": "assistant", "content": "name: calm\nrubric: rate: {answer}\n"}
    assert "<generated trait, attempt 1>: line 2" in retry["messages"][-1]["content"]
    assert "invalid YAML" in retry["messages"][-1]["content"]


def test_generate_builds_its_own_client_from_the_environment(chat_server, monkeypatch):
    pytest.importorskip("personaspace._util.http")
    server = chat_server([yaml.safe_dump(valid_data("calm"))])
    monkeypatch.setenv("PERSONASPACE_LLM_BASE_URL", _base_url(server))
    monkeypatch.setenv("PERSONASPACE_LLM_API_KEY", "test-key")
    monkeypatch.setenv("PERSONASPACE_LLM_MODEL", "env-model")
    assert generate_trait("calm and unhurried").name == "calm"
    assert [r["model"] for r in server.requests] == ["env-model"]


# ---------------------------------------------------------------- CLI


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def test_cli_list(runner):
    from personaspace.cli.traits import app

    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in BIG_FIVE:
        assert name in result.output
    assert "20 + 20" in result.output


def test_cli_show(runner):
    from personaspace.cli.traits import app

    result = runner.invoke(app, ["show", "agreeableness"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    trait = load_trait("agreeableness")
    assert " ".join(trait.instructions[0].pos.split()) in " ".join(result.output.split())  # rich wraps long lines
    assert trait.extraction_questions[0] in result.output
    assert f"high: {len(trait.statements_high)}" in result.output


def test_cli_show_unknown_raises_one_error(runner):
    from personaspace.cli.traits import app

    result = runner.invoke(app, ["show", "extroversion"])
    assert isinstance(result.exception, UnknownTraitError)
    assert "Did you mean 'extraversion'?" in result.exception.message


def test_cli_validate(runner, tmp_path):
    from personaspace.cli.traits import app

    good = tmp_path / "good.yaml"
    bad = tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(valid_data("good")), encoding="utf-8")
    data = valid_data("bad")
    data["questions"]["extraction"] = data["questions"]["extraction"][:17]
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    ok = runner.invoke(app, ["validate", str(good)])
    assert ok.exit_code == 0 and "ok" in ok.output
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert isinstance(result.exception, TraitFileError)
    assert result.exception.message == (
        f"{bad}: field 'questions.extraction': expected exactly 20 questions, got 17"
    )


def test_cli_new_writes_a_validated_file(runner, tmp_path, chat_server):
    pytest.importorskip("personaspace._util.http")
    from personaspace.cli.traits import app

    server = chat_server([yaml.safe_dump(valid_data("whatever"), sort_keys=False)])
    out = tmp_path / "patience.yaml"
    args = ["new", "calm and unhurried", "--name", "patience", "--out", str(out),
            "--base-url", _base_url(server), "--model", "test-model"]
    result = runner.invoke(app, args, env={"OPENAI_API_KEY": "test-key"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert load_trait(out) == validate_trait_dict(valid_data("patience"), SRC)
    again = runner.invoke(app, args, env={"OPENAI_API_KEY": "test-key"})
    assert isinstance(again.exception, TraitFileError)
    assert "already exists" in again.exception.message
    assert len(server.requests) == 1  # refused before calling the model
