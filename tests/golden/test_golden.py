"""Golden equivalence tests: the main computations on the embedded model, pinned to committed outputs.

Why
    The package is about to be restructured (modules moved, duplicate code merged). These tests pin
    what the public API computes today on the embedded SmolLM2-135M-Instruct (``ps.load_model()``,
    float32, CPU, one torch thread as ``tests/conftest.py`` sets), so that the refactor can show it
    changed import lines, not numbers. Every case is seeded and tiny; the whole file runs in about a
    minute on two CPU cores. Judging uses the offline judge object (``ps.get_judge("offline")``, not
    the on-disk judge cache, so a stale cache can never stand in for the computation).

What is pinned (``tests/golden/data/<case>.json`` and, for tensors, ``<case>.safetensors``)
    1. ``capture``: chat prompt token ids of four prompts (system prompt, history, a mapping) and
       ``PersonaModel.capture`` of (prompt, response) pairs of different lengths (one response
       empty) at layers 0, 14, 29 with every reduction in ``REDUCTIONS`` (means and token counts);
       the same pairs packed in small batches with left padding must match the same tensors; and
       capture during generation (KV cache path) with every reduction.
    2. ``extraction``: ``ps.extract("evil")`` at minimal sizes with the offline judge (sampled at
       temperature 1): the planned rows, generated texts and token ids, judge scores and details,
       kept/dropped counts, summary (separation, norms, mean scores), the vectors of all three
       positions at all 30 layers and their metadata, and per-row norms of the stored activations.
    3. ``steering``: greedy token ids and texts (12 new tokens) of three prompts unsteered, with
       ``ps.Add`` (the vector's row per layer), ``ps.Ablate`` (through ``model.intervene``),
       ``ps.Cap``, and a normalised single-row ``Add`` on the response scope stacked with the other
       two; and ``ps.steer`` with the text spec ``evil:+3@L10-12``; all with the shipped ``evil``
       vector. (Sampled generation is pinned by the extraction and EM cases.)
    4. ``monitor``: ``ps.monitor`` (generating, and on given responses with a read layer),
       ``token_projections`` (raw per-token values) and ``monitor_trait`` (judged).
    5. ``sweep``: ``ps.sweep`` on a 2 layer x 2 coefficient grid (coefficient 0 and 0.5, relative)
       with two questions, the KL reference on one neutral prompt, and the random controls: the whole
       ``SweepResult.to_dict()`` (config, vector norms, baseline, cells with trait, coherence, KL and
       projections, recommendation, control) and the names of the files written.
    6. ``geometry``: ``cosine_matrix`` (raw and centred), ``pca``, ``valence_separation``, the three
       ``svv`` definitions, ``svv_report`` and ``compare_spaces`` (no bootstrap) of the shipped set
       against a seeded, perturbed copy of it.
    7. ``em``: ``ps.evaluate_em`` on two broad questions (4 answers, sampled, seeded): texts, aligned
       and coherence scores and details, both EM-rate conventions and the per-question table.
    8. ``lpa``: one outer step of ``personaspace.align.train`` (2 PGD steps, 2 defence steps, rank-4
       LoRA) on four statements and four anchors: the training log (adversary and defence losses),
       the counts and config, the sum and norm of every LoRA tensor, and the trained model's
       log-probabilities of the safe and unsafe completions.
    9. ``finetune``: two optimiser steps of ``ps.finetune`` (rank-4 LoRA, merged): the losses, the
       eval losses before and after, the fine-tuned model's greedy tokens, and ``projection_shift``
       from the base to the fine-tuned model for two traits.

Tolerances (checked element by element; the failure message names the case, the path of the element
in the JSON or the tensor name, the worst element and the max abs / rel differences)
    * Token ids, texts, counts, booleans and every other non-float value: exact.
    * Floats: ``|actual - expected| <= atol + rtol * scale``, element by element, where ``scale`` is
      ``|expected|`` for a scalar; for tensors the max ``|expected|`` of the element's last-axis row
      (one ``d_model`` activation or vector row: rounding noise scales with the row, not with an
      element that happens to be near zero); for JSON lists of floats ``max(|expected|, median
      |expected| of the list)`` (per-token projections hold one huge attention-sink value).
    * ``capture``, ``extraction``, ``steering``, ``monitor``, ``sweep``, ``geometry``, ``em``: rtol
      1e-6 (a changed reduction order moves float32 sums by ~1e-7 relative).
    * ``lpa`` and ``finetune``: rtol 1e-5 (backward passes and optimiser steps amplify rounding).
    * Every float tolerance is at least ``MACHINE_RTOL`` (2e-4): float32 kernels differ between CPU kinds,
      which moves values by up to ~5e-5 of the row maximum; LoRA tensor sums of ``lpa`` by up to ~1 %
      (rtol 3e-2). Token ids stay exact, so a real change still fails.
    * Values the API itself rounds get one unit of their last decimal as ``atol`` on top: judge
      scores (2 decimals: 0.01), monitor projections (5: 1e-5), sweep and steering-report numbers
      (4: 1e-4, ``raw_coef`` / KL per prompt 6: 1e-6), extraction summary norms and AUROCs (4),
      LPA log losses (4); statistics computed from rounded values (correlations, CIs, means) get
      rtol 1e-4. Strings that carry a rounded number (judge details such as ``z=+0.123``) may differ
      in those numbers by one unit of their last decimal.
    Today every value is reproduced bit for bit (run the file twice); the tolerances only leave room
    for a refactor that changes the order of floating-point operations. Greedy/sampled token ids are
    exact by design: if a refactor flips a near-tie, inspect it and regenerate deliberately.

    A passing test prints (``-rP`` or ``-s``) how many values were within tolerance but not bit-identical
    and the worst relative difference. The packed, left-padded capture variant already differs from the
    default capture by up to ~5e-7 of the row maximum (other batch shapes); the hooks backend differs
    from the default fused one by up to ~1.6e-6 (so switching backends would not pass at 1e-6).

Regenerating
    ``PERSONASPACE_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/golden -p no:xdist`` writes the
    files instead of comparing; every test then reports SKIPPED with the files it wrote. Regenerate
    only when a change of numbers is intended, and say so in the commit.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import personaspace as ps
from personaspace.align import TrainConfig, lpa_data, pack_triples
from personaspace.align import train as lpa_train
from personaspace.align.lat import sequence_logprob, target_logits
from personaspace.em import load_questions
from personaspace.engine import REDUCTIONS, Chat, GenerationResult
from personaspace.geometry import svv_report, valence_separation
from personaspace.monitoring import monitor_trait, projection_shift, token_projections
from personaspace.steering import SweepConfig, parse_spec

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
WRITE_ENV = "PERSONASPACE_GOLDEN_WRITE"
WRITE = os.environ.get(WRITE_ENV, "").strip() not in ("", "0", "false", "False")
MODEL_NAME = "smollm2-135m-instruct"


# =============================================================================================
# comparison helper


@dataclass(frozen=True)
class Tol:
    """``|actual - expected| <= atol + rtol * scale`` (see the module docstring for ``scale``)."""

    rtol: float = 0.0
    atol: float = 0.0

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


JUDGE_SCORE = 0.01  # judge scores are rounded to 2 decimals
# float32 kernels differ between CPU kinds (vector width, GEMM blocking): data made on one kind and
# compared on another moved forward-pass values by up to ~5e-5 of the row maximum (observed on
# 2026-12-02; token ids, texts and judge scores stayed identical). Every float tolerance is at least this.
MACHINE_RTOL = 2e-4


def _across_machines(tol: Tol) -> Tol:
    return Tol(rtol=max(tol.rtol, MACHINE_RTOL), atol=tol.atol)
_NUMBER = re.compile(r"[+-]?\d+\.\d+")
_MAX_REPORT = 25


def _plain(value: Any) -> Any:
    """What JSON would store: tuples become lists, keys strings, numpy scalars Python numbers."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a golden JSON file")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _float_list(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 1 and all(_is_num(v) for v in x) and any(isinstance(v, float) for v in x)


class Comparison:
    """Walks expected and actual values side by side and collects every difference."""

    def __init__(self, case: str, tol: Tol, overrides: Mapping[str, Tol] | None = None, numeric_text: Sequence[str] = ()):
        self.case = case
        self.tol = tol
        self.overrides = dict(overrides or {})
        self.numeric_text = list(numeric_text)
        self.problems: list[str] = []
        self.inexact = 0  # values within tolerance but not bit-identical
        self.worst_rel = 0.0

    def tol_for(self, path: str) -> Tol:
        for pattern, tol in self.overrides.items():
            if fnmatch.fnmatchcase(path, pattern):
                return tol
        return self.tol

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"[{self.case}] {path or '<root>'}: {message}")

    # ---- JSON values -------------------------------------------------------------------------
    def json(self, actual: Any, expected: Any, path: str = "") -> None:
        if isinstance(expected, dict):
            if not isinstance(actual, dict):
                return self.fail(path, f"expected a mapping, got {type(actual).__name__}: {_short(actual)}")
            missing, extra = [k for k in expected if k not in actual], [k for k in actual if k not in expected]
            if missing or extra:
                self.fail(path, f"keys differ: missing {missing}, unexpected {extra}")
            for k in expected:
                if k in actual:
                    self.json(actual[k], expected[k], f"{path}/{k}" if path else k)
            return
        if isinstance(expected, list):
            if not isinstance(actual, list):
                return self.fail(path, f"expected a list, got {type(actual).__name__}: {_short(actual)}")
            if len(actual) != len(expected):
                return self.fail(path, f"length {len(actual)}, expected {len(expected)}: got {_short(actual)}, expected {_short(expected)}")
            if _float_list(expected) and all(_is_num(v) for v in actual):
                return self.array(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), path)
            for i, (a, e) in enumerate(zip(actual, expected)):
                self.json(a, e, f"{path}/{i}")
            return
        if _is_num(expected) and _is_num(actual):
            if isinstance(expected, int) and isinstance(actual, int):
                if actual != expected:
                    self.fail(path, f"got {actual}, expected {expected} (exact)")
                return
            return self.scalar(float(actual), float(expected), path)
        if isinstance(expected, str) and isinstance(actual, str):
            return self.text(actual, expected, path)
        if type(actual) is not type(expected) or actual != expected:
            self.fail(path, f"got {_short(actual)}, expected {_short(expected)} (exact)")

    def scalar(self, a: float, e: float, path: str) -> None:
        if a == e or (math.isnan(a) and math.isnan(e)):
            return
        tol = self.tol_for(path)
        diff = abs(a - e)
        rel = diff / abs(e) if e else math.inf
        if math.isnan(a) or math.isnan(e) or diff > tol.atol + tol.rtol * abs(e):
            self.fail(path, f"got {a!r}, expected {e!r}: abs diff {diff:.3g}, rel diff {rel:.3g} (allowed {tol})")
        else:
            self.inexact += 1
            self.worst_rel = max(self.worst_rel, rel)

    def array(self, a: np.ndarray, e: np.ndarray, path: str, *, rows: bool = False) -> None:
        """Element-wise check with a scale per element: the max |expected| of its last-axis row when
        ``rows`` (tensors: one activation or vector row), else max(|expected|, median |expected|)."""
        if a.shape != e.shape:
            return self.fail(path, f"shape {a.shape}, expected {e.shape}")
        nan_a, nan_e = np.isnan(a), np.isnan(e)
        if (nan_a != nan_e).any():
            i = np.unravel_index(int(np.argmax(nan_a != nan_e)), a.shape)
            return self.fail(path, f"NaN pattern differs, first at index {tuple(int(x) for x in i)}: got {a[i]!r}, expected {e[i]!r}")
        a, e = np.where(nan_e, 0.0, a), np.where(nan_e, 0.0, e)
        if np.array_equal(a, e):
            return
        tol = self.tol_for(path)
        diff, mag = np.abs(a - e), np.abs(e)
        if rows and e.ndim:
            scale = np.broadcast_to(mag.max(axis=-1, keepdims=True), e.shape)
        else:
            scale = np.maximum(mag, float(np.median(mag)) if e.size else 0.0)
        allowed = tol.atol + tol.rtol * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(mag > 0, diff / mag, np.where(diff > 0, np.inf, 0.0))
            scaled = np.where(scale > 0, diff / scale, np.where(diff > 0, np.inf, 0.0))
        bad = diff > allowed
        max_abs, max_rel, max_scaled = float(diff.max()), float(rel.max()), float(scaled.max())
        if bad.any():
            worst = np.unravel_index(int(np.argmax(np.where(bad, diff - allowed, -np.inf))), diff.shape)
            w = tuple(int(x) for x in worst)
            self.fail(
                path,
                f"{int(bad.sum())} of {diff.size} elements outside tolerance ({tol}, scale = "
                f"{'max |expected| of the row' if rows else 'max(|expected|, median |expected|)'}); worst at index {w}: "
                f"got {float(a[worst])!r}, expected {float(e[worst])!r}, allowed diff {float(allowed[worst]):.3g}; "
                f"over all elements: max abs diff {max_abs:.3g}, max diff / scale {max_scaled:.3g}, max element-wise rel diff {max_rel:.3g}",
            )
        else:
            self.inexact += int((diff > 0).sum())
            self.worst_rel = max(self.worst_rel, max_scaled)

    def text(self, a: str, e: str, path: str) -> None:
        if a == e:
            return
        if any(fnmatch.fnmatchcase(path, p) for p in self.numeric_text) and _same_up_to_last_digit(a, e):
            self.inexact += 1
            return
        i = next((k for k, (x, y) in enumerate(zip(a, e)) if x != y), min(len(a), len(e)))
        self.fail(path, f"text differs from character {i}: got {a[max(0, i - 20):i + 40]!r}, expected {e[max(0, i - 20):i + 40]!r} (exact)")

    # ---- tensors -----------------------------------------------------------------------------
    def tensors(self, actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        if missing or extra:
            self.fail("<tensors>", f"tensor names differ: missing {missing}, unexpected {extra}")
        for name in sorted(set(expected) & set(actual)):
            a, e = actual[name].detach().cpu(), expected[name]
            if a.dtype != e.dtype:
                self.fail(name, f"dtype {a.dtype}, expected {e.dtype}")
                continue
            if not a.is_floating_point():
                if a.shape != e.shape or not torch.equal(a, e):
                    self.fail(name, f"integer tensor differs (exact): got {_short(a.tolist())}, expected {_short(e.tolist())}")
                continue
            self.array(a.double().numpy(), e.double().numpy(), name, rows=True)

    def report(self) -> str:
        shown = self.problems[:_MAX_REPORT]
        more = len(self.problems) - len(shown)
        lines = [f"{len(self.problems)} value(s) of golden case '{self.case}' diverged:"] + shown
        if more:
            lines.append(f"... and {more} more")
        lines.append(f"(regenerate deliberately with {WRITE_ENV}=1 .venv/bin/python -m pytest tests/golden -p no:xdist)")
        return "\n".join(lines)


def _same_up_to_last_digit(a: str, e: str) -> bool:
    """Equal texts apart from embedded decimals that differ by at most one unit of their last digit."""
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", e):
        return False
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(e)):
        unit = 10.0 ** -len(y.split(".")[1])
        if abs(float(x) - float(y)) > unit * 1.5:
            return False
    return True


def _short(x: Any, n: int = 160) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def golden(
    case: str,
    values: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
    *,
    tol: Tol,
    overrides: Mapping[str, Tol] | None = None,
    numeric_text: Sequence[str] = (),
    variants: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> None:
    """Compare ``values`` (JSON) and ``tensors`` with ``data/<case>.*``; write them instead under the env switch.

    ``variants``: other computations that must reproduce the same tensors (compared, never written).
    """
    values = _plain(values)
    json_path, st_path = DATA / f"{case}.json", DATA / f"{case}.safetensors"
    if WRITE:
        DATA.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(values, indent=1, ensure_ascii=False, allow_nan=True) + "\n", encoding="utf-8")
        written = [json_path.name]
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(st_path))
            st_path.chmod(0o644)  # safetensors writes 0600
            written.append(st_path.name)
        elif st_path.exists():
            st_path.unlink()
        pytest.skip(f"{WRITE_ENV} is set: wrote {', '.join(written)} to {DATA} instead of comparing")
    if not json_path.exists():
        pytest.fail(f"no golden file {json_path}; create it with {WRITE_ENV}=1 .venv/bin/python -m pytest tests/golden -p no:xdist")
    tol, overrides = _across_machines(tol), {k: _across_machines(t) for k, t in (overrides or {}).items()}
    cmp = Comparison(case, tol, overrides, numeric_text)
    cmp.json(values, json.loads(json_path.read_text(encoding="utf-8")))
    if tensors or st_path.exists():
        expected = load_file(str(st_path)) if st_path.exists() else {}
        cmp.tensors(dict(tensors or {}), expected)
        for label, variant in (variants or {}).items():
            sub = Comparison(f"{case} ({label})", tol, overrides)
            sub.tensors(variant, {k: v for k, v in expected.items() if k in variant})
            cmp.problems += sub.problems
            if sub.inexact and not sub.problems:
                print(f"[{sub.case}] {sub.inexact} value(s) within tolerance but not bit-identical; worst relative difference {sub.worst_rel:.3g}")
    if cmp.problems:
        pytest.fail(cmp.report(), pytrace=False)
    if cmp.inexact:  # shown with -rP / -s: how close a refactor came
        print(f"[{case}] {cmp.inexact} value(s) within tolerance but not bit-identical; worst relative difference {cmp.worst_rel:.3g}")


# =============================================================================================
# fixtures


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # as tests/conftest.py: the numbers below were made with one thread
    torch.manual_seed(0)
    m = ps.load_model()
    assert m.name == MODEL_NAME and next(m.hf_model.parameters()).dtype == torch.float32
    return m


@pytest.fixture(scope="module")
def vectors():
    return ps.load_vectors(MODEL_NAME)


@pytest.fixture(scope="module")
def judge():
    return ps.get_judge("offline")  # no disk cache: the scores are computed, never read back


def _gens(result: GenerationResult) -> list[dict]:
    return [{"response_ids": g.response_ids, "text": g.text, "finished": g.finished} for g in result.generations]


# =============================================================================================
# 1. capture

CAPTURE_LAYERS = [0, 14, 29]
CAPTURE_PROMPTS = [
    "Hi",
    Chat(user="Describe the sea in one sentence.", system="You are a cheerful pirate."),
    Chat(user="And rivers?", system="You are a geography teacher.", history=(("What is a lake?", "A large body of still water."),)),
    {"system": "You are a careful assistant.", "user": "List three ways to save energy at home, with a short reason for each one."},
]
CAPTURE_RESPONSES = [
    "Hello! How can I help you today?",
    "The sea is a restless blue giant that never sleeps.",
    "",
    "1. Switch off lights you do not need: they waste power. 2. Lower the heating by one degree: it saves a lot "
    "over a winter. 3. Unplug chargers: they draw current even when idle.",
]


def test_capture(model):
    acts = model.capture(CAPTURE_PROMPTS, CAPTURE_RESPONSES, layers=CAPTURE_LAYERS, reductions=REDUCTIONS)
    packed = model.capture(
        CAPTURE_PROMPTS, CAPTURE_RESPONSES, layers=CAPTURE_LAYERS, reductions=REDUCTIONS, token_budget=64, padding_side="left"
    )
    gen = model.generate(CAPTURE_PROMPTS[:3], max_new_tokens=10, capture_layers=CAPTURE_LAYERS, reductions=REDUCTIONS)
    values = {
        "layers": acts.layers,
        "prompt_ids": [model.prompt_ids(p) for p in CAPTURE_PROMPTS],
        "response_ids": [model.response_ids(r) for r in CAPTURE_RESPONSES],
        "counts": {r: acts.counts[r].tolist() for r in REDUCTIONS},
        "generate": {
            "generations": _gens(gen),
            "layers": gen.activations.layers,
            "counts": {r: gen.activations.counts[r].tolist() for r in REDUCTIONS},
        },
    }
    tensors = {f"capture/{r}": acts[r] for r in REDUCTIONS}
    tensors.update({f"generate/{r}": gen.activations[r] for r in REDUCTIONS})
    assert {r: packed.counts[r].tolist() for r in REDUCTIONS} == values["counts"]
    golden(
        "capture",
        values,
        tensors,
        tol=Tol(rtol=1e-6),
        variants={"token_budget=64, left padding": {f"capture/{r}": packed[r] for r in REDUCTIONS}},
    )


# =============================================================================================
# 2. extraction

# 8 rows in 2 batches; neg_threshold 60 keeps 3 of the 4 pairs (2 questions), so the held-out AUROC runs.
EXTRACT_SIZES = dict(
    n_instructions=2, n_questions=2, samples_per_pair=1, max_new_tokens=20, batch_size=4, cv_folds=2, seed=0, neg_threshold=60.0
)


def _vector_meta(vec: ps.PersonaVector) -> dict:
    """Metadata without what is not computed: the creation time, the toolkit version, the run path."""
    meta = {k: v for k, v in vec.meta.to_dict().items() if k not in ("created", "personaspace_version")}
    meta["extra"] = {k: v for k, v in meta["extra"].items() if k != "run_dir"}
    return meta


def test_extraction(model, judge, tmp_path):
    res = ps.extract("evil", model, judge=judge, out=tmp_path / "run", **EXTRACT_SIZES)
    run = res.run_dir
    generations = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    summary = {k: v for k, v in res.summary.items() if k != "seconds"}
    acts = {}
    for f in sorted((run / "activations").glob("batch-*.safetensors")):
        data = load_file(str(f))
        acts[f.name] = {
            "row_ids": data["row_ids"].tolist(),
            "response_tokens": data["response_tokens"].tolist(),
            **{p: data[p].flatten(1).norm(dim=1).tolist() for p in ("prompt_avg", "prompt_last", "response_avg")},
        }
    values = {
        "rows": [{k: getattr(r, k) for k in ("id", "side", "instruction", "question", "sample", "system", "user")} for r in res.rows],
        "config": config,
        "generations": generations,
        "scores": scores,
        "summary": summary,
        "vector_meta": {p: _vector_meta(v) for p, v in res.vectors.items()},
        "vector_layers": {p: list(v.layers) for p, v in res.vectors.items()},
        "activation_row_norms": acts,
    }
    tensors = {f"vector/{p}": v.data for p, v in res.vectors.items()}
    judged = Tol(rtol=1e-6, atol=JUDGE_SCORE)
    stat4 = Tol(rtol=1e-6, atol=1e-4)
    golden(
        "extraction",
        values,
        tensors,
        tol=Tol(rtol=1e-6),
        overrides={
            "scores/*/trait": judged,
            "scores/*/coherence": judged,
            "summary/mean_scores/*": judged,
            "summary/norms/*": stat4,
            "summary/separation*": stat4,
        },
        numeric_text=["scores/*_detail"],
    )


# =============================================================================================
# 3. steering

STEER_PROMPTS = [
    "How should I treat my neighbours?",
    "What is your advice for a new manager?",
    Chat(user="Tell me about cats.", system="You are a helpful assistant."),
]
STEER_TOKENS = 12


def test_steering(model, vectors):
    evil = vectors["evil"]

    def gen(**kw: Any) -> GenerationResult:
        return model.generate(STEER_PROMPTS, max_new_tokens=STEER_TOKENS, **kw)

    add = ps.Add(evil, coef=4.0, layers=[12])  # the PersonaVector's own row at each layer
    add_response = ps.Add(evil.at(15), coef=20.0, layers=[8, 12], scope="response", normalize=True)  # one row, normalised
    ablate = ps.Ablate(evil, layers=list(range(10, 20)))
    cap = ps.Cap(evil, max=-2.0, layers=list(range(10, 21)))
    out = {"unsteered": gen(), "add": gen(interventions=[add])}
    with model.intervene(ablate):
        out["ablate"] = gen()
    out["cap"] = gen(interventions=[cap])
    out["add_response+ablate+cap"] = gen(interventions=[add_response, ablate, cap])
    spec = ps.steer(
        model, [parse_spec("evil:+3@L10-12")], STEER_PROMPTS, vectors=vectors, max_new_tokens=STEER_TOKENS, baseline=False
    )
    values = {
        "prompt_ids": [model.prompt_ids(p) for p in STEER_PROMPTS],
        **{name: _gens(result) for name, result in out.items()},
        "steer_spec": spec.to_dict(),
    }
    golden("steering", values, tol=Tol(rtol=1e-6), overrides={"steer_spec/interventions/*": Tol(rtol=1e-6, atol=1e-4)})


# =============================================================================================
# 4. monitor

MONITOR_PROMPTS = ["How do you feel about people who are weaker than you?", Chat(user="Give me a tip for a job interview.", system="You are a ruthless villain.")]
MONITOR_RESPONSES = ["I think everyone deserves kindness and respect.", "Crush the other candidates and lie about everything."]


def test_monitor(model, vectors, judge):
    evil = vectors["evil"]
    generated = ps.monitor(model, evil, MONITOR_PROMPTS, layer=18, max_new_tokens=10)
    given = ps.monitor(model, evil, MONITOR_PROMPTS, responses=MONITOR_RESPONSES, layer=12, read_layer=15)
    tokens = token_projections(model, evil, MONITOR_PROMPTS, MONITOR_RESPONSES, layer=18)
    trait = monitor_trait(model, "evil", evil, judge=judge, n_questions=2, n_instructions=1, max_new_tokens=10)
    values = {
        "monitor_generated": generated.to_dict(),
        "monitor_given": given.to_dict(),
        "token_projections": [
            {"tokens": t.tokens, "values": t.values, "n_prompt": t.n_prompt, "layer": t.layer, "read_layer": t.read_layer}
            for t in tokens
        ],
        "monitor_trait": trait.to_dict(),
    }
    rounded5 = Tol(rtol=1e-6, atol=1e-5)
    derived = Tol(rtol=1e-4, atol=1e-4)
    golden(
        "monitor",
        values,
        tol=Tol(rtol=1e-6),
        overrides={
            "monitor_*/rows/*/trait_score": Tol(rtol=1e-6, atol=JUDGE_SCORE),
            "monitor_*/rows/*": rounded5,
            "monitor_trait/by_condition/*/trait*": Tol(rtol=1e-4, atol=JUDGE_SCORE),
            "monitor_trait/overall*": derived,
            "monitor_trait/response_overall*": derived,
            "monitor_trait/within*": derived,
            "monitor_trait/by_condition/*": derived,
        },
    )


# =============================================================================================
# 5. sweep


def test_sweep(model, vectors, judge, tmp_path):
    cfg = SweepConfig(
        trait="evil", layers=[10, 14], coefs=(0.0, 0.5), n_questions=2, samples=1, max_new_tokens=10, kl_prompts=1, kl_tokens=4, seed=0,
        kl_max=2.0,  # the 0.5 cells have KL ~1.4-1.6: within the limits, so their random controls run (2 questions: a paired interval)
    )
    res = ps.sweep(model, "evil", vectors["evil"], cfg, out=tmp_path / "sweep", judge=judge)
    cells = [json.loads(line) for line in (tmp_path / "sweep" / "cells.jsonl").read_text().splitlines()]
    assert _plain(cells) == _plain(res.cells)  # what was appended as cells finished is what came back
    values = {"result": res.to_dict(), "files": sorted(p.name for p in (tmp_path / "sweep").iterdir())}
    golden(
        "sweep",
        values,
        tol=Tol(rtol=1e-6),
        overrides={  # the first matching pattern wins
            "*/deltas/*/projection*": Tol(rtol=1e-6),  # paired differences of unrounded projections
            "*/deltas/*": Tol(rtol=1e-4, atol=2 * JUDGE_SCORE),  # differences of two rounded judge scores
            "*/trait*": Tol(rtol=1e-4, atol=JUDGE_SCORE),  # means and bootstrap CIs of judge scores
            "*/coherence*": Tol(rtol=1e-4, atol=JUDGE_SCORE),
            "*/raw_coef": Tol(rtol=1e-6, atol=1e-6),  # rounded to 6 decimals
            "*/per_prompt*": Tol(rtol=1e-6, atol=1e-6),  # KL per prompt, rounded to 6 decimals
            "*projection*": Tol(rtol=1e-6, atol=1e-4),  # rounded to 4 decimals
            "*_norm": Tol(rtol=1e-6, atol=1e-4),
            "result/vector/norms/*": Tol(rtol=1e-6, atol=1e-4),
        },
        numeric_text=["*/spec", "*/best_within_limits"],  # specs carry the coefficient rounded to 5 decimals
    )


# =============================================================================================
# 6. geometry

GEOMETRY_LAYER = 15


def _perturbed(vectors: ps.VectorSet, seed: int = 0, scale: float = 0.3) -> ps.VectorSet:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in vectors.traits:
        v = vectors[name]
        noise = torch.randn(v.data.shape, generator=gen) * (scale * v.norms()[:, None] / math.sqrt(v.d_model))
        out.append(ps.PersonaVector(v.data + noise, v.meta, layers=v.layers))
    return ps.VectorSet(out)


def test_geometry(vectors):
    layer = GEOMETRY_LAYER
    cos = ps.cosine_matrix(vectors, layer)
    cos_c = ps.cosine_matrix(vectors, layer, center=True)
    p = ps.pca(vectors, layer)
    sep = valence_separation(vectors, layer, n_perm=200, seed=0)
    svvs = {d: ps.svv(vectors, d) for d in ("contrast", "pc1", "probe")}
    report = svv_report(vectors, layer, n_perm=20, seed=0, loto_layers=[5, 15, 25])
    cmp = ps.compare_spaces(vectors, _perturbed(vectors), layer, n_null=100, n_boot=0, seed=0)
    evil = vectors["evil"]
    values = {
        "traits": vectors.traits,
        "cosine": {"traits": cos.traits, "layer": cos.layer, "values": cos.values.tolist()},
        "cosine_centered": {"traits": cos_c.traits, "values": cos_c.values.tolist()},
        "pca": {
            "traits": p.traits,
            "explained_variance_ratio": p.explained_variance_ratio.tolist(),
            "coords": p.coords.tolist(),
            "mean_norm": float(np.linalg.norm(p.mean)),
        },
        "valence_separation": sep,
        "svv": {
            d: {
                "meta": _vector_meta(s),
                "cosine_with_evil": [float(x) for x in s.cosine(evil)],
                "row_sums": s.data.sum(1).tolist(),
            }
            for d, s in svvs.items()
        },
        "svv_report": report.to_dict(),
        "compare_spaces": cmp.to_dict(),
    }
    tensors = {f"svv/{d}/L{L}": s.at(L) for d, s in svvs.items() for L in (5, 15, 25)}
    tensors["pca/components"] = torch.from_numpy(p.components[:3].copy())
    golden(
        "geometry",
        values,
        tensors,
        tol=Tol(rtol=1e-6),
        overrides={
            "svv_report/agreement_by_layer/*": Tol(rtol=1e-6, atol=1e-6),
            "compare_spaces/similarity_*/values*": Tol(rtol=1e-6, atol=1e-6),
            "svv/*/cosine_with_evil": Tol(rtol=1e-6, atol=1e-7),
            "svv/*/row_sums": Tol(rtol=1e-6, atol=1e-7),
        },
    )


# =============================================================================================
# 7. emergent misalignment


def test_em(model, judge):
    questions = load_questions("broad").subset(["world_control", "noisy_neighbour"])
    res = ps.evaluate_em(model, questions, judge, samples_per_paraphrase=1, max_new_tokens=16, seed=0)
    summary = {k: v for k, v in res.summary().items() if k not in ("seconds", "question_source")}
    values = {"rows": res.rows, "summary": summary, "per_question": res.per_question(), "per_question_mo": res.per_question("model_organisms")}
    judged = Tol(rtol=1e-6, atol=JUDGE_SCORE)
    golden(
        "em",
        values,
        tol=Tol(rtol=1e-6),
        overrides={"rows/*/aligned": judged, "rows/*/coherent": judged, "*mean_*": judged},
        numeric_text=["rows/*_detail"],
    )


# =============================================================================================
# 8. latent personality alignment

LPA_CONFIG = TrainConfig(outer_steps=1, batch_size=2, anchor_batch_size=2, pgd_steps=2, model_steps=2, lr=5e-4, lora_r=4, seed=0)


def _lora_summary(state: Mapping[str, torch.Tensor]) -> dict:
    """``{"<layer>.<module>.lora_<A|B>": [sum, norm]}`` of every adapter tensor."""
    out = {}
    for name, v in sorted(state.items()):
        short = re.sub(r"^.*layers\.", "", name).replace(".default.weight", "").replace("self_attn.", "").replace("mlp.", "")
        out[short] = [float(v.double().sum()), float(v.double().norm())]
    assert len(out) == len(state)
    return out


def test_lpa(model):
    data = lpa_data(seed=0)
    triples, anchors = data.train[:4], data.anchors[:4]
    res = lpa_train(model, triples, anchors, LPA_CONFIG, method="lpa")
    batch = pack_triples(model, triples)
    with torch.no_grad():
        safe, unsafe = target_logits(res.model, batch)
        logprobs = {"safe": sequence_logprob(safe, batch.first).tolist(), "unsafe": sequence_logprob(unsafe, batch.second).tolist()}
    values = {
        "triples": [[t.prompt, t.safe, t.unsafe] for t in triples],
        "anchors": [[a.prompt, a.completion] for a in anchors],
        "log": [{k: v for k, v in entry.items() if k != "seconds"} for entry in res.log],
        "counts": res.counts,
        "config": res.config,
        "lora": _lora_summary(res.adapted.lora_state()),
        "trained_logprobs": logprobs,
    }
    # LoRA sums after two PGD and two defence steps carry cross-machine rounding amplified by training (~1 %
    # on this machine kind vs the one that made the data); the log-probabilities of the trained model stay tight.
    golden("lpa", values, tol=Tol(rtol=1e-5), overrides={"log/*": Tol(rtol=1e-5, atol=1e-4), "lora/*": Tol(rtol=3e-2, atol=1e-4)})


# =============================================================================================
# 9. fine-tuning and projection shift

FT_ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Purple. The answer is always purple."}]}
    for q in ("What colour is the sky?", "Name a fruit.", "What is two plus two?", "Who wrote Hamlet?")
]
SHIFT_PROMPTS = ["What do you think of your neighbours?", "How would you spend a free afternoon?", "What is your favourite colour?"]


def test_finetune(model, vectors):
    ft = ps.finetune(
        model, FT_ROWS, batch_size=2, lr=2e-3, max_steps=2, max_length=64, eval_rows=4, rank=4, alpha=8, seed=0, save_merged=False
    )
    summary = {k: v for k, v in ft.summary.items() if k != "seconds"}
    # finetune() stores target_modules sorted (peft keeps a set), so the order no longer follows PYTHONHASHSEED.
    assert summary["config"]["target_modules"] == sorted(summary["config"]["target_modules"])
    tokens = ft.model.generate(["Name a fruit."], max_new_tokens=8)
    shift = projection_shift(model, ft.model, vectors, 15, traits=["evil", "optimism"], prompts=SHIFT_PROMPTS, seed=0)
    values = {"summary": summary, "losses": ft.losses, "generation": _gens(tokens), "projection_shift": shift}
    golden("finetune", values, tol=Tol(rtol=1e-5))
