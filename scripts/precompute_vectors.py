"""Extract every built-in trait on one model, save the VectorSet, and write the results table for docs.

Usage: ``.venv/bin/python scripts/precompute_vectors.py [--model smollm2-135m-instruct] [--traits evil,humor]``
Writes ``vectors/<model>/`` (all three positions) and ``docs/results/extraction_<model>.md``. Resumable: run
directories under ``runs/extract/`` are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import personaspace as ps
from personaspace._util.io import write_text
from personaspace.vectors.store import VectorSet

ROOT = Path(__file__).resolve().parents[1]
BANDS = {"early (0-9)": range(0, 10), "middle (10-19)": range(10, 20), "late (20-29)": range(20, 30)}


def band_text(per_layer: list[float], layers: range) -> str:
    vals = [per_layer[i] for i in layers if i < len(per_layer)]
    return f"{np.mean(vals):.2f} / {max(vals):.2f}" if vals else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=ps.DEFAULT_MODEL)
    parser.add_argument("--traits", default=",".join(ps.list_traits()))
    parser.add_argument("--judge", default="offline")
    args = parser.parse_args()

    model = ps.load_model(args.model)
    out_dir = ROOT / "vectors" / args.model
    summaries = {}
    for name in args.traits.split(","):
        started = time.perf_counter()
        result = ps.extract(name, model, judge=args.judge, out=ROOT / "runs" / "extract" / args.model / name)
        for vec in result.vectors.values():
            VectorSet([vec]).save(out_dir)
        summaries[name] = result.summary
        sep = result.summary["separation"]["response_avg"]
        print(f"{name:18s} kept {result.summary['kept']:3d}/{result.summary['pairs']}  best AUROC {sep['best']} @ L{sep['best_layer']}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_text(ROOT / "docs" / "results" / f"extraction_{args.model}.json", json.dumps(summaries, indent=1))
    write_text(ROOT / "docs" / "results" / f"extraction_{args.model}.md", report(args.model, summaries))


def report(model: str, summaries: dict) -> str:
    first = next(iter(summaries.values()))
    cfg_line = (
        f"Settings: the defaults of `personaspace extract` (5 instruction pairs x 20 extraction questions x 1 sample "
        f"per side = 100 pairs, temperature 1, 48 new tokens), judge `{first['judge']}`, thresholds "
        f"pos >= {first['thresholds']['pos_trait_min']}, neg < {first['thresholds']['neg_trait_below']}, "
        f"coherence >= {first['thresholds']['coherence_min']}."
    )
    lines = [
        f"# Extraction results: {model}",
        "",
        "Produced by `python scripts/precompute_vectors.py`; the vectors are in `vectors/" + model + "/`.",
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
        "The last column repeats the cross-validation over all 100 pairs (pos prompt vs neg prompt, no judge",
        "filter): it says whether the contrast prompts move the residual stream apart, whatever the judge thinks.",
        "",
        "Caveats, stated plainly:",
        "- The offline judge is an embedding-similarity judge (see docs/judges.md); it is weak, so the kept pairs",
        "  are a noisy selection. With a language-model judge (`--judge openai:...`) expect different counts.",
        "- One sample per (instruction, question) and 48-token answers: far smaller than the published 10 samples",
        "  and up to 1000 tokens. The AUROC is measured on held-out questions, but the answers still come from the",
        "  same five instruction pairs, so it measures separation of this contrast, not of the trait in the wild.",
        "- SmolLM2-135M follows system prompts loosely; weak traits here say as much about the model as the method.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
