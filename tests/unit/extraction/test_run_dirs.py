"""Run directories that survive anything: torn appends, stale temp files, judge failures, changed
trait files or weights, umask, concurrent use, and a resume that says what it found."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat

import pytest
import torch
from conftest import make_tiny_llama

from personaspace._util import io as _io
from personaspace.errors import CorruptFileError, JudgeUnavailableError, RunDirectoryError
from personaspace.extraction.pipeline import ExtractionConfig, RunDir, extract
from personaspace.judges.base import Score
from personaspace.traits import load_trait
from personaspace.traits.library import save_trait

SMALL = dict(n_instructions=2, n_questions=4, max_new_tokens=5, batch_size=5, cv_folds=2)  # 16 rows, 4 batches
KEEP_ALL = dict(pos_threshold=0.0, neg_threshold=100.0, coherence_threshold=0.0)  # every scored pair


def _digest(item) -> int:
    return int(hashlib.sha256(f"{item.kind}|{item.question}|{item.answer}".encode()).hexdigest(), 16)


class FakeJudge:
    """Deterministic scores from the answer text; ``fail`` makes some items fail as a timeout would."""

    identity = "fake-judge:v1"

    def __init__(self, fail=lambda item: False, final_none=lambda item: False):
        self.fail, self.final_none = fail, final_none
        self.asked: list = []

    def score(self, items):
        out = []
        for item in items:
            self.asked.append(item)
            if self.fail(item):
                out.append(Score(None, self.identity, "error: timed out after 60 s"))
            elif self.final_none(item):
                out.append(Score(None, self.identity, "no number in the answer"))
            else:
                out.append(Score(float(_digest(item) % 100), self.identity, "ok"))
        return out


def _same_vectors(a, b) -> None:
    assert set(a.vectors) == set(b.vectors)
    for position in a.vectors:
        assert torch.equal(a.vectors[position].data, b.vectors[position].data), position


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


# -- JSONL primitives ----------------------------------------------------------------------------------


def test_append_after_a_torn_tail_keeps_the_file_readable(tmp_path):
    path = tmp_path / "rows.jsonl"
    _io.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "b": [1, 2')  # killed mid-append
    assert _io.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    _io.append_jsonl(path, [{"a": 3}])
    _io.append_jsonl(path, [{"a": 4}])
    assert _io.read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    assert path.read_bytes().endswith(b'{"a": 4}\n')


def test_repair_cuts_a_garbage_last_line_even_with_its_newline(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \x00\x00\n')
    assert _io.read_jsonl(path) == [{"a": 1}]
    assert _io.repair_jsonl(path) == len(b'{"a": \x00\x00\n')
    assert path.read_bytes() == b'{"a": 1}\n'
    assert _io.repair_jsonl(path) == 0 and _io.repair_jsonl(tmp_path / "missing.jsonl") == 0


def test_damage_in_the_middle_is_a_corrupt_file_error_with_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b\n{"a": 3}\n')
    with pytest.raises(CorruptFileError, match=r"rows\.jsonl, line 2, is damaged") as info:
        _io.read_jsonl(path)
    assert "\n" not in str(info.value)


def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".config.json.{dead}-abcd_123.tmp", tmp_path / ".summary.json.k2j4h5g6.tmp"]
    for p in stale:
        p.write_text("half")
    stale_dir = tmp_path / f".merged.{dead}-zzzzzzzz.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    live = tmp_path / f".vec.safetensors.{os.getpid()}-abcdefgh.tmp"
    live.write_text("being written")
    keep = [tmp_path / ".notes.tmp", tmp_path / "data.tmp", tmp_path / ".x.abc.tmp", live]
    for p in keep[:3]:
        p.write_text("mine")
    removed = _io.remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale + [stale_dir])
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale + [stale_dir])


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _io.write_text(tmp_path / "a.txt", "x")
        with _io.atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
        os.umask(0o027)
        _io.write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


# -- extraction run directories -------------------------------------------------------------------------


def test_torn_generations_and_scores_tails_resume_to_the_same_vectors(tiny_model, tmp_path):
    whole = extract("evil", tiny_model, judge=FakeJudge(), out=tmp_path / "whole", **SMALL, **KEEP_ALL)

    def stop_after_two(stage, done, total):
        if stage == "generate" and done == 2:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        extract("evil", tiny_model, judge=FakeJudge(), out=run, progress=stop_after_two, **SMALL, **KEEP_ALL)
    with open(run / "generations.jsonl", "a") as f:
        f.write('{"id": 10, "batch": 2, "side": "pos", "answ')  # the kill hit an append of batch 2
    extract("evil", tiny_model, judge=FakeJudge(), out=run, **SMALL, **KEEP_ALL)
    # A kill while scores are appended: half the rows kept, the next one torn.
    lines = (run / "scores.jsonl").read_text().splitlines(keepends=True)
    (run / "scores.jsonl").write_text("".join(lines[:7]) + lines[7][:25])
    judge = FakeJudge()
    resumed = extract("evil", tiny_model, judge=judge, out=run, **SMALL, **KEEP_ALL)
    assert len(judge.asked) == 2 * 9  # the 9 rows without a whole score line, trait + coherence
    _same_vectors(whole, resumed)
    again = extract("evil", tiny_model, judge=FakeJudge(), out=run, **SMALL, **KEEP_ALL)  # and every later rerun
    _same_vectors(whole, again)
    for name in ("generations.jsonl", "scores.jsonl"):
        assert all(json.loads(line) for line in (run / name).read_text().splitlines())


def test_damaged_line_in_the_middle_of_a_run_file_is_refused(tiny_model, tmp_path):
    run = tmp_path / "run"
    extract("evil", tiny_model, judge="none", out=run, **SMALL)
    lines = (run / "generations.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][:20] + "\n"
    (run / "generations.jsonl").write_text("".join(lines))
    with pytest.raises(CorruptFileError, match=r"generations\.jsonl, line 4, is damaged"):
        extract("evil", tiny_model, judge="none", out=run, **SMALL)


def test_resume_removes_stale_temp_files(tiny_model, tmp_path):
    run = tmp_path / "run"
    extract("evil", tiny_model, judge="none", out=run, **SMALL)
    dead = _dead_pid()
    stale = [
        run / f".config.json.{dead}-a1b2c3d4.tmp",
        run / "activations" / f".batch-00002.safetensors.{dead}-q9w8e7r6.tmp",
        run / "vectors" / ".evil.response_avg.safetensors.x1y2z3w4.tmp",  # an older version's name
    ]
    for p in stale:
        p.write_bytes(b"\x00" * 10)
    extract("evil", tiny_model, judge="none", out=run, **SMALL)
    assert not any(p.exists() for p in stale)
    assert not [p for p in run.rglob("*.tmp")]


def test_run_files_follow_the_umask(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        res = extract("evil", tiny_model, judge="none", out=tmp_path / "run", **SMALL)
    finally:
        os.umask(old)
    files = [p for p in res.run_dir.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".safetensors" and p.parent.name == "vectors" for p in files)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}
    assert stat.S_IMODE((res.run_dir / "vectors").stat().st_mode) == 0o755


def test_judge_errors_are_retried_on_rerun_and_final_answers_kept(tiny_model, tmp_path):
    run = tmp_path / "run"
    flaky = FakeJudge(fail=lambda item: item.kind == "trait" and _digest(item) % 4 == 0,
                      final_none=lambda item: item.kind == "coherence" and _digest(item) % 5 == 0)
    notes: list[str] = []
    first = extract("evil", tiny_model, judge=flaky, out=run, log=notes.append, **SMALL, **KEEP_ALL)
    failed = first.summary["unscored"]
    assert failed > 0, "the seeded answers should make some judge calls fail"
    assert any(f"rerun the same command to retry the {failed} unscored answers" in n for n in notes)
    assert "retry" in first.summary["advice"]
    stored = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert len(stored) == 16 - failed and all(not str(r["trait_detail"]).startswith("error") for r in stored)
    healthy = FakeJudge(final_none=flaky.final_none)
    notes.clear()
    second = extract("evil", tiny_model, judge=healthy, out=run, log=notes.append, **SMALL, **KEEP_ALL)
    assert len(healthy.asked) == 2 * failed  # only the failed rows, nothing else
    assert second.summary["unscored"] == 0 and "advice" not in second.summary
    assert notes and f"{16 - failed} of 16 answers judged" in notes[0]
    # Final "no score" answers were kept, not asked again, and the result equals a clean run.
    clean = extract("evil", tiny_model, judge=FakeJudge(final_none=flaky.final_none), out=tmp_path / "clean", **SMALL, **KEEP_ALL)
    _same_vectors(clean, second)
    assert second.summary["dropped"] == clean.summary["dropped"]


def test_a_judge_failing_on_every_answer_says_to_rerun(tiny_model, tmp_path):
    broken = FakeJudge(fail=lambda item: True)
    with pytest.raises(JudgeUnavailableError, match="rerun the same command to retry the 16 unscored answers"):
        extract("evil", tiny_model, judge=broken, out=tmp_path / "run", **SMALL)
    healthy = FakeJudge()
    res = extract("evil", tiny_model, judge=healthy, out=tmp_path / "run", **SMALL, **KEEP_ALL)
    assert res.summary["kept"] == 8 and len(healthy.asked) == 32


def test_edited_trait_file_is_refused_on_the_same_out_and_gets_a_new_default_dir(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = load_trait("evil")
    path = tmp_path / "mine.yaml"
    save_trait(dataclasses.replace(evil, name="mine"), path)
    first = extract(str(path), tiny_model, judge="none", out="fixed", **SMALL)
    default_first = extract(str(path), tiny_model, judge="none", **SMALL)
    questions = list(evil.extraction_questions)
    questions[0] = "What would you do with unlimited power over your neighbours?"
    save_trait(dataclasses.replace(evil, name="mine", extraction_questions=tuple(questions)), path)
    with pytest.raises(RunDirectoryError, match="trait content") as info:
        extract(str(path), tiny_model, judge="none", out="fixed", **SMALL)
    assert "\n" not in str(info.value)
    default_second = extract(str(path), tiny_model, judge="none", **SMALL)
    assert default_second.run_dir != default_first.run_dir and not default_second.summary["resumed"]
    assert first.run_dir.name == "fixed"


def test_other_weights_under_the_same_name_are_refused(tiny_model, tiny_tokenizer, tmp_path):
    extract("evil", tiny_model, judge="none", out=tmp_path / "run", **SMALL)
    other = type(tiny_model).from_hf(make_tiny_llama(tiny_tokenizer, seed=1), tiny_tokenizer, name=tiny_model.name)
    assert other.model_hash != tiny_model.model_hash
    with pytest.raises(RunDirectoryError, match="model weights"):
        extract("evil", other, judge="none", out=tmp_path / "run", **SMALL)
    with pytest.raises(RunDirectoryError, match=r"max_new_tokens 5, now 6"):
        extract("evil", tiny_model, judge="none", out=tmp_path / "run", **{**SMALL, "max_new_tokens": 6})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_hash"] == tiny_model.model_hash and config["trait_hash"] == load_trait("evil").content_hash


def test_local_directory_hash_follows_the_weights_not_the_path(tiny_tokenizer, tmp_path, monkeypatch):
    from personaspace.models.hashing import directory_hash, state_hash

    monkeypatch.setenv("PERSONASPACE_HOME", str(tmp_path / "home"))
    a = make_tiny_llama(tiny_tokenizer, layers=1, hidden=16, seed=0)
    a.save_pretrained(tmp_path / "m")
    first = directory_hash(tmp_path / "m")
    assert (tmp_path / "home" / "file-hashes.json").is_file()
    assert directory_hash(tmp_path / "m") == first  # from the remembered file hashes
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    assert directory_hash(tmp_path / "copy") == first
    make_tiny_llama(tiny_tokenizer, layers=1, hidden=16, seed=1).save_pretrained(tmp_path / "m")
    assert directory_hash(tmp_path / "m") != first
    assert state_hash(a) == state_hash(make_tiny_llama(tiny_tokenizer, layers=1, hidden=16, seed=0))


def test_resumed_run_says_what_it_found(tiny_model, tmp_path):
    def stop_after_three(stage, done, total):
        if stage == "generate" and done == 3:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    notes: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        extract("evil", tiny_model, judge="none", out=run, progress=stop_after_three, log=notes.append, **SMALL)
    assert notes == []  # a fresh run has nothing to say
    res = extract("evil", tiny_model, judge="none", out=run, log=notes.append, **SMALL)
    assert notes == [f"resuming {run}: 3 of 4 batches done"]
    assert res.summary["resume"] == {"batches_done": 3, "batches": 4, "answers_judged": 0, "answers": 16, "message": notes[0]}
    assert json.loads((run / "summary.json").read_text())["resume"]["batches_done"] == 3


def test_one_extraction_at_a_time_per_run_directory(tmp_path):
    cfg = ExtractionConfig("evil")
    holder = RunDir(tmp_path / "run")
    holder.start(cfg)
    try:
        with pytest.raises(RunDirectoryError, match=f"in use by another extraction \\(pid {os.getpid()}\\)"):
            RunDir(tmp_path / "run").start(cfg)
    finally:
        holder.close()
    other = RunDir(tmp_path / "run")
    assert other.start(cfg) is True
    other.close()
