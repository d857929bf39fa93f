"""Training loops: Latent Personality Alignment (targeted LAT) and the plain-SFT ablation on the same data.

One LPA outer step: draw a batch of (prompt, safe, unsafe) triples and a batch of anchors; run PGD for
``pgd_steps`` to find the bounded perturbation that pushes the model towards the unsafe completions; then
``model_steps`` defence updates of the LoRA adapter under that frozen perturbation (towards safe, away
from unsafe, KL to the base model on the anchors). The SFT ablation runs the identical loop (same
batches, same number of updates, same adapter and optimiser, same KL anchor) without the adversary and,
by default, without the away term: cross-entropy towards the safe completion only.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from personaspace._util.io import atomic_dir, write_json
from personaspace._util.progress import Progress, callback, progress_scope
from personaspace.align.lat import (
    AlignmentError,
    Anchor,
    AttackConfig,
    DefenceWeights,
    Triple,
    base_logprobs,
    defence_step,
    pack,
    pack_anchors,
    pack_triples,
    pgd_attack,
)
from personaspace.engine import PersonaModel
from personaspace.engine.adapters import ADAPTER_DIR, Adapted, add_lora

METHODS = ("lpa", "sft")
TRAIN_FILE = "train.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")  # the published recipe's LoRA modules


@dataclass
class TrainConfig:
    """Sizes of one alignment run. Defaults are sized for a CPU and a small model; the published recipe is
    ``outer_steps=12, pgd_steps=16, model_steps=4`` (see docs/align.md). Learning rates, radius, layers and
    LoRA rank follow the published values."""

    outer_steps: int = 8  # published: ~11-18
    batch_size: int = 4
    anchor_batch_size: int = 4
    pgd_steps: int = 8  # published: 16
    pgd_lr: float = 1e-3
    model_steps: int = 2  # published: 4
    lr: float = 8e-5
    eps: float | None = None  # None: 6.0 * sqrt(d_model / 4096)
    layers: Any = None  # None: embedding + 4 evenly spaced blocks
    lora_r: int = 64
    lora_alpha: float | None = None  # None: equal to lora_r (scale 1)
    towards: float = 1.0
    away: float = 1.0
    kl: float = 1.0
    seed: int = 0

    def check(self) -> None:
        for name in ("outer_steps", "batch_size", "model_steps", "pgd_steps"):
            if getattr(self, name) < 1:
                raise AlignmentError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.anchor_batch_size < 0:
            raise AlignmentError(f"anchor_batch_size must be >= 0, got {self.anchor_batch_size}.")
        if self.lr <= 0 or self.pgd_lr <= 0:
            raise AlignmentError("Learning rates must be positive.")


@dataclass
class AlignResult:
    """A trained adapter with everything needed to trust and reproduce it."""

    adapted: Adapted
    method: str
    config: dict[str, Any]
    counts: dict[str, int]
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    data_source: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> PersonaModel:
        return self.adapted.model

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "base_model": self.config.get("base_model"),
            "config": self.config,
            "counts": self.counts,
            "seconds": round(self.seconds, 1),
            "data": self.data_source,
            "log": self.log,
        }

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``out/adapter/`` (peft) and ``out/train.json`` in one atomic step."""
        with atomic_dir(out) as tmp:
            self.adapted.save(tmp / ADAPTER_DIR, method=self.method)
            write_json(tmp / TRAIN_FILE, self.summary())
        return Path(out)


def _batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices: shuffled passes over ``range(n)``; a batch never holds an index twice."""
    size = min(size, n)
    pool: list[int] = []
    while True:
        batch: list[int] = []
        while len(batch) < size:
            if not pool:
                pool = [i for i in range(n) if i not in batch]
                rng.shuffle(pool)
            batch.append(pool.pop())
        yield batch


def train(
    model: PersonaModel,
    triples: Sequence[Triple],
    anchors: Sequence[Anchor] = (),
    config: TrainConfig | None = None,
    *,
    method: str = "lpa",
    data_source: dict[str, Any] | None = None,
    progress: bool | Progress | Callable[[int, dict[str, Any]], None] | None = None,
) -> AlignResult:
    """Train a LoRA adapter on a copy of ``model`` with LPA (``method="lpa"``) or the SFT ablation (``"sft"``).

    ``progress``: a bar over the outer steps with the defence losses (see :mod:`personaspace._util.progress`;
    True/False forces it), or a function called with ``(step, log entry)``.
    """
    cfg = dataclasses.replace(config) if config is not None else TrainConfig()
    cfg.check()
    if method not in METHODS:
        raise AlignmentError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "sft":
        cfg.away = 0.0  # plain SFT: cross-entropy towards the safe completion (+ the same KL anchor)
    triples, anchors = list(triples), list(anchors)
    if not triples:
        raise AlignmentError("No training triples.")
    attack = AttackConfig(eps=cfg.eps, steps=cfg.pgd_steps, lr=cfg.pgd_lr, layers=cfg.layers)
    eps, layers = attack.resolved(model)
    rng = random.Random(cfg.seed)
    adapted = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, targets=LORA_TARGETS, seed=cfg.seed, name=method)
    m = adapted.model
    optimizer = torch.optim.Adam(adapted.trainable(), lr=cfg.lr)
    weights = DefenceWeights(cfg.towards, cfg.away, cfg.kl if anchors else 0.0)
    triple_batches = _batches(len(triples), cfg.batch_size, rng)
    anchor_batches = _batches(len(anchors), cfg.anchor_batch_size, rng) if anchors and cfg.anchor_batch_size and weights.kl else None
    seen_triples: set[int] = set()
    seen_anchors: set[int] = set()
    log: list[dict[str, Any]] = []
    start = time.perf_counter()
    report = callback(progress)
    with progress_scope(progress) as bars:
        bars.update("steps", 0, cfg.outer_steps)
        for step in range(cfg.outer_steps):
            idx = next(triple_batches)
            seen_triples.update(idx)
            rows = [triples[i] for i in idx]
            # Only the adversary and the away term read the unsafe completion; plain SFT packs prompt + safe.
            batch = pack_triples(m, rows) if method == "lpa" or weights.away else pack(m, [t.prompt for t in rows], [t.safe for t in rows])
            anchor_batch = anchor_base = None
            if anchor_batches is not None:
                idx_a = next(anchor_batches)
                seen_anchors.update(idx_a)
                anchor_batch = pack_anchors(m, [anchors[i] for i in idx_a])
                with adapted.base_view() as base:
                    anchor_base = base_logprobs(base, anchor_batch)
            entry: dict[str, Any] = {"step": step + 1}
            perturbation = None
            if method == "lpa":
                result = pgd_attack(m, batch, attack)
                perturbation = result.perturbation
                entry.update(adv_loss_start=round(result.losses[0], 4), adv_loss_end=round(result.losses[-1], 4), delta_max_norm=round(perturbation.max_norm(), 4))
            for k in range(cfg.model_steps):
                parts = defence_step(m, optimizer, batch, perturbation, anchor_batch, anchor_base, weights)
                if k == 0:
                    entry.update({f"def_{name}": round(v, 4) for name, v in parts.items()})
            entry["seconds"] = round(time.perf_counter() - start, 1)
            log.append(entry)
            if report is not None:
                report(step + 1, entry)
            bars.update("steps", step + 1, cfg.outer_steps, note="  ".join(f"{k[4:]} {v:.3f}" for k, v in entry.items() if k.startswith("def_")))
    n_trainable = adapted.n_trainable()
    for p in adapted.trainable():
        p.requires_grad_(False)
    seconds = time.perf_counter() - start
    counts = {
        "train_triples": len(triples),
        "train_anchors": len(anchors) if weights.kl else 0,
        "triples_used": len(seen_triples),
        "anchors_used": len(seen_anchors),
        "triple_rows_seen": cfg.outer_steps * min(cfg.batch_size, len(triples)),
        "model_updates": cfg.outer_steps * cfg.model_steps,
        "pgd_steps": cfg.outer_steps * cfg.pgd_steps if method == "lpa" else 0,
        "trainable_params": n_trainable,
    }
    config_out = {
        **dataclasses.asdict(cfg),
        "eps": eps if method == "lpa" else None,
        "layers": list(layers) if method == "lpa" else None,
        "base_model": model.name,
        "base_model_hash": model.model_hash,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
    }
    return AlignResult(adapted, method, config_out, counts, log, seconds, dict(data_source or {}))
