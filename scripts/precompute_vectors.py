"""Extract every built-in trait on one model, save the VectorSet, and write the results table for docs.

Usage: ``.venv/bin/python scripts/precompute_vectors.py [--model smollm2-135m-instruct] [--traits evil,humor]``
(reduced sizes: ``--questions 10 --max-new-tokens 32``; ``--threads 1`` on a shared machine).
Writes ``vectors/<model>/`` (all three positions) and ``docs/results/extraction_<model>.md``. Resumable: run
directories under ``runs/extract/`` are reused. Runs from the repository root, so that the vectors record
their run directory as the relative ``runs/extract/<model>/<trait>`` (found again by the geometry
bootstrap from the checkout, not tied to this machine's path).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import personaspace as ps
from personaspace._util.io import write_text
from personaspace.vectors.store import VectorSet

ROOT = Path(__file__).resolve().parents[1]


def bands(n_layers: int) -> dict[str, range]:
    """Early, middle and late thirds of the layers (0-9, 10-19, 20-29 on 30 layers)."""
    cuts = [0, round(n_layers / 3), round(2 * n_layers / 3), n_layers]
    names = ("early", "middle", "late")
    return {f"{n} ({a}-{b - 1})": range(a, b) for n, a, b in zip(names, cuts, cuts[1:])}


def band_text(per_layer: list[float], layers: range) -> str:
    vals = [per_layer[i] for i in layers if i < len(per_layer)]
    return f"{np.mean(vals):.2f} / {max(vals):.2f}" if vals else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=ps.DEFAULT_MODEL)
    parser.add_argument("--traits", default=",".join(ps.list_traits()))
    parser.add_argument("--judge", default="offline")
    parser.add_argument("--instructions", type=int, default=5, help="instruction pairs per trait")
    parser.add_argument("--questions", type=int, default=20, help="extraction questions per trait")
    parser.add_argument("--samples", type=int, default=1, help="samples per (instruction, question) and side")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = dict(n_instructions=args.instructions, n_questions=args.questions, samples_per_pair=args.samples,
                 max_new_tokens=args.max_new_tokens)

    os.chdir(ROOT)  # relative run directories: see the module docstring
    model = ps.load_model(args.model)
    out_dir = ROOT / "vectors" / args.model
    summaries = {}
    for name in args.traits.split(","):
        started = time.perf_counter()
        result = ps.extract(name, model, judge=args.judge, out=Path("runs") / "extract" / args.model / name, **sizes)
        for vec in result.vectors.values():
            VectorSet([vec]).save(out_dir)
        summaries[name] = result.summary
        sep = result.summary["separation"]["response_avg"]
        print(f"{name:18s} kept {result.summary['kept']:3d}/{result.summary['pairs']}  best AUROC {sep['best']} @ L{sep['best_layer']}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_text(ROOT / "docs" / "results" / f"extraction_{args.model}.json", json.dumps(summaries, indent=1))
    write_text(ROOT / "docs" / "results" / f"extraction_{args.model}.md", report(args.model, summaries, model.n_layers, sizes, model.formatter.has_template))


def report(model: str, summaries: dict, n_layers: int = 30, sizes: dict | None = None, chat: bool = True) -> str:
    first = next(iter(summaries.values()))
    c = {"n_instructions": 5, "n_questions": 20, "samples_per_pair": 1, "max_new_tokens": 48, **(sizes or {})}
    defaults = (c["n_instructions"], c["n_questions"], c["samples_per_pair"], c["max_new_tokens"]) == (5, 20, 1, 48)
    n_pairs = c["n_instructions"] * c["n_questions"] * c["samples_per_pair"]
    BANDS = bands(n_layers)
    cfg_line = (
        f"Settings: {'the defaults of `personaspace extract`' if defaults else '**reduced sizes**'} "
        f"({c['n_instructions']} instruction pairs x {c['n_questions']} extraction questions x {c['samples_per_pair']} sample(s) "
        f"per side = {n_pairs} pairs, temperature 1, {c['max_new_tokens']} new tokens), judge `{first['judge']}`, thresholds "
        f"pos >= {first['thresholds']['pos_trait_min']}, neg < {first['thresholds']['neg_trait_below']}, "
        f"coherence >= {first['thresholds']['coherence_min']}."
    )
    lines = [
        f"# Extraction results: {model}",
        "",
        "Produced by `python scripts/precompute_vectors.py"
        + ("" if defaults and model == "smollm2-135m-instruct" else
           f" --model {model} --traits {','.join(summaries)} --instructions {c['n_instructions']} --questions {c['n_questions']} "
           f"--samples {c['samples_per_pair']} --max-new-tokens {c['max_new_tokens']}")
        + "`; the vectors are in `vectors/" + model + "/`.",
        "",
        cfg_line,
        "",
        "Held-out AUROC: for each layer, the mean-difference vector is built from the kept pairs of 4/5 of the",
        "questions and the kept pairs of the remaining questions are scored by their projection onto it",
        "(5 folds over questions, AUROC averaged). 0.5 = chance, 1.0 = perfect separation. Position",
        "`response_avg` (mean over answer tokens). Bands show mean / max over the band's layers.",
        "",
        "| trait | kept / pairs | dropped (pos low, neg high, incoherent, no score) | mean trait score pos / neg | "
        + " | ".join(f"AUROC {b}" for b in BANDS)
        + " | best layer (AUROC) | all pairs, no filter: best layer (AUROC) |",
        "|---|---|---|---|" + "---|" * len(BANDS) + "---|---|",
    ]
    for name, s in summaries.items():
        sep = s["separation"]["response_avg"]
        d = s["dropped"]
        ms = s["mean_scores"]
        lines.append(
            f"| {name} | {s['kept']} / {s['pairs']} | {d['pos_too_low']}, {d['neg_too_high']}, {d['incoherent']}, {d['no_score']} | "
            f"{ms['pos']['trait']} / {ms['neg']['trait']} | "
            + " | ".join(band_text(sep["per_layer"], r) for r in BANDS.values())
            + f" | {sep['best_layer']} ({sep['best']}) | {s['separation_all_pairs']['response_avg']['best_layer']} "
            f"({s['separation_all_pairs']['response_avg']['best']}) |"
        )
    lines += [
        "",
        f"The last column repeats the cross-validation over all {n_pairs} pairs (pos prompt vs neg prompt, no judge",
        "filter): it says whether the contrast prompts move the residual stream apart, whatever the judge thinks.",
        "",
        "Caveats, stated plainly:",
        "- The offline judge is an embedding-similarity judge (see docs/judges.md); it is weak, so the kept pairs",
        "  are a noisy selection. With a language-model judge (`--judge openai:...`) expect different counts.",
        f"- {c['samples_per_pair']} sample(s) per (instruction, question) and {c['max_new_tokens']}-token answers: far smaller than "
        "the published 10 samples",
        "  and up to 1000 tokens. The AUROC is measured on held-out questions, but the answers still come from the",
        f"  same {c['n_instructions']} instruction pairs, so it measures separation of this contrast, not of the trait in the wild.",
        "- SmolLM2-135M follows system prompts loosely; weak traits here say as much about the model as the method." if chat else
        f"- {model} is a base model without a chat template: it gets the plain `System:/User:/Assistant:` layout (see",
        *([] if chat else ["  docs/concepts.md) and continues the text rather than following the persona as an instruction; weak",
                           "  traits here say as much about the model and the prompt format as about the method."]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
