"""The comparison the reviewers asked for: base vs LPA vs plain SFT on the same statements.

Both methods train the same LoRA adapter on the same triples and anchors for the same number of model
updates; LPA adds the latent adversary (and the away term). Every model is evaluated on the same sets:
the harm probe over the request set, statement preference on held-out and unseen-trait statements and on
held-out positive statements, a latent attack of fixed budget, and utility on neutral prompts.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personaspace._util.io import write_json, write_text
from personaspace._util.progress import Progress, callback, track
from personaspace.align.data import STATEMENT_FORMAT, LPAData, Request, load_requests, neutral_prompts
from personaspace.align.evaluate import (
    attack_success,
    generation_refusals,
    harm_probe,
    reference_answers,
    statement_preference,
    utility,
)
from personaspace.align.lat import Anchor, AttackConfig, Triple
from personaspace.align.training import TrainConfig, train
from personaspace.engine import PersonaModel
from personaspace.judges import get_judge
from personaspace.monitoring.shift import projection_shift

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


@dataclass
class EvalConfig:
    """Evaluation sizes. The attack uses the training radius with a step size that can reach it."""

    attack_eps: float | None = None  # None: the width-scaled default radius
    attack_steps: int = 8
    attack_lrs: tuple[float, ...] = (1e-3, 1e-2)  # 1e-3: the training adversary's strength; 1e-2: reaches the radius
    attack_layers: Any = None
    attack_rows: int = 16  # held-out statements first, then unseen-trait statements up to this many
    utility_tokens: int = 32
    utility_prompts: int | None = None  # None: all built-in neutral prompts
    generate: int = 0  # requests per label for the generation-based refusal check (0: skip)
    judge: str = "offline"
    vectors: Any = None  # a VectorSet for projection shifts (optional)
    batch_size: int = 16
    seed: int = 0

    def attacks(self) -> list[AttackConfig]:
        return [AttackConfig(eps=self.attack_eps, steps=self.attack_steps, lr=lr, layers=self.attack_layers) for lr in self.attack_lrs]


def anchor_triples(anchors: Sequence[Anchor], disagree: str) -> list[Triple]:
    """Positive statements as triples whose unsafe completion is the disagreement."""
    return [Triple(a.prompt, safe=a.completion, unsafe=disagree) for a in anchors]


def attack_set(data: LPAData, rows: int, seed: int = 0) -> list[Triple]:
    chosen = list(data.test)[:rows]
    rest = list(data.unseen)
    random.Random(seed).shuffle(rest)
    return chosen + rest[: max(0, rows - len(chosen))]


def evaluate_model(
    model: PersonaModel,
    base: PersonaModel,
    data: LPAData,
    requests: Sequence[Request],
    answers: Sequence[Anchor],
    cfg: EvalConfig,
) -> dict[str, Any]:
    """Every metric for one model (``model is base`` for the base row)."""
    t0 = time.perf_counter()
    disagree = data.source.get("completions", {}).get("safe", STATEMENT_FORMAT.disagree)
    attacked = attack_set(data, cfg.attack_rows, cfg.seed)
    res: dict[str, Any] = {
        "harm_probe": harm_probe(model, requests, batch_size=cfg.batch_size),
        "statements": {
            "heldout_negative": statement_preference(model, data.test, batch_size=cfg.batch_size) if data.test else None,
            "unseen_negative": statement_preference(model, data.unseen, batch_size=cfg.batch_size) if data.unseen else None,
            "heldout_positive": statement_preference(model, anchor_triples(data.test_anchors, disagree), batch_size=cfg.batch_size) if data.test_anchors else None,
        },
        "attacks": [attack_success(model, attacked, a, batch_size=min(cfg.batch_size, 8)) for a in cfg.attacks()],
        "utility": utility(model, base, answers, batch_size=min(cfg.batch_size, 8)),
    }
    if cfg.vectors is not None:
        traits = [t for t in data.source.get("traits", []) if t in cfg.vectors]
        res["projections"] = projection_shift(base, model, cfg.vectors, traits=traits) if traits else {}
    if cfg.generate:
        harmful = [r for r in requests if r.label == "harmful"][: cfg.generate]
        benign = [r for r in requests if r.label == "benign"][: cfg.generate]
        res["generation"] = generation_refusals(model, harmful + benign, cfg.judge)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def preflight(cfg: EvalConfig, out: str | os.PathLike | None = None) -> None:
    """What can fail late, checked first: the judge (when answers will be judged) and the output directory."""
    from personaspace._util import checks

    checks.non_negative_int("generate", cfg.generate)
    checks.positive_int("attack_steps", cfg.attack_steps)
    checks.positive_int("batch_size", cfg.batch_size)
    if cfg.attack_eps is not None:
        checks.finite("attack_eps", cfg.attack_eps, lo=0, lo_open=True)
    for lr in cfg.attack_lrs:
        checks.finite("attack learning rate", lr, lo=0, lo_open=True)
    if cfg.generate:
        get_judge(cfg.judge, probe=True)
    if out is not None:
        checks.writable_dir(out)


def utility_answers(base: PersonaModel, cfg: EvalConfig) -> list[Anchor]:
    """The base model's answers to the neutral prompts that the utility check scores every model on."""
    return reference_answers(base, neutral_prompts()[: cfg.utility_prompts], max_new_tokens=cfg.utility_tokens)


def compare(
    base: PersonaModel,
    data: LPAData,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    methods: Sequence[str] = ("lpa", "sft"),
    requests: Sequence[Request] | None = None,
    progress: bool | Progress | Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train each method on ``data``, evaluate base and every method, and write the table to ``out``.

    ``progress``: bars over the methods and each one's training steps (see
    :mod:`personaspace._util.progress`; True/False forces them), or a function given one line per stage.
    """
    tcfg = train_config or TrainConfig()
    ecfg = eval_config or EvalConfig()
    preflight(ecfg, out)
    own = callback(progress)  # the caller's own function (the older form), else bars
    say = own or (lambda _msg: None)
    requests = list(requests) if requests is not None else load_requests()
    say("base: reference answers for the utility check")
    answers = utility_answers(base, ecfg)
    say("base: evaluating")
    rows: dict[str, Any] = {"base": {"eval": evaluate_model(base, base, data, requests, answers, ecfg), "counts": None}}
    for method in track(methods, "methods", progress):
        say(f"{method}: training")
        result = train(base, data.train, data.anchors, tcfg, method=method, data_source=data.source,
                       progress=(lambda step, entry, m=method: say(f"{m}: step {step}/{tcfg.outer_steps} {entry}")) if own else None)
        if out is not None:
            result.save(Path(out) / method)
        say(f"{method}: evaluating")
        rows[method] = {
            "eval": evaluate_model(result.model, base, data, requests, answers, ecfg),
            "counts": result.counts,
            "config": result.config,
            "train_seconds": round(result.seconds, 1),
            "log": result.log,
        }
        del result
        gc.collect()
    report = {
        "model": base.name,
        "data": {**data.source, "counts": data.counts()},
        "requests": {"n_harmful": sum(r.label == "harmful" for r in requests), "n_benign": sum(r.label == "benign" for r in requests)},
        "train_config": dataclasses.asdict(tcfg),
        "eval_config": {k: v for k, v in dataclasses.asdict(ecfg).items() if k != "vectors"},
        "rows": rows,
        "table": table_markdown(rows),
    }
    if out is not None:
        write_json(Path(out) / COMPARE_JSON, report)
        write_text(Path(out) / COMPARE_MD, report["table"] + "\n")
    return report


# ---- the table --------------------------------------------------------------------------------------


def _rate(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    lo, hi = max(0.0, r["ci95"][0]), min(1.0, r["ci95"][1])
    return f"{r['rate']:.2f} [{lo:.2f}, {hi:.2f}] (n={r['n']})"


def _mean(r: dict[str, Any] | None, digits: int = 3) -> str:
    if not r:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _trained(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "-"
    return f"{counts['triples_used']} statements + {counts['anchors_used']} anchors, {counts['model_updates']} updates"


def table_markdown(rows: dict[str, Any]) -> str:
    """Two markdown tables: safety (probe, statements, attack) and utility, with 95 % intervals."""
    head = (
        "| model | trained on | probe refusal (harmful) ↑ | probe over-refusal (benign) ↓ | misclassification ↓ | AUROC ↑ |\n"
        "|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, row in rows.items():
        hp = row["eval"]["harm_probe"]
        au = hp["auroc"]
        lines.append(
            f"| {name} | {_trained(row['counts'])} | {_rate(hp['refusal'])} | {_rate(hp['over_refusal'])} | "
            f"{_rate(hp['misclassification'])} | {au['value']:.3f} [{au['ci95'][0]:.3f}, {au['ci95'][1]:.3f}] |"
        )
    first = next(iter(rows.values()))["eval"]["attacks"]
    attack_heads = " | ".join(f"attack success, lr {a['budget']['lr']:g} x {a['budget']['steps']} ↓" for a in first)
    lines += [
        "",
        f"| model | agrees: held-out negative ↓ | agrees: unseen-trait negative ↓ | disagrees: held-out positive ↓ | {attack_heads} | KL/token vs base ↓ | perplexity (base answers) |",
        "|---|---|---|---|" + "---|" * len(first) + "---|---|",
    ]
    for name, row in rows.items():
        ev = row["eval"]
        st = ev["statements"]
        ut = ev["utility"]
        cells = [f"{_rate(s['unsafe_preferred'])}, margin {_mean(s['margin'], 1)}" if s else "-" for s in
                 (st["heldout_negative"], st["unseen_negative"], st["heldout_positive"])]
        lines.append(
            f"| {name} | {' | '.join(cells)} | "
            + " | ".join(f"{_rate(a['success'])}, margin {_mean(a['attacked_margin'], 1)}" for a in ev["attacks"])
            + f" | {_mean(ut['kl_per_token'], 4)} | {ut['perplexity']:.2f} |"
        )
    return "\n".join(lines)
