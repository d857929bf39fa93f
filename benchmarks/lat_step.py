"""Benchmark: one LPA (targeted LAT) outer step vs one plain SFT step on the same batch, same process.

Reference: one SFT step = forward of the batch's (prompt + safe completion) rows, cross-entropy, backward
into the LoRA adapter, Adam update. LAT outer step = ``pgd_steps`` adversary steps (forward + backward into
the perturbation only) plus ``model_steps`` defence updates (towards + away + KL on anchors, under the
frozen perturbation, with the base model's anchor log-probs computed once). Same adapter, same batch.
Also times each component, so the ratio for other step counts (e.g. the published 16 + 4) follows.

Run: ``.venv/bin/python benchmarks/lat_step.py [--threads 1]``. Writes benchmarks/results/lat_step.json.
"""

from __future__ import annotations

import argparse

import torch
from _common import best_of, report

from personaspace.align.data import lpa_data
from personaspace.align.lat import (
    Anchor,
    AttackConfig,
    DefenceWeights,
    base_logprobs,
    defence_step,
    pack_anchors,
    pack_triples,
    pgd_attack,
)
from personaspace.align.training import LORA_TARGETS, TrainConfig
from personaspace.engine import PersonaModel
from personaspace.engine.adapters import add_lora


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--pgd-steps", type=int, default=defaults.pgd_steps)
    parser.add_argument("--model-steps", type=int, default=defaults.model_steps)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = PersonaModel.load(args.model)
    data = lpa_data()
    adapted = add_lora(base, r=defaults.lora_r, targets=LORA_TARGETS)
    m = adapted.model
    batch = pack_triples(m, data.train[: args.batch_size])
    anchors = pack_anchors(m, data.anchors[: defaults.anchor_batch_size])
    sft_batch = pack_anchors(m, [Anchor(t.prompt, t.safe) for t in data.train[: args.batch_size]])
    opt = torch.optim.Adam(adapted.trainable(), lr=defaults.lr)
    sft_weights = DefenceWeights(towards=1.0, away=0.0, kl=0.0)
    attack = AttackConfig(steps=args.pgd_steps, lr=defaults.pgd_lr)

    def sft_step() -> None:
        defence_step(m, opt, sft_batch, None, None, None, sft_weights)

    def anchor_reference():
        with adapted.base_view() as b:
            return base_logprobs(b, anchors)

    def pgd(steps: int):
        return lambda: pgd_attack(m, batch, AttackConfig(steps=steps, lr=defaults.pgd_lr))

    def defence_one(pert, ref) -> None:
        defence_step(m, opt, batch, pert, anchors, ref, DefenceWeights())

    def lat_outer_step() -> None:
        ref = anchor_reference()
        pert = pgd_attack(m, batch, attack).perturbation
        for _ in range(args.model_steps):
            defence_one(pert, ref)

    sft_step()  # warm-up (allocations, lazy init)
    t_sft = best_of(sft_step, args.repeats)
    t_outer = best_of(lat_outer_step, args.repeats)
    ref = anchor_reference()
    pert = pgd_attack(m, batch, AttackConfig(steps=1, lr=defaults.pgd_lr)).perturbation
    t_pgd1 = best_of(pgd(1), args.repeats)  # one step plus the final loss forward
    t_pgd = max(best_of(pgd(2), args.repeats) - t_pgd1, 0.0)  # one more PGD step
    t_def = best_of(lambda: defence_one(pert, ref), args.repeats)
    t_ref = best_of(anchor_reference, args.repeats)

    def predicted(pgd_steps: int, model_steps: int) -> float:
        return (t_ref + t_pgd1 + (pgd_steps - 1) * t_pgd + model_steps * t_def) / t_sft

    result = {
        "model": base.name,
        "d_model": base.d_model,
        "n_layers": base.n_layers,
        "batch_rows": len(batch),
        "batch_tokens": batch.n_tokens,
        "anchor_rows": len(anchors),
        "pgd_steps": args.pgd_steps,
        "model_steps": args.model_steps,
        "lora_r": defaults.lora_r,
        "seconds": {"sft_step": t_sft, "lat_outer_step": t_outer, "pgd_step": t_pgd, "pgd_attack_1_step": t_pgd1, "defence_step": t_def, "anchor_reference": t_ref},
        "ratio_lat_outer_to_sft_step": t_outer / t_sft,
        "ratio_predicted_from_components": predicted(args.pgd_steps, args.model_steps),
        "ratio_predicted_published_16_pgd_4_model": predicted(16, 4),
        "threads": torch.get_num_threads(),
    }
    report("lat_step", result)
    print(f"SFT step {t_sft:.2f} s | LAT outer step ({args.pgd_steps} PGD + {args.model_steps} defence) {t_outer:.2f} s "
          f"| ratio {t_outer / t_sft:.1f}x (components predict {predicted(args.pgd_steps, args.model_steps):.1f}x; "
          f"published 16+4: {predicted(16, 4):.1f}x)")

if __name__ == "__main__":
    main()
