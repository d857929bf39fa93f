"""The one progress home: bars in a terminal (a real pseudo-terminal), tqdm in a real Jupyter kernel,
nothing when piped; nesting; the old callback form; the methods wired to it draw their stages and compute
the same results with and without bars; library noise silenced while a model loads."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from rich.console import Console

from personaspace._util import progress as P
from personaspace._util.progress import Progress, choose_mode, progress_scope, quiet_loading, track
from personaspace.judges import Score

_SCRIPT = """
from personaspace._util.progress import progress_scope
with progress_scope(None) as bars:
    for _ in bars.track(range(3), "generate"):
        pass
    bars.update("judge", 5, 10, note="loss 0.25")
print("answer on stdout")
"""


def _run(env_extra: dict[str, str], *, terminal: bool) -> tuple[str, str]:
    """Run _SCRIPT in a fresh python with stderr on a pseudo-terminal (or a pipe); return (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in (P.ENV, P.DEBUG_ENV)}
    env.update(env_extra)
    if not terminal:
        done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=60)
        return done.stdout, done.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    out, _ = proc.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(master)
    return out.decode(), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_bars_on_stderr_and_stdout_stays_clean():
    out, err = _run({}, terminal=True)
    assert out == "answer on stdout\n"
    assert "generate" in err and "3/3" in err
    assert "judge" in err and "5/10" in err and "loss 0.25" in err


def test_a_pipe_gets_nothing_and_the_variable_forces_either_way():
    out, err = _run({}, terminal=False)
    assert (out, err) == ("answer on stdout\n", "")
    out, err = _run({P.ENV: "0"}, terminal=True)  # off in a terminal
    assert out == "answer on stdout\n" and "generate" not in err
    out, err = _run({P.ENV: "1"}, terminal=False)  # on in a pipe: the final state, once
    assert out == "answer on stdout\n" and "generate" in err and "3/3" in err


def test_argument_wins_over_variable_wins_over_detection(monkeypatch):
    monkeypatch.delenv(P.ENV, raising=False)
    assert choose_mode() is None  # pytest's stderr is not a terminal
    assert choose_mode(True) == "rich"
    assert choose_mode(console=Console(file=io.StringIO(), force_terminal=True)) == "rich"
    monkeypatch.setenv(P.ENV, "1")
    assert choose_mode() == "rich" and choose_mode(False) is None
    monkeypatch.setenv(P.ENV, "off")
    assert choose_mode() is None and choose_mode(True) == "rich"
    monkeypatch.setenv(P.ENV, "maybe")  # not a recognised value: detection decides
    assert choose_mode() is None


def test_jupyter_gets_tqdm(tmp_path):
    """A real IPython kernel: the same code draws tqdm.auto bars there (text bars without ipywidgets)."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    cell = (
        "from personaspace._util.progress import Progress\n"
        "with Progress() as bars:\n"
        "    bars.update('generate', 2, 4)\n"
        "    bars.update('generate', 4, 4, note='done')\n"
        "print(bars.mode)\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    env = {k: os.environ.get(k) for k in (P.ENV, "PYTHONPATH")}
    os.environ.pop(P.ENV, None)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env["PYTHONPATH"]) if p)
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = nb.cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    widgets = [o for o in outputs if o.get("output_type") == "display_data"]
    assert "notebook" in text
    assert widgets or ("generate" in text and "4/4" in text)


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120, color_system=None), buf


def test_a_nested_scope_draws_in_the_open_display_and_removes_its_bars():
    console, buf = _console()
    with Progress(console=console) as outer:
        outer.update("experiment", 1, 3)
        with progress_scope(None) as inner:
            assert inner is outer
            inner.update("generate", 2, 2)
            assert outer.stages == ["experiment", "generate"]
        assert outer.stages == ["experiment"]
        assert list(track([1, 2], "cells")) == [1, 2]  # a loop of a called function: its bar comes and goes
        assert outer.stages == ["experiment"]
        with progress_scope(True) as forced:  # asked for bars inside bars: the same display (one live at a time)
            assert forced is outer
    assert "generate" in buf.getvalue() and "experiment" in buf.getvalue()


def test_the_callback_form_gets_no_display_and_off_is_off():
    with progress_scope(lambda *a: None) as bars:
        assert not bars.enabled
        with progress_scope(None) as inner:  # inside it, called functions stay quiet too
            assert inner is bars
    lines: list[str] = []
    with Progress(False, echo=lines.append) as off:
        off.update("x", 1, 2)
        off.log("resuming")
    assert not off.enabled and lines == ["resuming"]


def test_quiet_loading_is_scoped_and_debug_keeps_everything(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv(P.DEBUG_ENV, raising=False)
    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_loading():
            assert not hf_logging.is_progress_bar_enabled()
            warnings.warn("old argument", FutureWarning)
        warnings.warn("outside", FutureWarning)
        monkeypatch.setenv(P.DEBUG_ENV, "1")
        with quiet_loading():
            warnings.warn("shown when debugging", FutureWarning)
    assert [str(w.message) for w in seen] == ["outside", "shown when debugging"]
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_loading_a_model_prints_no_transformers_bars(tiny_tokenizer, tmp_path, capfd, monkeypatch, request):
    from conftest import make_tiny_llama
    from transformers.utils import logging as hf_logging

    from personaspace.models.loader import load_pretrained

    make_tiny_llama(tiny_tokenizer, layers=1, hidden=16).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    monkeypatch.delenv(P.DEBUG_ENV, raising=False)
    if not hf_logging.is_progress_bar_enabled():  # transformers' default; the CLI turns it off for its process
        hf_logging.enable_progress_bar()
        request.addfinalizer(hf_logging.disable_progress_bar)
    capfd.readouterr()
    load_pretrained(str(tmp_path / "m"), device="cpu")
    quiet = capfd.readouterr().err
    monkeypatch.setenv(P.DEBUG_ENV, "1")
    load_pretrained(str(tmp_path / "m"), device="cpu")
    loud = capfd.readouterr().err
    assert "Loading weights" in loud  # the bar transformers draws; PERSONASPACE_DEBUG=1 shows it
    assert "Loading weights" not in quiet


# ---- the methods wired to it ------------------------------------------------------------------


class HalfJudge:
    identity = "test:half"

    def score(self, items):
        return [Score(80.0 if it.kind != "trait" or len(it.answer) % 2 else 20.0, self.identity) for it in items]


SMALL = dict(n_instructions=2, n_questions=4, max_new_tokens=4, batch_size=4, cv_folds=2)


def test_extract_draws_its_stages_and_bars_change_nothing(tiny_model, tmp_path, capfd, monkeypatch):
    from personaspace.extraction.pipeline import extract

    monkeypatch.delenv(P.ENV, raising=False)
    console, buf = _console()
    shown = extract("evil", tiny_model, judge=HalfJudge(), out=tmp_path / "a", progress=Progress(console=console), **SMALL)
    drawn = buf.getvalue()
    assert re.search(r"generate .* 4/4", drawn) and re.search(r"judge .* 16/16", drawn)  # 16 rows in batches of 4
    capfd.readouterr()
    quiet = extract("evil", tiny_model, judge=HalfJudge(), out=tmp_path / "b", **SMALL)  # default, not a terminal
    assert "generate" not in capfd.readouterr().err
    for position, vec in shown.vectors.items():
        assert torch.equal(vec.data, quiet.vectors[position].data)
    assert shown.summary["separation"] == quiet.summary["separation"]


def test_sweep_finetune_align_and_em_draw_their_stages(tiny_model, tmp_path):
    from personaspace.align.lat import Anchor, Triple
    from personaspace.align.training import TrainConfig, train
    from personaspace.em.evaluate import evaluate_em
    from personaspace.em.questions import parse_questions
    from personaspace.finetuning.train import finetune
    from personaspace.steering.search import SweepConfig, sweep
    from personaspace.vectors.store import PersonaVector, VectorMeta

    console, buf = _console()
    vec = PersonaVector(torch.randn(tiny_model.n_layers, tiny_model.d_model, generator=torch.Generator().manual_seed(0)),
                        VectorMeta(trait="evil", model=tiny_model.name))
    cfg = SweepConfig(trait="evil", layers="2", coefs=(0.0, 2.0), n_questions=2, max_new_tokens=3, kl_prompts=1, kl_tokens=2,
                      control=False)
    with Progress(console=console) as bars:
        sweep(tiny_model, "evil", vec, cfg, judge=HalfJudge(), progress=bars)
        assert re.search(r"cells .* 2/2", buf.getvalue())

        rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]} for i in range(4)]
        losses: list[float] = []
        finetune(tiny_model, rows, batch_size=2, max_steps=3, eval_rows=2, max_length=32, save_merged=False,
                 progress=lambda step, total, loss: losses.append(loss))  # the old callback form still works
        res = finetune(tiny_model, rows, batch_size=2, max_steps=3, eval_rows=2, max_length=32, save_merged=False, progress=bars)
        assert res.summary["losses"] == losses  # bars or callback: the same training
        assert re.search(r"steps .* 3/3 .* loss \d", buf.getvalue())

        triples = [Triple(f"Statement {i}?", "I disagree.", "I agree.") for i in range(2)]
        train(tiny_model, triples, [Anchor("Hello?", "Hi.")],
              TrainConfig(outer_steps=2, batch_size=2, anchor_batch_size=1, pgd_steps=1, model_steps=1, lora_r=2), progress=bars)
        assert re.search(r"steps .* 2/2 .* towards", buf.getvalue())

        qs = parse_questions('- id: q\n  type: free_form_judge_0_100\n  paraphrases: ["One?", "Two?"]\n'
                             '  judge_prompts: {aligned: "{question} {answer}", coherent: "{question} {answer}"}\n')
        evaluate_em(tiny_model, qs, "none", samples_per_paraphrase=2, max_new_tokens=3, progress=bars)
    assert re.search(r"sample .* 4/4", buf.getvalue()) and re.search(r"judge .* 4/4", buf.getvalue())
