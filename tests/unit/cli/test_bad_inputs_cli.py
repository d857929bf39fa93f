"""Bad-input catalogue, command-line half: every case ends in its exit code and exactly one line on stderr.

Each case is ``(id, argv, exit code, page, message substring)``; ``page`` is the error page named by the
line's pointer (``(details: personaspace explain PAGE)``), or ``"usage"`` for a usage error (its line ends
``(see: personaspace ... --help)``). Each case also asserts: no traceback, and nothing written (no file,
no directory, not even a half-written one) in the working directory the command ran in.

The cases run in-process through :func:`personaspace.cli.root.run` (the console script's body), each in a fresh
directory holding the fixture files below. ``{V}`` stands for the shipped vector set of the embedded model.
The table of ids, inputs, exit codes and pages in ``docs/errors/index.md`` ("Bad-input catalogue") must
list every case here with the same exit code and page; ``python tests/unit/cli/test_bad_inputs_cli.py``
prints those rows.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO / "vectors" / "smollm2-135m-instruct"
INDEX = REPO / "personaspace" / "docs" / "errors" / "index.md"
V = "{V}"
U = "usage"

# Files each case finds in its working directory.
FIXTURES = {
    "ok.jsonl": '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n',
    "bad.jsonl": "not json\n",
    "empty.jsonl": "",
    "bad.yaml": "name: [unclosed\n",
    "partial.yaml": "name: calm\n",
    "afile": "a plain file, in the way of directories\n",
    "notamodel/config.json": "{}\n",
    "emptydir/.keep": "",
}

CASES: list[tuple[str, list[str], int, str, str]] = [
    # ---- usage errors: click's message, exit 2 -------------------------------------------------------------
    ("cli-misspelt-command", ["extrct"], 2, U, "No such command 'extrct'. Did you mean 'extract'?"),
    ("cli-no-command", [], 2, U, "missing command; choose one of: "),
    ("cli-debug-but-no-command", ["--debug"], 2, U, "missing command; choose one of: "),
    ("cli-models-no-subcommand", ["models"], 2, U, "missing command; choose one of: "),
    ("cli-traits-misspelt-subcommand", ["traits", "shwo"], 2, U, "Did you mean 'show'?"),
    ("cli-em-no-subcommand", ["em"], 2, U, "missing command; choose one of: "),
    ("cli-experiment-no-subcommand", ["experiment"], 2, U, "choose one of: em"),
    ("cli-finetune-no-subcommand", ["finetune"], 2, U, "missing command; choose one of: "),
    ("cli-align-no-subcommand", ["align"], 2, U, "missing command; choose one of: "),
    ("cli-extract-missing-trait", ["extract"], 2, U, "Missing option '--trait'"),
    ("cli-extract-float-for-int", ["extract", "--trait", "evil", "--max-new-tokens", "1.5"], 2, U, "Invalid value for '--max-new-tokens'"),
    ("cli-extract-unknown-option", ["extract", "--trait", "evil", "--bogus"], 2, U, "No such option: --bogus"),
    ("cli-steer-text-for-int", ["steer", "--max-new-tokens", "abc"], 2, U, "Invalid value for '--max-new-tokens'"),
    ("cli-monitor-float-layer", ["monitor", "--trait", "evil", "--layer", "1.5"], 2, U, "Invalid value for '--layer'"),
    ("cli-geometry-missing-argument", ["geometry"], 2, U, "Missing argument 'vectors'"),
    ("cli-geometry-unknown-flag", ["geometry", V, "--png-x"], 2, U, "No such option: --png-x"),
    ("cli-finetune-run-missing-data", ["finetune", "run"], 2, U, "Missing argument 'data'"),
    ("cli-finetune-shift-missing-finetuned", ["finetune", "shift"], 2, U, "Missing option '--finetuned'"),
    ("cli-align-lpa-missing-out", ["align", "lpa"], 2, U, "Missing option '--out'"),
    ("cli-sweep-missing-trait", ["sweep"], 2, U, "Missing option '--trait'"),
    ("cli-em-eval-text-for-float", ["em", "eval", "--temperature", "x"], 2, U, "Invalid value for '--temperature'"),
    ("cli-explain-extra-argument", ["explain", "a", "b"], 2, U, "unexpected extra argument"),
    ("cli-models-list-extra-argument", ["models", "list", "extra"], 2, U, "unexpected extra argument"),
    ("cli-traits-validate-no-paths", ["traits", "validate"], 2, U, "Missing argument 'paths"),
    # ---- extract -------------------------------------------------------------------------------------------------
    ("cli-extract-unknown-trait", ["extract", "--trait", "evill", "--judge", "none"], 2, "unknown-trait", "Did you mean 'evil'?"),
    ("cli-extract-missing-trait-file", ["extract", "--trait", "./missing.yaml"], 2, "trait-file", "missing.yaml: no such file"),
    ("cli-extract-broken-trait-yaml", ["extract", "--trait", "bad.yaml"], 2, "trait-file", "invalid YAML"),
    ("cli-extract-unknown-model", ["extract", "--trait", "evil", "--model", "no-such-model"], 2, "unknown-model", "Unknown model 'no-such-model'"),
    ("cli-extract-missing-model-dir", ["extract", "--trait", "evil", "--model", "./nodir"], 2, "unknown-model", "No model directory at './nodir'"),
    ("cli-extract-not-a-model-dir", ["extract", "--trait", "evil", "--model", "notamodel"], 2, "unknown-model", "is not a model directory"),
    ("cli-extract-judge-typo", ["extract", "--trait", "evil", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-extract-judge-no-api-key", ["extract", "--trait", "evil", "--judge", "openai:gpt-4.1-mini"], 2, "judge-unavailable", "no API key"),
    ("cli-extract-judge-hf-missing", ["extract", "--trait", "evil", "--judge", "hf:/nonexistent"], 2, "judge-unavailable", "cannot load the judge model"),
    ("cli-extract-temperature-nan", ["extract", "--trait", "evil", "--temperature", "nan"], 2, "invalid-argument", "temperature must be a finite number"),
    ("cli-extract-instructions-0", ["extract", "--trait", "evil", "--instructions", "0"], 2, "invalid-argument", "n_instructions must be 1..5"),
    ("cli-extract-questions-99", ["extract", "--trait", "evil", "--questions", "99"], 2, "invalid-argument", "n_questions must be 2..20"),
    ("cli-extract-samples-0", ["extract", "--trait", "evil", "--samples", "0"], 2, "invalid-argument", "samples_per_pair must be"),
    ("cli-extract-batch-size-0", ["extract", "--trait", "evil", "--batch-size", "0"], 2, "invalid-argument", "batch_size must be"),
    ("cli-extract-max-new-tokens-0", ["extract", "--trait", "evil", "--max-new-tokens", "0"], 2, "invalid-argument", "max_new_tokens must be"),
    ("cli-extract-threshold-150", ["extract", "--trait", "evil", "--pos-threshold", "150"], 2, "invalid-argument", "pos_threshold must be a finite number in [0, 100]"),
    ("cli-extract-threshold-nan", ["extract", "--trait", "evil", "--coherence-threshold", "nan"], 2, "invalid-argument", "coherence_threshold must be"),
    ("cli-extract-seed-negative", ["extract", "--trait", "evil", "--seed", "-1"], 2, "invalid-argument", "seed must be"),
    ("cli-extract-out-is-a-file", ["extract", "--trait", "evil", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-extract-out-under-a-file", ["extract", "--trait", "evil", "--out", "afile/run"], 2, "output-path", "file in the way at afile"),
    ("cli-extract-save-to-a-file", ["extract", "--trait", "evil", "--save-to", "afile"], 2, "output-path", "it is a file"),
    # ---- steer --------------------------------------------------------------------------------------------------
    ("cli-steer-nothing-to-steer", ["steer", "-p", "hi"], 2, "intervention-spec", "Nothing to steer with"),
    ("cli-steer-bad-layer-spec", ["steer", "--add", "evil:+2@Lx", "-p", "hi"], 2, "intervention-spec", "Cannot read the layers 'Lx'"),
    ("cli-steer-nan-coefficient", ["steer", "--add", "evil:nan@L12", "-p", "hi"], 2, "intervention-spec", "coefficient must be a number"),
    ("cli-steer-inf-coefficient", ["steer", "--add", "evil:inf@L12", "-p", "hi"], 2, "intervention-spec", "coefficient must be a number"),
    ("cli-steer-bad-cap", ["steer", "--cap", "evil<=abc@L12", "-p", "hi"], 2, "intervention-spec", "Cannot parse --cap"),
    ("cli-steer-missing-prompts-file", ["steer", "--add", "evil:+2@L12", "--prompts-file", "missing.txt"], 2, "dataset", "No prompts file at missing.txt"),
    ("cli-steer-no-prompts", ["steer", "--add", "evil:+2@L12"], 2, "invalid-argument", "Give --prompt"),
    ("cli-steer-unknown-trait", ["steer", "--add", "evil:+2@L12", "--trait", "evill"], 2, "unknown-trait", "Did you mean 'evil'?"),
    ("cli-steer-negative-temperature", ["steer", "--add", "evil:+2@L12", "-p", "hi", "--temperature", "-1"], 2, "invalid-argument", "temperature must be"),
    ("cli-steer-max-new-tokens-0", ["steer", "--add", "evil:+2@L12", "-p", "hi", "--max-new-tokens", "0"], 2, "invalid-argument", "max_new_tokens must be"),
    ("cli-steer-out-under-a-file", ["steer", "--add", "evil:+2@L12", "-p", "hi", "--out", "afile/x.json"], 2, "output-path", "afile"),
    ("cli-steer-evaluate-without-trait", ["steer", "--add", "evil:+2@L12", "--evaluate"], 2, "invalid-argument", "--evaluate needs --trait"),
    ("cli-steer-evaluate-judge-typo", ["steer", "--add", "evil:+2@L12", "--evaluate", "--trait", "evil", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-steer-unknown-position", ["steer", "--add", "evil:+2@L12", "-p", "hi", "--position", "bogus"], 2, "vectors-not-found", "has no 'bogus' vectors"),
    ("cli-steer-layer-out-of-range", ["steer", "--ablate", "evil@L99", "-p", "hi", "--no-baseline"], 2, "layer-out-of-range", "99"),
    # ---- sweep --------------------------------------------------------------------------------------------------
    ("cli-sweep-bad-coefficients", ["sweep", "--trait", "evil", "--coefs", "a,b"], 2, "intervention-spec", "Cannot read coefficients from 'a,b'"),
    ("cli-sweep-nan-coefficient", ["sweep", "--trait", "evil", "--coefs", "0,nan"], 2, "invalid-argument", "must be a finite number"),
    ("cli-sweep-bad-coef-mode", ["sweep", "--trait", "evil", "--coef-mode", "bogus"], 2, "intervention-spec", "coef_mode must be one of"),
    ("cli-sweep-unknown-trait", ["sweep", "--trait", "evill"], 2, "unknown-trait", "Did you mean 'evil'?"),
    ("cli-sweep-n-questions-0", ["sweep", "--trait", "evil", "--n-questions", "0"], 2, "invalid-argument", "n_questions must be"),
    ("cli-sweep-kl-prompts-99", ["sweep", "--trait", "evil", "--kl-prompts", "99"], 2, "invalid-argument", "kl_prompts"),
    ("cli-sweep-kl-max-nan", ["sweep", "--trait", "evil", "--kl-max", "nan"], 2, "invalid-argument", "kl_max must be"),
    ("cli-sweep-judge-typo", ["sweep", "--trait", "evil", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-sweep-out-is-a-file", ["sweep", "--trait", "evil", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-sweep-missing-vectors", ["sweep", "--trait", "evil", "--vectors", "/nonexistent"], 2, "vectors-not-found", "/nonexistent is not a directory"),
    ("cli-sweep-unreadable-layers", ["sweep", "--trait", "evil", "--layers", "x"], 2, "invalid-argument", "Cannot read layers from 'x'"),
    # ---- monitor, flag, orthogonalize, export-gguf ------------------------------------------------------------
    ("cli-monitor-no-prompt", ["monitor", "--trait", "evil"], 2, "invalid-argument", "Give --prompt"),
    ("cli-monitor-response-count", ["monitor", "--trait", "evil", "-p", "a", "-r", "x", "-r", "y"], 2, "invalid-argument", "Got 1 --prompt but 2 --response"),
    ("cli-monitor-unknown-vector", ["monitor", "--trait", "nosuch", "-p", "hi"], 2, "intervention-spec", "No vector named 'nosuch'"),
    ("cli-monitor-max-new-tokens-0", ["monitor", "--trait", "evil", "-p", "a", "--max-new-tokens", "0"], 2, "invalid-argument", "max_new_tokens must be"),
    ("cli-monitor-out-under-a-file", ["monitor", "--trait", "evil", "-p", "a", "--out", "afile/x.json"], 2, "output-path", "afile"),
    ("cli-monitor-correlate-judge-typo", ["monitor", "--trait", "evil", "--correlate", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-flag-missing-data", ["flag", "missing.jsonl", "--trait", "evil"], 2, "dataset", "No dataset file at missing.jsonl"),
    ("cli-flag-limit-0", ["flag", "ok.jsonl", "--trait", "evil", "--limit", "0"], 2, "invalid-argument", "--limit must be"),
    ("cli-flag-out-under-a-file", ["flag", "ok.jsonl", "--trait", "evil", "--out", "afile/x.jsonl"], 2, "output-path", "afile"),
    ("cli-orthogonalize-out-is-a-file", ["orthogonalize", "--trait", "evil", "-l", "3", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-export-gguf-missing-vectors", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", "/nonexistent"], 2, "vectors-not-found", "/nonexistent is not a directory"),
    ("cli-export-gguf-unknown-model-vectors", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", "nosuch-model"], 2, "vectors-not-found", "No persona vectors for 'nosuch-model'"),
    ("cli-export-gguf-unknown-vector", ["export-gguf", "--trait", "nosuch", "--out", "x.gguf", "--vectors", V], 2, "intervention-spec", "No vector named 'nosuch'"),
    ("cli-export-gguf-layer-99", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", V, "--layers", "99"], 2, "layer-out-of-range", "Layer 99 is out of range"),
    ("cli-export-gguf-layer-0", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", V, "--layers", "0"], 2, "layer-out-of-range", "llama.cpp cannot steer layer 0"),
    ("cli-export-gguf-reversed-range", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", V, "--layers", "5-3"], 2, "invalid-argument", "selects no layer"),
    ("cli-export-gguf-text-layers", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", V, "--layers", "a-b"], 2, "invalid-argument", "a-b"),
    ("cli-export-gguf-coef-nan", ["export-gguf", "--trait", "evil", "--out", "x.gguf", "--vectors", V, "--coef", "nan"], 2, "invalid-argument", "coef must be a finite number"),
    ("cli-export-gguf-out-under-a-file", ["export-gguf", "--trait", "evil", "--out", "afile/x.gguf", "--vectors", V], 2, "output-path", "afile"),
    ("cli-export-gguf-out-is-a-dir", ["export-gguf", "--trait", "evil", "--out", "emptydir", "--vectors", V], 2, "output-path", "it is a directory"),
    # ---- geometry -----------------------------------------------------------------------------------------------
    ("cli-geometry-missing-vectors", ["geometry", "/nonexistent"], 2, "vectors-not-found", "/nonexistent is not a directory"),
    ("cli-geometry-empty-dir", ["geometry", "emptydir"], 2, "vectors-not-found", "No vector files"),
    ("cli-geometry-layer-99", ["geometry", V, "--layer", "99"], 2, "layer-out-of-range", "Layer 99 is out of range"),
    ("cli-geometry-second-layer-99", ["geometry", V, V, "--layer-b", "99", "--n-boot", "0", "--n-null", "1", "--out", "geo"], 2, "layer-out-of-range", "Layer 99"),
    ("cli-geometry-n-boot-negative", ["geometry", V, "--n-boot", "-1"], 2, "invalid-argument", "--n-boot must be"),
    ("cli-geometry-n-null-0", ["geometry", V, "--n-null", "0"], 2, "invalid-argument", "--n-null must be"),
    ("cli-geometry-out-is-a-file", ["geometry", V, "--out", "afile", "--n-boot", "0", "--n-null", "1"], 2, "output-path", "it is a file"),
    ("cli-geometry-unknown-position", ["geometry", V, "--position", "bogus"], 2, "vectors-not-found", "has no 'bogus' vectors"),
    # ---- models, traits, explain, backends, demo ------------------------------------------------------------------
    ("cli-models-info-unknown", ["models", "info", "no-such-model"], 2, "unknown-model", "Unknown model 'no-such-model'"),
    ("cli-models-info-missing-dir", ["models", "info", "./missing-dir"], 2, "unknown-model", "No model directory at './missing-dir'"),
    ("cli-models-info-empty-dir", ["models", "info", "emptydir"], 2, "unknown-model", "is not a model directory"),
    ("cli-models-prepare-unknown", ["models", "prepare", "nosuch"], 2, "unknown-model", "is not an embedded model"),
    ("cli-traits-show-unknown", ["traits", "show", "evill"], 2, "unknown-trait", "Did you mean 'evil'?"),
    ("cli-traits-show-missing-file", ["traits", "show", "./missing.yaml"], 2, "trait-file", "missing.yaml: no such file"),
    ("cli-traits-validate-broken-yaml", ["traits", "validate", "bad.yaml"], 2, "trait-file", "invalid YAML"),
    ("cli-traits-validate-incomplete", ["traits", "validate", "partial.yaml"], 2, "trait-file", "field 'description': missing"),
    ("cli-traits-validate-directory", ["traits", "validate", "emptydir"], 2, "trait-file", "is a directory"),
    ("cli-traits-new-file-exists", ["traits", "new", "calm and patient", "--out", "afile"], 2, "trait-file", "already exists"),
    ("cli-traits-new-bad-name", ["traits", "new", "calm and patient", "--name", "Bad-Name"], 2, "trait-file", "lowercase identifier"),
    ("cli-traits-new-no-api-key", ["traits", "new", "calm and patient", "--name", "calm"], 2, "judge-unavailable", "no API key"),
    ("cli-explain-unknown-page", ["explain", "nope"], 2, "index", "No error page named 'nope'"),
    ("cli-backends-ndif-no-key", ["backends", "--check-ndif"], 2, "backend", "NDIF_API_KEY is not set"),
    ("cli-demo-unknown-model", ["demo", "--model", "nosuch"], 2, "unknown-model", "Unknown model 'nosuch'"),
    ("cli-demo-max-new-tokens-0", ["demo", "--max-new-tokens", "0"], 2, "invalid-argument", "max_new_tokens must be"),
    # ---- em -----------------------------------------------------------------------------------------------------
    ("cli-em-questions-unknown", ["em", "questions", "nosuch"], 2, "dataset", "No question set 'nosuch'"),
    ("cli-em-questions-broken-yaml", ["em", "questions", "bad.yaml"], 2, "dataset", "invalid YAML"),
    ("cli-em-questions-wrong-shape", ["em", "questions", "partial.yaml"], 2, "dataset", "expected a YAML list of questions"),
    ("cli-em-rate-missing-run", ["em", "rate", "/nonexistent"], 2, "corrupt-file", "Cannot read /nonexistent/summary.json"),
    ("cli-em-eval-unknown-convention", ["em", "eval", "--convention", "bogus"], 2, "invalid-argument", "Unknown EM convention 'bogus'"),
    ("cli-em-eval-bad-comparison", ["em", "eval", "--aligned-op", "=>"], 2, "invalid-argument", "Unknown comparison '=>'"),
    ("cli-em-eval-bad-denominator", ["em", "eval", "--denominator", "bogus"], 2, "invalid-argument", "Unknown denominator 'bogus'"),
    ("cli-em-eval-cutoff-nan", ["em", "eval", "--aligned-cutoff", "nan"], 2, "invalid-argument", "--aligned-cutoff must be"),
    ("cli-em-eval-temperature-nan", ["em", "eval", "--temperature", "nan"], 2, "invalid-argument", "temperature must be"),
    ("cli-em-eval-samples-0", ["em", "eval", "--samples", "0"], 2, "invalid-argument", "samples must be"),
    ("cli-em-eval-max-new-tokens-0", ["em", "eval", "--max-new-tokens", "0"], 2, "invalid-argument", "max_new_tokens must be"),
    ("cli-em-eval-judge-typo", ["em", "eval", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-em-eval-out-is-a-file", ["em", "eval", "--out", "afile"], 2, "output-path", "it is a file"),
    # ---- finetune -----------------------------------------------------------------------------------------------
    ("cli-finetune-check-missing-file", ["finetune", "check-data", "missing.jsonl"], 2, "dataset", "No dataset file at missing.jsonl"),
    ("cli-finetune-check-not-json", ["finetune", "check-data", "bad.jsonl"], 2, "dataset", "line 1: not valid JSON"),
    ("cli-finetune-check-empty", ["finetune", "check-data", "empty.jsonl"], 2, "dataset", "is empty"),
    ("cli-finetune-run-not-json", ["finetune", "run", "bad.jsonl", "--out", "ft"], 2, "dataset", "line 1: not valid JSON"),
    ("cli-finetune-run-rank-0", ["finetune", "run", "ok.jsonl", "--out", "ft", "--rank", "0"], 2, "invalid-argument", "rank must be"),
    ("cli-finetune-run-lr-nan", ["finetune", "run", "ok.jsonl", "--out", "ft", "--lr", "nan"], 2, "invalid-argument", "lr must be"),
    ("cli-finetune-run-epochs-0", ["finetune", "run", "ok.jsonl", "--out", "ft", "--epochs", "0"], 2, "invalid-argument", "epochs must be"),
    ("cli-finetune-run-out-is-a-file", ["finetune", "run", "ok.jsonl", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-finetune-make-data-domain", ["finetune", "make-data", "--domain", "bogus", "--out", "d.jsonl"], 2, "dataset", "Unknown domain 'bogus'"),
    ("cli-finetune-make-data-kind", ["finetune", "make-data", "--domain", "finance", "--kind", "bogus", "--out", "d.jsonl"], 2, "dataset", "Unknown dataset kind 'bogus'"),
    ("cli-finetune-make-data-rows-0", ["finetune", "make-data", "--domain", "finance", "--rows", "0", "--out", "d.jsonl"], 2, "invalid-argument", "rows must be"),
    ("cli-finetune-make-data-out-under-a-file", ["finetune", "make-data", "--domain", "finance", "--out", "afile/d.jsonl"], 2, "output-path", "afile"),
    ("cli-finetune-make-data-judge-typo", ["finetune", "make-data", "--domain", "finance", "--out", "d.jsonl", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-finetune-shift-missing-finetune", ["finetune", "shift", "--finetuned", "x=/nonexistent", "--layer", "5", "--judge", "none"], 2, "adapter", "No fine-tuned model at /nonexistent"),
    # ---- align --------------------------------------------------------------------------------------------------
    ("cli-align-lpa-unknown-mode", ["align", "lpa", "--out", "al", "--mode", "bogus"], 2, "dataset", "Unknown LPA data mode 'bogus'"),
    ("cli-align-lpa-unknown-trait", ["align", "lpa", "--out", "al", "--traits", "nosuch"], 2, "unknown-trait", "unknown trait 'nosuch'"),
    ("cli-align-lpa-holdout-1.5", ["align", "lpa", "--out", "al", "--holdout", "1.5"], 2, "dataset", "holdout must be in [0, 1)"),
    ("cli-align-lpa-missing-triples", ["align", "lpa", "--out", "al", "--triples", "missing.jsonl"], 2, "dataset", "missing.jsonl"),
    ("cli-align-lpa-missing-statements", ["align", "lpa", "--out", "al", "--statements", "missing.txt"], 2, "dataset", "missing.txt"),
    ("cli-align-lpa-broken-triples", ["align", "lpa", "--out", "al", "--triples", "bad.jsonl"], 2, "dataset", "not valid JSON"),
    ("cli-align-lpa-eps-nan", ["align", "lpa", "--out", "al", "--eps", "nan"], 2, "invalid-argument", "--eps must be a finite number"),
    ("cli-align-lpa-out-is-a-file", ["align", "lpa", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-align-lpa-outer-steps-0", ["align", "lpa", "--out", "al", "--outer-steps", "0"], 2, "align", "outer_steps must be at least 1"),
    ("cli-align-eval-attack-lr-text", ["align", "eval", "--attack-lr", "abc"], 2, "invalid-argument", "Cannot read --attack-lr 'abc'"),
    ("cli-align-compare-attack-lr-text", ["align", "compare", "--out", "al", "--attack-lr", "1e-3,x"], 2, "invalid-argument", "Cannot read --attack-lr"),
    ("cli-align-compare-out-is-a-file", ["align", "compare", "--out", "afile"], 2, "output-path", "it is a file"),
    # ---- experiment ---------------------------------------------------------------------------------------------
    ("cli-experiment-out-is-a-file", ["experiment", "em", "--out", "afile"], 2, "output-path", "it is a file"),
    ("cli-experiment-rows-0", ["experiment", "em", "--out", "ex", "--rows", "0"], 2, "invalid-argument", "n_rows must be"),
    ("cli-experiment-unknown-trait", ["experiment", "em", "--out", "ex", "--trait", "nosuch"], 2, "unknown-trait", "unknown trait 'nosuch'"),
    ("cli-experiment-judge-typo", ["experiment", "em", "--out", "ex", "--judge", "bogus"], 2, "judge-unavailable", "unknown judge 'bogus'"),
    ("cli-experiment-unknown-domain", ["experiment", "em", "--out", "ex", "--domain", "bogus"], 2, "dataset", "Unknown domain 'bogus'"),
    ("cli-experiment-amplify-nan", ["experiment", "em", "--out", "ex", "--amplify-coef", "nan"], 2, "invalid-argument", "amplify_coef must be"),
    ("cli-experiment-unknown-questions", ["experiment", "em", "--out", "ex", "--questions", "nosuch"], 2, "dataset", "No question set 'nosuch'"),
    ("cli-experiment-threads-0", ["experiment", "em", "--out", "ex", "--threads", "0"], 2, "invalid-argument", "--threads must be"),
]

# Cases that load the embedded model before they fail (a few seconds each).
INTEGRATION = {
    "cli-steer-layer-out-of-range",
    "cli-sweep-unreadable-layers",
    "cli-finetune-shift-missing-finetune",
    "cli-align-lpa-outer-steps-0",
}

# Known gaps in the library (not in the command modules); strict, so a fix shows up as XPASS.
XFAIL: dict[str, str] = {}

# Environment each case runs in: no API keys or endpoints, no debug tracebacks.
UNSET = ("OPENAI_API_KEY", "PERSONASPACE_LLM_API_KEY", "PERSONASPACE_LLM_BASE_URL", "OPENAI_BASE_URL", "NDIF_API_KEY", "PERSONASPACE_DEBUG")


def _argv(argv: list[str]) -> list[str]:
    return [str(VECTORS) if a == V else a for a in argv]


def _params():
    for case in CASES:
        marks = []
        if case[0] in INTEGRATION:
            marks.append(pytest.mark.integration)
        if case[0] in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[case[0]]))
        yield pytest.param(*case, id=case[0], marks=marks)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def test_case_ids_are_unique_and_marks_name_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert INTEGRATION <= set(ids) and set(XFAIL) <= set(ids)
    assert len(CASES) >= 45


@pytest.mark.parametrize("case_id, argv, code, page, message", list(_params()))
def test_bad_input(case_id, argv, code, page, message, tmp_path, monkeypatch, capsys):
    from personaspace.cli import root as cli
    for name, text in FIXTURES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)

    rc = cli.run(_argv(argv))
    captured = capsys.readouterr()

    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{captured.err}"
    line = lines[0]
    assert rc == code, line
    if page == U:
        assert line.startswith("error: ") and re.search(r" \(see: personaspace[\w -]* --help\)$", line), line
    else:
        assert line.startswith("error: ") and line.endswith(f" (details: personaspace explain {page})"), line
    assert message.lower() in line.lower(), line  # click's capitalisation of argument names varies by version
    assert _tree(tmp_path) == before, "the command left files behind"


# ---- the table in docs/errors/index.md ------------------------------------------------------------------------


def doc_rows() -> list[str]:
    """The catalogue rows of docs/errors/index.md for these cases (what ``python this_file.py`` prints)."""
    rows = []
    for case_id, argv, code, page, _ in CASES:
        shown = " ".join(
            "vectors/smollm2-135m-instruct" if a == V else (repr(a) if (" " in a or not a or "<" in a or ">" in a) else a)
            for a in argv
        )
        where = "usage (`--help`)" if page == U else f"[{page}]({page}.md)"
        command = f"personaspace {shown}".strip()
        rows.append(f"| {case_id} | `{command}` | {code} | {where} |")
    return rows


def _documented() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for raw in INDEX.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in raw.strip().strip("|").split("|")]
        if raw.startswith("|") and len(cells) >= 4 and cells[0] not in ("id", "") and not set(cells[0]) <= {"-", ":"}:
            table[cells[0]] = (cells[-2], cells[-1])
    return table


def test_every_case_is_in_the_documented_catalogue():
    table = _documented()
    for case_id, _, code, page, _ in CASES:
        assert case_id in table, f"{case_id} is missing from the Bad-input catalogue table in {INDEX}"
        exit_code, where = table[case_id]
        assert exit_code == str(code), case_id
        assert (where.startswith("usage") if page == U else f"({page}.md)" in where), (case_id, where)


if __name__ == "__main__":
    sys.stdout.write("\n".join(doc_rows()) + "\n")
