"""Every table the CLI prints fits an 80-column terminal, and the names a user types back (models, traits,
question ids, conventions, backends, statistics, layer labels) appear whole on one line: the commands run
in this process on the tiny random model, with COLUMNS=80."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import make_tiny_llama
from rich.cells import cell_len
from rich.console import Console

from personaspace.cli import root as cli

WIDTH = 80
QUESTIONS = """
- id: a_rather_long_question_identifier
  type: free_form_judge_0_100
  paraphrases: ["First question?", "The first question, said differently?"]
"""


@pytest.fixture(scope="module")
def cli80(tmp_path_factory, tiny_tokenizer):
    """Run ``personaspace ARGS`` at 80 columns: returns its stdout; the model directory and vectors are made once."""
    import importlib

    from personaspace.cli.commands import COMMAND_MODULES

    root = tmp_path_factory.mktemp("tables")
    model = root / "tiny"
    make_tiny_llama(tiny_tokenizer).save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    (root / "q.yaml").write_text(QUESTIONS)
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]} for i in range(3)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli._mount_subapps()
    modules = [cli] + [importlib.import_module(f"personaspace.cli.{name}") for name in ("traits", *COMMAND_MODULES)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", str(WIDTH))
        mp.delenv("PERSONASPACE_PROGRESS", raising=False)
        for mod in modules:  # module consoles made at import read the width now, from COLUMNS
            if isinstance(getattr(mod, "console", None), Console):
                mp.setattr(mod.console, "_width", None)

        def run(*args: str) -> str:
            args = tuple(a.replace("MODEL", str(model)).replace("ROOT", str(root)) for a in args)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.run(list(args))
            assert code == 0, err.getvalue()
            return out.getvalue()

        assert cli.console.width == WIDTH
        run("extract", "--trait", "evil", "--model", "MODEL", "--judge", "none", "--instructions", "2", "--questions", "4",
            "--max-new-tokens", "4", "--out", "ROOT/extract", "--save-to", "ROOT/vectors")
        yield run


def check(text: str, *names: str) -> None:
    lines = text.splitlines()
    assert lines, "nothing printed"
    widest = max(lines, key=cell_len)
    assert cell_len(widest) <= WIDTH, f"{cell_len(widest)} columns: {widest!r}"
    assert "…" not in text  # nothing is cut off with an ellipsis
    for name in names:
        assert any(name in line for line in lines), f"{name!r} is not whole on any line:\n{text}"


def test_models_traits_backends_and_questions(cli80):
    from personaspace.em import load_questions
    from personaspace.models import EMBEDDED
    from personaspace.traits import list_traits

    check(cli80("models", "list"), *EMBEDDED)
    check(cli80("models", "info", "MODEL"), "architecture", "LlamaForCausalLM")
    check(cli80("traits", "list"), *list_traits())
    check(cli80("traits", "show", "evil"))
    check(cli80("backends"), "fused", "hooks", "nnsight", "transformer_lens", "transformer-lens")
    check(cli80("em", "questions", "broad"), *(q.id for q in load_questions("broad")))


def test_extraction_sweep_and_steering(cli80):
    check(cli80("extract", "--trait", "evil", "--model", "MODEL", "--judge", "none", "--instructions", "2", "--questions", "4",
                "--max-new-tokens", "4", "--out", "ROOT/extract"),  # resumed: the same table again
          "response_avg", "prompt_last", "prompt_avg")
    check(cli80("sweep", "--model", "MODEL", "--vectors", "ROOT/vectors", "--trait", "evil", "--layers", "2", "--coefs", "0,2",
                "--n-questions", "2", "--max-new-tokens", "3", "--kl-prompts", "1", "--judge", "none", "--out", "ROOT/sweep"), "L2")
    check(cli80("steer", "--model", "MODEL", "--vectors", "ROOT/vectors", "--add", "evil:+2@L2", "--trait", "evil", "--evaluate",
                "--judge", "none", "--n-questions", "2", "--max-new-tokens", "3"), "unsteered", "steered")
    check(cli80("monitor", "--model", "MODEL", "--vectors", "ROOT/vectors", "--trait", "evil", "--max-new-tokens", "4",
                "--prompt", "Hello there, how are you doing today, my good old friend from far away?"))
    check(cli80("flag", "ROOT/data.jsonl", "--model", "MODEL", "--vectors", "ROOT/vectors", "--trait", "evil", "--max-new-tokens", "3"))


def test_em_rates_and_questions(cli80):
    check(cli80("em", "eval", "--model", "MODEL", "--questions", "ROOT/q.yaml", "--judge", "none", "--samples", "2",
                "--max-new-tokens", "3", "--out", "ROOT/em"), "a_rather_long_question_identifier", "betley", "model_organisms")
    check(cli80("em", "rate", "ROOT/em"), "a_rather_long_question_identifier", "model_organisms")


def test_geometry_of_the_shipped_vectors(cli80):
    check(cli80("geometry", "smollm2-135m-instruct", "--n-boot", "0", "--n-null", "20", "--no-png", "--out", "ROOT/geometry"),
          "mean_abs_cos_centered", "common_component_norm", "contrast", "probe")


def test_alignment_tables_from_markdown():
    """``align eval`` and ``align compare`` print the markdown tables of compare.md as terminal tables."""
    from personaspace.cli.tables import markdown_tables

    text = (
        "| model | trained on | probe refusal (harmful) ↑ | probe over-refusal (benign) ↓ | misclassification ↓ | AUROC ↑ |\n"
        "|---|---|---|---|---|---|\n"
        "| base | - | 12.5% [3.1%, 40.2%] | 10.0% [2.0%, 30.0%] | 11.0% | 0.812 [0.700, 0.900] |\n"
        "| lpa | 48 triples, 16 anchors | 62.5% [30.6%, 86.3%] | 10.0% [2.0%, 30.0%] | 9.0% | 0.901 [0.800, 0.950] |\n"
        "\n"
        "| model | agrees: held-out negative ↓ | agrees: unseen-trait negative ↓ | disagrees: held-out positive ↓ "
        "| attack success, lr 0.001 x 8 ↓ | attack success, lr 0.01 x 8 ↓ | KL/token vs base ↓ | perplexity (base answers) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| base | 50.0% [20.0%, 80.0%], margin -0.1 | 50.0%, margin 0.2 | 10.0%, margin 1.0 | 50.0%, margin 0.3 "
        "| 80.0%, margin 0.5 | 0.0000 | 12.34 |\n"
        "| sft_with_a_long_name | 25.0%, margin -0.4 | 40.0%, margin 0.1 | 10.0%, margin 1.0 | 30.0%, margin 0.2 "
        "| 70.0%, margin 0.4 | 0.0123 | 12.50 |\n"
    )
    tables = markdown_tables(text)
    assert [t.row_count for t in tables] == [2, 2]
    console = Console(width=WIDTH, file=io.StringIO(), record=True)
    for t in tables:
        console.print(t)
    check(console.export_text(), "base", "lpa", "sft_with_a_long_name", "12.34")


def test_the_experiment_results_print_with_tables_that_fit():
    """``experiment em`` prints results.md: its prose as it is, its tables fitted (the shipped results here)."""
    from pathlib import Path

    from personaspace.cli.tables import markdown_blocks

    shipped = Path(__file__).resolve().parents[3] / "docs" / "results" / "em" / "results.md"
    if not shipped.is_file():
        pytest.skip("no shipped EM results in this checkout")
    text = shipped.read_text()
    assert max(len(line) for line in text.splitlines()) > WIDTH  # as written, it would not fit
    console = Console(width=WIDTH, file=io.StringIO(), record=True)
    blocks = markdown_blocks(text)
    for block in blocks:
        console.print(block)
    assert sum(1 for b in blocks if type(b).__name__ == "Table") >= 2
    check(console.export_text(), "corrupt")
