"""Steering: steered generation beside unsteered (:func:`steer`), the KL of next-token distributions
(:func:`next_token_kl`), and the evaluation of a steer against unsteered and random-control answers
(:func:`evaluate_steering`).

Interventions are given as specifications (``evil:+2.0@L12``, ``evil[L15]@all/response``, ...), parsed and
resolved by :mod:`personaspace.steering.spec`; where a vector was *read* and where it is *applied* are
separate, explicit parts of every specification and of every output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from personaspace._util import checks
from personaspace._util.stats import mean_ci, paired_delta, scored_mean_ci
from personaspace.engine.forward import next_token_logprobs
from personaspace.engine.interventions import Intervention
from personaspace.engine.layers import check_layer, default_readout_layer, layer_index
from personaspace.errors import InterventionSpecError
from personaspace.judges import JudgeItem, get_judge
from personaspace.steering.spec import ResolvedSteer, SteerSpec, as_interventions, random_control, resolve_specs
from personaspace.vectors.store import PersonaVector

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = [
    "NEUTRAL_PROMPTS",
    "SteerResult",
    "SteeringReport",
    "steer",
    "evaluate_steering",
    "next_token_kl",
]

# Everyday requests with no persona in them: the KL of steered vs unsteered next-token distributions
# on these measures how much a steer disturbs ordinary behaviour. Written for this toolkit.
NEUTRAL_PROMPTS = (
    "What is the capital of France?",
    "Give me a simple recipe for pancakes.",
    "How many days are there in a leap year?",
    "Explain what photosynthesis is in two sentences.",
    "Suggest a name for a small grey cat.",
    "How do I convert Celsius to Fahrenheit?",
    "List three common fruits.",
    "What does a librarian do?",
)

# --------------------------------------------------------------------------------------------
# steered generation beside unsteered


@dataclass
class SteerResult:
    """Steered answers beside unsteered ones (same prompts, same sampling seed)."""

    prompts: list[Any]
    steered: list[str]
    unsteered: list[str] | None
    steers: list[ResolvedSteer]
    model: str
    settings: dict

    def rows(self) -> list[dict]:
        out = []
        for i, p in enumerate(self.prompts):
            row = {"prompt": p if isinstance(p, (str, dict)) else str(p), "steered": self.steered[i]}
            if self.unsteered is not None:
                row["unsteered"] = self.unsteered[i]
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "interventions": [r.to_dict() for r in self.steers],
            "descriptions": [r.describe() for r in self.steers],
            "warnings": [w for r in self.steers for w in r.warnings],
            "settings": self.settings,
            "rows": self.rows(),
        }

    def save(self, path: str) -> None:
        """JSON (``.json``) with every setting, or JSONL (``.jsonl``: one row per prompt, header first)."""
        import json

        from personaspace._util.io import write_json, write_text

        if str(path).endswith(".jsonl"):
            d = self.to_dict()
            header = {k: v for k, v in d.items() if k != "rows"}
            lines = [json.dumps({"header": header})] + [json.dumps(r) for r in d["rows"]]
            write_text(path, "\n".join(lines) + "\n")
        else:
            write_json(path, self.to_dict())


def steer(
    model: PersonaModel,
    specs: Sequence[SteerSpec | ResolvedSteer],
    prompts: Sequence[Any],
    *,
    vectors: Mapping[str, PersonaVector] | None = None,
    scope: str = "all",
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    baseline: bool = True,
    batch_size: int = 32,
) -> SteerResult:
    """Generate with the interventions, and (``baseline``) without them, from the same seed."""
    if not isinstance(prompts, str) and not prompts:
        raise InterventionSpecError("No prompts to steer: give at least one.")
    prompts = checks.prompt_list(prompts)
    checks.sampling(temperature, top_p, max_new_tokens)
    checks.positive_int("batch_size", batch_size)
    resolved = [s for s in specs if isinstance(s, ResolvedSteer)]
    raw = [s for s in specs if isinstance(s, SteerSpec)]
    if raw:
        if vectors is None:
            raise InterventionSpecError("Specs by name need `vectors=` (a VectorSet or dict of PersonaVectors).")
        resolved += resolve_specs(raw, vectors, model, scope=scope)
    kw = dict(system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
    steered = model.generate(list(prompts), interventions=as_interventions(resolved), **kw).texts
    plain = model.generate(list(prompts), **kw).texts if baseline else None
    settings = {k: v for k, v in kw.items() if k != "batch_size"}
    return SteerResult(list(prompts), steered, plain, resolved, model.name, settings)


# --------------------------------------------------------------------------------------------
# KL divergence from the unsteered model


def next_token_kl(
    model: PersonaModel,
    interventions: Sequence[ResolvedSteer | Intervention],
    prompts: Sequence[Any] = NEUTRAL_PROMPTS,
    *,
    max_new_tokens: int = 16,
    system: str | None = None,
    reference: Sequence[Sequence[int]] | None = None,
) -> dict:
    """KL(unsteered || steered) of next-token distributions on neutral prompts, mean per prompt.

    The unsteered model's own greedy continuation (``max_new_tokens``) of each prompt is fed to both
    models; at the last prompt token and every response token the two next-token distributions are
    compared, in nats. Returns ``{"mean", "ci95", "n" (prompts), "tokens", "per_prompt"}``.
    """
    p_ids = [model.prompt_ids(p, system) for p in prompts]
    if reference is None:
        reference = [g.response_ids for g in model.generate(list(prompts), system=system, max_new_tokens=max_new_tokens)]
    base = next_token_logprobs(model, p_ids, reference)
    steered = next_token_logprobs(model, p_ids, reference, interventions=as_interventions(interventions))
    per_prompt, tokens = [], 0
    for b, s in zip(base, steered):
        kl = (b.exp() * (b - s)).sum(-1)  # [positions]
        per_prompt.append(float(kl.mean()))
        tokens += kl.numel()
    summary = mean_ci(per_prompt)
    return {**summary, "tokens": tokens, "per_prompt": [round(x, 6) for x in per_prompt]}


# --------------------------------------------------------------------------------------------
# evaluation: trait score, coherence, KL, projection; steered vs unsteered vs a random control


@dataclass
class Condition:
    """One arm of a steering evaluation (unsteered, steered, or the random control)."""

    name: str
    interventions: list[dict]
    trait: dict  # mean, ci95, n (scored answers), n_unscored
    coherence: dict
    kl: dict | None
    projection: dict  # {"layers": [...], "mean": [...]} of response_avg . v_hat per layer
    answers: list[dict] = field(repr=False, default_factory=list)

    def to_dict(self, answers: bool = True) -> dict:
        d = {k: getattr(self, k) for k in ("name", "interventions", "trait", "coherence", "kl", "projection")}
        if answers:
            d["answers"] = self.answers
        return d


@dataclass
class SteeringReport:
    """Steered vs unsteered vs random control, with sample counts, CIs and the judge that scored."""

    trait: str
    model: str
    judge: str
    readout: dict  # vector used for projections and the summary layer
    settings: dict
    conditions: dict[str, Condition]
    deltas: dict[str, dict]

    def to_dict(self, answers: bool = True) -> dict:
        return {
            "trait": self.trait,
            "model": self.model,
            "judge": self.judge,
            "readout": self.readout,
            "settings": self.settings,
            "conditions": {k: c.to_dict(answers) for k, c in self.conditions.items()},
            "deltas": self.deltas,
        }

    def save(self, path: str) -> None:
        from personaspace._util.io import write_json

        write_json(path, self.to_dict())

    def summary_rows(self) -> list[dict]:
        """One flat row per condition (for tables)."""
        layer = self.readout.get("layer")
        rows = []
        for c in self.conditions.values():
            proj = None
            if layer is not None and layer in c.projection.get("layers", []):
                proj = c.projection["mean"][c.projection["layers"].index(layer)]
            rows.append(
                {
                    "condition": c.name,
                    "interventions": "; ".join(i["describe"] for i in c.interventions) or "none",
                    "trait": c.trait,
                    "coherence": c.coherence,
                    "kl": c.kl,
                    "projection": proj,
                }
            )
        return rows


def _steers_key(steers: Sequence[ResolvedSteer]) -> tuple:
    """What a call's steered and random-control arms depend on beyond its shared settings: per intervention,
    the spec, the vector object and the layers read and applied (the random control is drawn from these and
    the seed). ``_cache`` is shared only by calls with the same questions, sampling, seed and read-out (one
    sweep); it keeps the steers, so no vector's id is reused while it lives."""
    return tuple((repr(r.spec), id(r.vector), tuple(r.read_layers), tuple(r.applied_layers)) for r in steers)


def evaluate_steering(
    model: PersonaModel,
    trait: Any,
    steers: Sequence[ResolvedSteer],
    *,
    judge: Any = "offline",
    readout_vector: PersonaVector | None = None,
    readout_layer: int | None = None,
    n_questions: int = 8,
    samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    control: bool = True,
    kl_prompts: Sequence[Any] = NEUTRAL_PROMPTS,
    kl_tokens: int = 16,
    system: str | None = None,
    include_unsteered: bool = True,
    _cache: dict | None = None,
) -> SteeringReport:
    """Judge steered answers to the trait's evaluation questions against unsteered and control answers.

    For each condition: the judged trait score and coherence (mean, bootstrap 95% CI, n) over
    ``n_questions x samples`` answers; the KL of next-token distributions from the unsteered model on
    ``kl_prompts``; and the mean projection of the answers' response-token average onto the trait
    vector at every layer. ``control`` adds the same interventions with random vectors of equal
    per-layer norm -- the null every steering claim should be compared with. ``deltas`` gives paired
    differences (same question and sample) with bootstrap intervals.
    """
    from personaspace.traits import load_trait

    trait = load_trait(trait) if isinstance(trait, str) else trait
    checks.positive_int("n_questions", n_questions)
    checks.positive_int("samples", samples)
    checks.positive_int("kl_tokens", kl_tokens)
    checks.sampling(temperature, 1.0, max_new_tokens)
    if readout_layer is not None:
        check_layer(layer_index(readout_layer), model.n_layers)
    judge = get_judge(judge, cache=True, probe=True)  # spec, key and endpoint checked before any generation
    questions = list(trait.evaluation_questions[:n_questions])
    prompts = [q for q in questions for _ in range(samples)]
    if readout_vector is None:
        named = [r.vector for r in steers if r.vector.trait == trait.name]
        readout_vector = named[0] if named else None
    applied = sorted({L for r in steers for L in r.applied_layers})
    layers = list(readout_vector.layers) if readout_vector is not None else []
    layers = [L for L in layers if L < model.n_layers]
    if readout_layer is None and layers:
        readout_layer = default_readout_layer(applied, model.n_layers)
        if readout_layer not in layers:
            readout_layer = layers[-1]
    cache = _cache if _cache is not None else {}
    gen_kw = dict(system=system, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    arms: list[tuple[str, list[ResolvedSteer]]] = []
    if include_unsteered:
        arms.append(("unsteered", []))
    if steers:
        arms.append(("steered", list(steers)))
    if control and steers:
        arms.append(("random control", random_control(steers, model, seed=seed)))

    kl_ref = None
    runs: dict[str, tuple[list[str], Tensor | None]] = {}
    steers_key = _steers_key(steers)
    for name, arm in arms:
        key = (name,) if name == "unsteered" else (name, *steers_key)
        if key in cache:  # the same arm generated earlier in this sweep (the grid's cell, rechecked against its control)
            runs[name] = cache[key]
            continue
        out = model.generate(
            prompts,
            interventions=as_interventions(arm),
            capture_layers=layers if layers else False,
            reductions=("response_avg",),
            **gen_kw,
        )
        proj = None
        if layers:
            acts = out.activations["response_avg"]  # [samples, layers, d]
            units = torch.stack([readout_vector.unit(L) for L in layers])  # [layers, d]
            proj = (acts * units[None]).sum(-1)  # [samples, layers]
        runs[name] = (out.texts, proj)
        cache[key] = runs[name]
        if arm:
            cache.setdefault("steers", []).append(steers)  # alive as long as the key that names their vectors' ids
    if arms and any(name != "unsteered" for name, _ in arms):
        kl_ref = cache.get("kl_ref")
        if kl_ref is None:
            kl_ref = [g.response_ids for g in model.generate(list(kl_prompts), system=system, max_new_tokens=kl_tokens)]
            cache["kl_ref"] = kl_ref

    # Judge everything in one call (the judge batches and caches).
    items, index = [], []
    for name, _ in arms:
        texts = runs[name][0]
        for i, (q, a) in enumerate(zip(prompts, texts)):
            items.append(JudgeItem(q, a, "trait", trait))
            items.append(JudgeItem(q, a, "coherence"))
            index.append((name, i))
    scores = judge.score(items)
    trait_scores: dict[str, list] = {name: [None] * len(prompts) for name, _ in arms}
    coh_scores: dict[str, list] = {name: [None] * len(prompts) for name, _ in arms}
    for k, (name, i) in enumerate(index):
        trait_scores[name][i] = scores[2 * k].value
        coh_scores[name][i] = scores[2 * k + 1].value

    conditions: dict[str, Condition] = {}
    for name, arm in arms:
        texts, proj = runs[name]
        kl = None
        if arm:
            kl = next_token_kl(model, arm, kl_prompts, system=system, reference=kl_ref)
        projection = {"layers": layers, "mean": [], "ci95": []}
        if proj is not None:
            for j in range(len(layers)):
                s = mean_ci(proj[:, j].tolist(), seed=seed)
                projection["mean"].append(round(s["mean"], 4))
                projection["ci95"].append([round(x, 4) for x in s["ci95"]])
            projection["n"] = len(prompts)
        answers = [
            {
                "question": q,
                "answer": a,
                "trait_score": trait_scores[name][i],
                "coherence": coh_scores[name][i],
                **({"projection_at_readout": round(float(proj[i, layers.index(readout_layer)]), 4)} if proj is not None else {}),
            }
            for i, (q, a) in enumerate(zip(prompts, texts))
        ]
        conditions[name] = Condition(
            name,
            [{**r.to_dict(), "describe": r.describe()} for r in arm],
            scored_mean_ci(trait_scores[name], seed),
            scored_mean_ci(coh_scores[name], seed),
            kl,
            projection,
            answers,
        )

    deltas: dict[str, dict] = {}
    pairs = [("steered", "unsteered"), ("steered", "random control"), ("random control", "unsteered")]
    for a, b in pairs:
        if a in conditions and b in conditions:
            d = {
                "trait": paired_delta(trait_scores[a], trait_scores[b], seed),
                "coherence": paired_delta(coh_scores[a], coh_scores[b], seed),
            }
            if readout_layer is not None and runs[a][1] is not None:
                j = layers.index(readout_layer)
                d["projection"] = paired_delta(runs[a][1][:, j].tolist(), runs[b][1][:, j].tolist(), seed)
            deltas[f"{a} - {b}"] = d

    readout = {
        "vector": readout_vector.trait if readout_vector is not None else None,
        "vector_model": readout_vector.model if readout_vector is not None else None,
        "position": readout_vector.position if readout_vector is not None else None,
        "layer": readout_layer,
        "what": "mean over response tokens of h[layer] . v_hat[layer] (layer = output of block layer)",
    }
    settings = {
        "n_questions": len(questions),
        "samples_per_question": samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "kl": {"prompts": len(kl_prompts), "tokens_per_prompt": kl_tokens, "direction": "KL(unsteered || steered), nats"},
        "control": "random direction, equal per-layer norm" if control else None,
    }
    return SteeringReport(trait.name, model.name, judge.identity, readout, settings, conditions, deltas)
