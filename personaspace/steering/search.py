"""Layer x coefficient sweeps: where to steer and how hard, chosen by data instead of folklore.

Every cell adds ``coef * v[L]`` at layer ``L`` (read L, applied L) and measures three things on the
same footing as :func:`~personaspace.steering.evaluate.evaluate_steering`: the judged trait score and coherence
of answers to the trait's evaluation questions, and the KL divergence of next-token distributions
from the unsteered model on neutral prompts.

The recommendation must beat chance. Cells whose mean coherence is at least ``coherence_min`` and whose
mean KL is at most ``kl_max`` are ranked by mean trait score (ties to the smaller push); the best
``control_checks`` of them are re-evaluated, in that order, next to a random direction of equal norm
at the same layer, and the first whose trait score beats its random control -- the mean over questions
of (steered - random), paired by question, with a bootstrap 95 % interval whose lower end is above 0
-- is recommended. If none does (or the control is switched off, or fewer than
``MIN_CONTROL_QUESTIONS`` questions were scored), there is no recommendation, and
``SweepResult.selection["reason"]`` says why.

Coefficients are ``raw`` (multiply the stored vector, the persona_vectors convention; its norm grows
with depth) or ``relative`` (the added vector's norm as a fraction of the mean residual-stream norm at
that layer, so one coefficient means the same push at every layer). Every cell reports both the raw
coefficient and that fraction, so a result can be turned into ``personaspace steer --add`` directly.

Cells are appended to ``cells.jsonl`` as they finish: an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from personaspace._util import checks
from personaspace._util.io import append_jsonl, read_jsonl, remove_stale_temps, write_json, write_text
from personaspace._util.progress import Progress, callback, track
from personaspace._util.stats import paired_delta
from personaspace.engine.context import SCOPES
from personaspace.engine.forward import TokenBatch, run
from personaspace.engine.layers import default_readout_layer, default_sweep_layers, resolve_layers
from personaspace.errors import InterventionSpecError, InvalidArgumentError, RunDirectoryError
from personaspace.judges import get_judge
from personaspace.steering.evaluate import NEUTRAL_PROMPTS, evaluate_steering
from personaspace.steering.spec import SteerSpec, resolve_specs
from personaspace.vectors.store import PersonaVector

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = ["SweepConfig", "SweepResult", "sweep", "residual_norms", "recommend", "candidates", "control_verdict", "MIN_CONTROL_QUESTIONS"]

COEF_MODES = ("raw", "relative")

# Fewer paired questions than this give no interval at all (one question: a single difference).
MIN_CONTROL_QUESTIONS = 2


@dataclass
class SweepConfig:
    """Everything that determines a sweep's numbers (saved with the results)."""

    trait: str
    layers: str = "auto"  # "auto" = engine.layers.default_sweep_layers (about every tenth of the depth, 20-80%), or any layer spec
    coefs: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    coef_mode: str = "relative"
    scope: str = "all"
    n_questions: int = 4
    samples: int = 1
    max_new_tokens: int = 32
    temperature: float = 0.0
    seed: int = 0
    judge: str = "offline"
    kl_prompts: int = 4
    kl_tokens: int = 12
    coherence_min: float = 50.0
    kl_max: float = 1.0
    control: bool = True
    control_checks: int = 3  # how many of the best cells within the limits are tested against their random control

    def __post_init__(self) -> None:
        if isinstance(self.coefs, (str, bytes)) or not hasattr(self.coefs, "__iter__"):
            raise InvalidArgumentError(f"coefs must be a list of numbers such as [0.5, 1.0]; got {self.coefs!r}")
        self.coefs = tuple(checks.finite("sweep coefficient", c) for c in self.coefs)
        for name in ("n_questions", "samples", "max_new_tokens", "kl_tokens"):
            checks.positive_int(name, getattr(self, name))
        checks.sampling(self.temperature, 1.0)
        checks.threshold("coherence_min", self.coherence_min)
        checks.finite("kl_max", self.kl_max, lo=0)
        checks.integer("kl_prompts", self.kl_prompts)
        checks.positive_int("control_checks", self.control_checks)
        if not isinstance(self.layers, str):
            resolve_layers(self.layers, 1 << 30)  # whole numbers, not empty; the range is checked on use
        if self.coef_mode not in COEF_MODES:
            raise InterventionSpecError(f"coef_mode must be one of {', '.join(COEF_MODES)}, got {self.coef_mode!r}.")
        if self.scope not in SCOPES:
            raise InterventionSpecError(f"Unknown scope {self.scope!r}; use one of {', '.join(SCOPES)}.")
        if not self.coefs or not all(math.isfinite(c) for c in self.coefs):
            raise InterventionSpecError(f"Give at least one finite coefficient, got {self.coefs}.")
        if not 1 <= self.kl_prompts <= len(NEUTRAL_PROMPTS):
            raise InvalidArgumentError(f"kl_prompts must be between 1 and {len(NEUTRAL_PROMPTS)}, got {self.kl_prompts}.")

    def key(self, model: str, vector_sha: str) -> str:
        """Hash of everything that changes cell values (the limits only change the recommendation)."""
        fields = dataclasses.asdict(self)
        for name in ("coherence_min", "kl_max", "control", "control_checks", "layers", "coefs"):
            fields.pop(name)
        material = json.dumps({**fields, "model": model, "vector": vector_sha}, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()[:12]


@dataclass
class SweepResult:
    """The grid, the unsteered baseline, the recommendation and the files written."""

    config: SweepConfig
    model: str
    judge: str
    vector: dict
    baseline: dict
    cells: list[dict]
    recommendation: dict | None
    control: dict | None
    run_dir: Path | None = None
    files: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # the rule, the cells tested against their control, and the reason

    @property
    def reason(self) -> str | None:
        """One sentence: why this cell was recommended, or why none was."""
        return self.selection.get("reason")

    def to_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "model": self.model,
            "judge": self.judge,
            "vector": self.vector,
            "baseline": self.baseline,
            "cells": self.cells,
            "recommendation": self.recommendation,
            "control": self.control,
            "selection": self.selection,
        }

    def cell(self, layer: int, coef: float) -> dict:
        for c in self.cells:
            if c["layer"] == layer and math.isclose(c["coef"], coef):
                return c
        raise KeyError((layer, coef))


@torch.inference_mode()
def residual_norms(model: PersonaModel, prompts: Sequence[Any], layers: Sequence[int], system: str | None = None) -> dict[int, float]:
    """Median per-token L2 norm of the residual stream (block outputs) over the prompts' tokens.

    The first token of each row is left out: it is an attention sink whose norm is often many times
    the others' and says nothing about how big a push the other tokens feel.
    """
    layers = list(layers)
    batch = TokenBatch.pad(model, [model.prompt_ids(p, system) for p in prompts])
    keep = batch.attention_mask.bool().clone()
    keep[:, 0] = False
    found = run(model, batch, read={L: lambda hidden: hidden.float().norm(dim=-1) for L in layers}).layers
    return {L: float(found[L][keep].median()) for L in layers}


def candidates(cells: Sequence[dict], coherence_min: float, kl_max: float) -> list[dict]:
    """Cells within the coherence and KL limits, best first: highest mean trait score, ties to the smaller
    push (added norm). Cells with coefficient 0 are not candidates."""
    ok = [
        c
        for c in cells
        if c["coef"] != 0
        and _finite(c["trait"]["mean"])
        and _finite(c["coherence"]["mean"])
        and c["coherence"]["mean"] >= coherence_min
        and (c["kl"] is None or c["kl"]["mean"] <= kl_max)
    ]
    return sorted(ok, key=lambda c: (-c["trait"]["mean"], c["added_norm"]))


def recommend(cells: Sequence[dict], coherence_min: float, kl_max: float) -> dict | None:
    """The best cell within the coherence and KL limits (see :func:`candidates`), before any control.

    :func:`sweep` recommends it only once it beats its random-direction control (:func:`control_verdict`).
    """
    ok = candidates(cells, coherence_min, kl_max)
    if not ok:
        return None
    return {**_cell_summary(ok[0]), "limits": {"coherence_min": coherence_min, "kl_max": kl_max}, "candidates": len(ok)}


def _cell_summary(best: dict) -> dict:
    return {
        "layer": best["layer"],
        "coef": best["coef"],
        "raw_coef": best["raw_coef"],
        "spec": best["spec"],
        "read_layer": best["layer"],
        "applied_layer": best["layer"],
        "trait": best["trait"],
        "coherence": best["coherence"],
        "kl": best["kl"],
    }


def control_verdict(steered: Sequence[dict], random: Sequence[dict], *, seed: int = 0) -> dict:
    """Does the steered arm's trait score beat the random-direction arm's, question by question?

    ``steered`` and ``random`` are the answers of the two arms (``{"question", "trait_score"}``, as in
    :class:`~personaspace.steering.evaluate.Condition`), generated from the same prompts and seeds.
    Per question, the mean trait score over its samples scored in both arms; the difference
    (steered - random) is averaged over questions with a bootstrap 95 % interval that resamples
    questions (:func:`personaspace._util.stats.paired_delta`). The cell beats its control when at
    least :data:`MIN_CONTROL_QUESTIONS` questions were scored and the interval's lower end is above 0.
    """
    by_q: dict[str, tuple[list[float], list[float]]] = {}
    for a, b in zip(steered, random):
        if a["question"] != b["question"]:
            raise InvalidArgumentError("The steered and random-control answers are not paired question by question.")
        if a["trait_score"] is None or b["trait_score"] is None:
            continue
        s, r = by_q.setdefault(str(a["question"]), ([], []))
        s.append(a["trait_score"])
        r.append(b["trait_score"])
    s_means = [sum(s) / len(s) for s, _ in by_q.values()]
    r_means = [sum(r) / len(r) for _, r in by_q.values()]
    delta = paired_delta(s_means, r_means, seed)
    n = delta["n"]
    lo = delta["ci95"][0]
    if n < MIN_CONTROL_QUESTIONS:
        beats, why = False, f"{n} question(s) scored in both arms; an interval needs at least {MIN_CONTROL_QUESTIONS}"
    elif _finite(lo) and lo > 0:
        beats, why = True, f"steered - random {delta['mean']:+.1f} [{lo:.1f}, {delta['ci95'][1]:.1f}] over {n} questions, interval above 0"
    else:
        beats, why = False, f"steered - random {delta['mean']:+.1f} [{lo:.1f}, {delta['ci95'][1]:.1f}] over {n} questions, interval not above 0"
    return {
        "beats_control": beats,
        "trait_delta": delta,
        "unit": "question (mean over its samples; questions resampled)",
        "why": why,
    }


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def sweep(
    model: PersonaModel,
    trait: Any,
    vector: PersonaVector,
    config: SweepConfig | None = None,
    *,
    out: str | Path | None = None,
    judge: Any = None,
    progress: bool | Progress | Callable[[int, int, dict | None], None] | None = None,
    **overrides: Any,
) -> SweepResult:
    """Run a layer x coefficient grid for one trait vector; write JSON, CSV and an HTML heatmap to ``out``.

    ``progress``: a bar over the grid's cells (see :mod:`personaspace._util.progress`; True/False forces
    it), or a function called with ``(cells done, cells, row)``.
    """
    from personaspace.traits import load_trait

    trait = load_trait(trait) if isinstance(trait, str) else trait
    cfg = config or SweepConfig(trait=trait.name)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    if vector.d_model != model.d_model:
        vector.check_compatible(model.d_model, None, model.name)  # raises with both widths named
    if cfg.layers == "auto":
        layers = default_sweep_layers(model.n_layers)
    else:
        layers = resolve_layers(cfg.layers.replace("L", "") if isinstance(cfg.layers, str) else cfg.layers, model.n_layers)
    missing = [L for L in layers if L not in vector.layers]
    if missing:
        raise InterventionSpecError(f"The {vector.trait!r} vector has no row for layer(s) {missing}; sweep layers it holds.")
    judge_obj = get_judge(judge if judge is not None else cfg.judge, cache=True, probe=True)  # before any generation
    if out is not None:
        checks.writable_dir(out)
    kl_prompts = list(NEUTRAL_PROMPTS[: cfg.kl_prompts])
    eval_kw = dict(
        judge=judge_obj,
        readout_vector=vector,
        n_questions=cfg.n_questions,
        samples=cfg.samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        kl_prompts=kl_prompts,
        kl_tokens=cfg.kl_tokens,
    )
    vector_sha = hashlib.sha256(vector.data.numpy().tobytes()).hexdigest()[:16]
    run_dir = Path(out) if out is not None else None
    done: dict[tuple[int, float], dict] = {}
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        key = cfg.key(model.name, vector_sha)
        stamp = run_dir / "sweep-key.json"
        if stamp.exists():
            old = json.loads(stamp.read_text())
            if old.get("key") != key:
                raise RunDirectoryError(
                    f"{run_dir} holds a sweep with different settings (model, vector, sizes or sampling). "
                    f"Use another --out, or delete it to start over."
                )
        write_json(stamp, {"key": key, "config": dataclasses.asdict(cfg), "model": model.name, "vector_sha256_16": vector_sha})
        remove_stale_temps(run_dir, recursive=False)
        for row in read_jsonl(run_dir / "cells.jsonl"):
            done[(row["layer"], row["coef"])] = row

    questions = list(trait.evaluation_questions[: cfg.n_questions])
    norms = residual_norms(model, questions, layers)
    cache: dict = {}
    base_report = evaluate_steering(model, trait, [], control=False, _cache=cache, **eval_kw)
    base = base_report.conditions["unsteered"]
    baseline = {"trait": base.trait, "coherence": base.coherence, "projection": base.projection}

    cells: list[dict] = []
    grid = [(L, c) for L in layers for c in cfg.coefs]
    report = callback(progress)
    for k, (layer, coef) in enumerate(track(grid, "cells", progress)):
        key = (layer, coef)
        if key in done:
            cells.append(done[key])
            if report:
                report(k + 1, len(grid), done[key])
            continue
        v_norm = float(vector.at(layer).norm())
        # rounded as the cell records it, so the control check of a cell reruns exactly the grid's arm (from the cache)
        raw = round(coef * norms[layer] / v_norm if cfg.coef_mode == "relative" and v_norm > 0 else coef, 6)
        spec = SteerSpec("add", vector.trait, f"L{layer}", coef=raw, scope=cfg.scope)
        resolved = resolve_specs([spec], {vector.trait: vector}, model, scope=cfg.scope, warn=False)
        if coef == 0:
            cell_trait, cell_coh, cell_kl, proj = base.trait, base.coherence, {"mean": 0.0, "ci95": [0.0, 0.0], "n": len(kl_prompts)}, base.projection
            readout = None
        else:
            rep = evaluate_steering(model, trait, resolved, control=False, include_unsteered=False, _cache=cache, **eval_kw)
            c = rep.conditions["steered"]
            cell_trait, cell_coh, cell_kl, proj = c.trait, c.coherence, c.kl, c.projection
            readout = rep.readout["layer"]
        readout = readout if readout is not None else default_readout_layer([layer], model.n_layers)
        j = proj["layers"].index(readout) if readout in proj.get("layers", []) else None
        row = {
            "layer": layer,
            "coef": coef,
            "coef_mode": cfg.coef_mode,
            "raw_coef": raw,
            "spec": f"{spec.to_text()}  (read L{layer}, applied L{layer})",
            "added_norm": round(abs(raw) * v_norm, 4),
            "relative_norm": round(abs(raw) * v_norm / norms[layer], 4) if norms[layer] > 0 else None,
            "residual_norm": round(norms[layer], 4),
            "trait": cell_trait,
            "coherence": cell_coh,
            "kl": cell_kl,
            "readout_layer": readout,
            "projection": proj["mean"][j] if j is not None and proj["mean"] else None,
            "baseline_projection": base.projection["mean"][j] if j is not None and base.projection["mean"] else None,
        }
        cells.append(row)
        if run_dir is not None:
            append_jsonl(run_dir / "cells.jsonl", [row])
        if report:
            report(k + 1, len(grid), row)

    rec, control, selection = _select(model, trait, vector, cells, cfg, cache, eval_kw)
    result = SweepResult(
        cfg,
        model.name,
        judge_obj.identity,
        {
            "trait": vector.trait,
            "model": vector.model,
            "position": vector.position,
            "sha256_16": vector_sha,
            "norms": {L: round(float(vector.at(L).norm()), 4) for L in layers},
        },
        baseline,
        cells,
        rec,
        control,
        run_dir,
        selection=selection,
    )
    if run_dir is not None:
        result.files = write_outputs(result, run_dir)
    return result


def _select(
    model: PersonaModel, trait: Any, vector: PersonaVector, cells: list[dict], cfg: SweepConfig, cache: dict, eval_kw: dict
) -> tuple[dict | None, dict | None, dict]:
    """The recommendation (or None), the control of the recommended cell, and the selection record."""
    limits = {"coherence_min": cfg.coherence_min, "kl_max": cfg.kl_max}
    ranked = candidates(cells, cfg.coherence_min, cfg.kl_max)
    selection: dict[str, Any] = {
        "rule": (
            f"highest mean trait score among cells with coherence >= {cfg.coherence_min:g} and KL <= {cfg.kl_max:g} "
            f"(ties to the smaller push) whose trait score beats a random direction of equal norm at the same cell: "
            f"mean over questions of steered - random, bootstrap 95 % interval over questions above 0; "
            f"the best {cfg.control_checks} cell(s) within the limits are tested in that order"
        ),
        "candidates": len(ranked),
        "best_within_limits": ranked[0]["spec"] if ranked else None,
        "checked": [],
        "recommended": False,
        "reason": None,
    }
    if not ranked:
        selection["reason"] = f"No cell meets coherence >= {cfg.coherence_min:g} and KL <= {cfg.kl_max:g}."
        return None, None, selection
    if not cfg.control:
        selection["reason"] = (
            f"The random-direction control is off, so no cell was shown to beat it; the best cell within the limits "
            f"is {ranked[0]['spec']} (not recommended: unverified)."
        )
        return None, None, selection
    for cell in ranked[: cfg.control_checks]:
        spec = SteerSpec("add", vector.trait, f"L{cell['layer']}", coef=cell["raw_coef"], scope=cfg.scope)
        resolved = resolve_specs([spec], {vector.trait: vector}, model, scope=cfg.scope, warn=False)
        rep = evaluate_steering(model, trait, resolved, control=True, _cache=cache, **eval_kw)
        steered, random = rep.conditions["steered"], rep.conditions["random control"]
        verdict = control_verdict(steered.answers, random.answers, seed=cfg.seed)
        control = {
            "what": "the recommended cell next to a random direction of equal norm at the same layer",
            "random": {k: getattr(random, k) for k in ("trait", "coherence", "kl")},
            "steered": {k: getattr(steered, k) for k in ("trait", "coherence", "kl")},
            "deltas": rep.deltas,
        }
        selection["checked"].append(
            {
                "layer": cell["layer"],
                "coef": cell["coef"],
                "spec": cell["spec"],
                "steered_trait": steered.trait,
                "random_trait": random.trait,
                **verdict,
            }
        )
        if verdict["beats_control"]:
            rec = {
                **_cell_summary(cell),
                "limits": limits,
                "candidates": len(ranked),
                "vs_control": {k: verdict[k] for k in ("trait_delta", "unit", "why")},
            }
            selection["recommended"] = True
            selection["reason"] = f"{cell['spec']} beats its random-direction control: {verdict['why']}."
            return rec, control, selection
        if verdict["trait_delta"]["n"] < MIN_CONTROL_QUESTIONS:
            break  # the other cells have as few questions: no interval anywhere
    tested = selection["checked"]
    selection["reason"] = (
        f"No cell beats its random-direction control of equal norm: of the {len(ranked)} cell(s) within the limits, "
        f"the best {len(tested)} were tested ("
        + "; ".join(f"L{c['layer']} coef {c['coef']:g}: {c['why']}" for c in tested)
        + ")."
    )
    return None, None, selection


CSV_FIELDS = (
    "layer", "coef", "coef_mode", "raw_coef", "added_norm", "relative_norm",
    "trait_mean", "trait_lo", "trait_hi", "trait_n",
    "coherence_mean", "coherence_lo", "coherence_hi", "coherence_n",
    "kl_mean", "kl_lo", "kl_hi", "kl_n",
    "readout_layer", "projection", "baseline_projection", "spec",
)  # fmt: skip


def to_csv(cells: Sequence[dict]) -> str:
    """One row per cell, metrics flattened to mean / lower / upper / n columns."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in cells:
        row = {k: c.get(k) for k in CSV_FIELDS if k in c}
        for metric in ("trait", "coherence", "kl"):
            m = c.get(metric) or {}
            ci = m.get("ci95") or [None, None]
            row.update({f"{metric}_mean": m.get("mean"), f"{metric}_lo": ci[0], f"{metric}_hi": ci[1], f"{metric}_n": m.get("n")})
        w.writerow(row)
    return buf.getvalue()


def write_outputs(result: SweepResult, run_dir: Path) -> dict:
    """``sweep.json`` (the resumable cells) and ``sweep.csv``; the heatmap is drawn by
    :func:`personaspace.viz.steering.write_sweep_heatmap`."""
    files = {"json": run_dir / "sweep.json", "csv": run_dir / "sweep.csv"}
    write_json(files["json"], result.to_dict())
    write_text(files["csv"], to_csv(result.cells))
    return files
