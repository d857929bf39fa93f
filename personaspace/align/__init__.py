"""Latent Personality Alignment (LPA): latent adversarial training on trait statements.

>>> from personaspace.engine import PersonaModel                                    # doctest: +SKIP
>>> from personaspace.align import lpa_data, train, compare                         # doctest: +SKIP
>>> model = PersonaModel.load()                                                     # doctest: +SKIP
>>> data = lpa_data(["evil", "sycophancy", "hallucination"])                        # doctest: +SKIP
>>> result = train(model, data.train, data.anchors, method="lpa")                   # doctest: +SKIP
>>> result.save("runs/align/lpa")                                                   # doctest: +SKIP

Modules: :mod:`~personaspace.align.lat` (perturbation, PGD adversary, defence step; any
(prompt, safe, unsafe) data), :mod:`~personaspace.engine.adapters` (the adapter), :mod:`~personaspace.align.data`
(statements, instructions, user files, request sets), :mod:`~personaspace.align.training` (LPA and the SFT
ablation), :mod:`~personaspace.align.evaluate` (harm probe, attacks, utility; projections come from
:func:`personaspace.monitoring.shift.projection_shift`) and
:mod:`~personaspace.align.comparison` (base vs LPA vs SFT table). See docs/align.md.
"""

from __future__ import annotations

from personaspace.align.comparison import EvalConfig, compare, evaluate_model, table_markdown
from personaspace.align.data import (
    INSTRUCTION_FORMAT,
    STATEMENT_FORMAT,
    Format,
    LPAData,
    Request,
    load_requests,
    load_statements,
    load_triples,
    lpa_data,
    neutral_prompts,
)
from personaspace.align.evaluate import (
    attack_success,
    generation_refusals,
    harm_probe,
    reference_answers,
    refusal_logodds,
    statement_preference,
    utility,
)
from personaspace.align.lat import (
    EMBED,
    AlignmentError,
    Anchor,
    AttackConfig,
    AttackResult,
    DefenceWeights,
    Packed,
    Perturbation,
    Triple,
    defence_loss,
    defence_step,
    eps_for_width,
    pack_anchors,
    pack_triples,
    pgd_attack,
)
from personaspace.align.training import AlignResult, TrainConfig, train
from personaspace.engine.adapters import Adapted, add_lora, load_adapter

__all__ = [
    "EMBED",
    "INSTRUCTION_FORMAT",
    "STATEMENT_FORMAT",
    "Adapted",
    "AlignResult",
    "AlignmentError",
    "Anchor",
    "AttackConfig",
    "AttackResult",
    "DefenceWeights",
    "EvalConfig",
    "Format",
    "LPAData",
    "Packed",
    "Perturbation",
    "Request",
    "TrainConfig",
    "Triple",
    "add_lora",
    "attack_success",
    "compare",
    "defence_loss",
    "defence_step",
    "eps_for_width",
    "evaluate_model",
    "generation_refusals",
    "harm_probe",
    "load_adapter",
    "load_requests",
    "load_statements",
    "load_triples",
    "lpa_data",
    "neutral_prompts",
    "pack_anchors",
    "pack_triples",
    "pgd_attack",
    "reference_answers",
    "refusal_logodds",
    "statement_preference",
    "table_markdown",
    "train",
    "utility",
]
