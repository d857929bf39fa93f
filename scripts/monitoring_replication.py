"""Write docs/results/monitoring.md: does the projection before generation predict the judged trait of the answer?

    .venv/bin/python scripts/monitoring_replication.py \
        [--traits evil impoliteness humor optimism] [--n-questions 10] [--max-new-tokens 48] [--judge offline]

A replication of the persona-vectors monitoring result (r = 0.75-0.83 on 7B models) on the embedded
SmolLM2-135M-Instruct with the shipped vectors (``ps.load_vectors("smollm2-135m-instruct")``, position
``response_avg``), through :func:`personaspace.monitoring.replication.replicate_monitoring` (which calls
``personaspace.monitoring.projections.monitor``): seven graded system prompts per trait x the trait's
evaluation questions, greedy answers judged by the default offline judge. Writes the page and
``docs/results/monitoring.json`` (every answer, projection and score).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from personaspace._util.io import write_json, write_text  # noqa: E402
from personaspace.engine.model import PersonaModel  # noqa: E402
from personaspace.monitoring.replication import GRADED_SYSTEM_PROMPTS, TraitReplication, replicate_monitoring  # noqa: E402
from personaspace.vectors.store import load_vectors  # noqa: E402

MODEL = "smollm2-135m-instruct"
SCAN = (6, 12, 17, 23, 28)


def fmt_r(e: dict) -> str:
    lo, hi = e["ci95"]
    return f"{e['pearson']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])


def page(results: list, command: str, seconds: float, args: argparse.Namespace) -> str:
    r0, command = results[0], command.strip()
    main = table(
        ["trait", "n (answers / questions x levels)", "r [95% CI]", "control: random direction r [CI]",
         "control: unrelated trait r [CI]", f"random null: 95th pct of abs r ({r0.controls['random_null']['n_directions']} directions)", "judge", "layer", "command"],
        [[r.trait, f"{r.pooled['n']} / {r.pooled['questions']} x {len(r.levels)}", fmt_r(r.pooled), fmt_r(r.controls["random"]),
          f"{fmt_r(r.controls['unrelated'])} ({r.controls['unrelated']['trait']}, cos {r.controls['unrelated']['cosine_with_trait']:+.2f})",
          f"{r.controls['random_null']['q95_abs_r']:.2f}", r.judge, f"L{r.layer}", f"`{command}`"] for r in results],
    )  # fmt: skip
    secondary = table(
        ["trait", "r of the level means [CI] (n levels)", "mean r within a level", "Spearman (pooled)", "response-mean projection r"],
        [[r.trait, f"{fmt_r(r.level_means)} ({r.level_means['n']})", f"{r.within['mean_pearson']:+.2f}", f"{r.pooled['spearman']:+.2f}",
          _response_r(r)] for r in results],
    )  # fmt: skip
    levels = table(
        ["trait"] + [f"level {lv:+d}" for lv in results[0].settings["levels"]],
        [[r.trait] + [f"{lv['projection']:+.1f} / {lv['trait']:.0f}" for lv in r.levels] for r in results],
    )
    by_layer = table(
        ["trait"] + [f"L{e['layer']}" for e in r0.by_layer],
        [[r.trait] + [f"{e['pearson']:+.2f}" for e in r.by_layer] for r in results],
    )
    prompts = "\n".join(
        f"- **{t}**: " + " / ".join(f"({i - 3:+d}) \"{s}\"" for i, s in enumerate(GRADED_SYSTEM_PROMPTS[t])) for t in args.traits
    )
    return f"""# Monitoring: projection before generation vs trait expression

Produced by `{command}` ({seconds / 60:.1f} min on 2 CPU cores); every answer, projection and score is in
[`monitoring.json`](monitoring.json). The method is
[`replicate_monitoring`](../api/monitoring.md) (`personaspace.monitoring.replication`), built on
`personaspace.monitoring.projections.monitor`, the function behind `personaspace monitor`.

**The claim tested.** The persona-vectors paper reports that the projection of the last prompt token onto
the trait vector, taken *before* the model answers, predicts how strongly the answer expresses the trait:
r = 0.75-0.83 across system prompts that elicit the trait to different degrees (7B models, GPT-4.1 judge).

**Set-up.** Model `{r0.model}` (float32, CPU), the shipped vectors (`ps.load_vectors("{MODEL}")`, position
`{r0.vector['position']}`), read at layer {r0.layer} (the output of block {r0.layer}; the toolkit's default
monitoring layer, 60 % of the depth, fixed before looking at any result) and projected onto the same layer's
row. Per trait, seven system prompts written for this project, from strongly suppressing (level -3) through
a neutral "You are an assistant." (0) to strongly eliciting (+3), each with the trait's first
{r0.settings['n_questions']} *evaluation* questions (held out from extraction); greedy answers of up to
{r0.settings['max_new_tokens']} tokens, scored 0-100 by the judge `{r0.judge}`{_judge_note(r0.judge)}. Pearson r over all scored answers; the 95 % interval
is a percentile bootstrap ({r0.settings['n_boot']} resamples) that **resamples questions**: a drawn question
brings its answers at all seven levels, so answers to the same question are not counted as independent.

**Controls.** The same prompts projected at the same layer onto (a) one random direction (seed 0; the norm
of the trait vector's row, which does not matter for a projection onto a unit vector), (b) {r0.controls['random_null']['n_directions']} random
directions, summarised by the 95th percentile of |r| (the spread a direction with no relation to the
trait gets from the system prompts moving the residual stream), and (c) the shipped vector of the
least similar other trait at that layer (smallest |cosine|, named in the table). The controls use the
trait's own answers and scores; only the direction changes.

## Result

{main}

{_verdict(results)}

## Where the correlation comes from

{secondary}

The r of the level means correlates the seven per-level mean projections with the seven per-level mean
scores (its interval resamples questions too): the between-prompt signal the paper's figure shows.
The mean r within a level says whether the projection predicts the trait once the system prompt is fixed
(the varying part is then only the question).

Mean projection / mean trait score per level:

{levels}

Pooled r at other layers (a forward pass each on the same prompts; **not** the headline -- picking the best
layer after seeing these would inflate r):

{by_layer}

## Caveats, stated plainly

- The judge is the offline embedding judge, not an LLM judge; it is noisy (its validation is in
  [judges](../judges.md)), which caps the r that any predictor can reach against it.
- 135M parameters, 48-token greedy answers, {r0.settings['n_questions']} questions x 7 levels per trait: far smaller
  than the paper's 7B models and long sampled answers. Many-shot prompts (the paper's second set-up) were not run.
- The system prompts and the projection are both read from the same prompt, so a direction that merely
  tracks "how much the system prompt talks about X" could correlate without predicting behaviour; the
  random and unrelated-trait controls bound how much of r any direction gets from the prompts differing.

## The graded system prompts

{prompts}
"""


def _judge_note(identity: str) -> str:
    if identity.startswith("offline"):
        return " (the default offline judge: an embedding-similarity judge, see [judges](../judges.md))"
    return " (see [judges](../judges.md))"


def _response_r(r) -> str:
    from personaspace._util.stats import correlation_report

    c = correlation_report([row["response_avg"] for row in r.rows], [row["trait_score"] for row in r.rows], n_boot=200)
    return f"{c['pearson']:+.2f}"


def _verdict(results: list) -> str:
    lines = []
    for r in results:
        lo, hi = r.pooled["ci95"]
        rnd = r.controls["random_null"]["q95_abs_r"]
        if lo > 0 and abs(r.pooled["pearson"]) > rnd:
            v = "positive, interval above 0, and larger than 95 % of random directions"
        elif lo > 0:
            v = "positive with an interval above 0, but not larger than the random-direction spread"
        else:
            v = "not distinguishable from 0"
        lines.append(f"- **{r.trait}**: r = {r.pooled['pearson']:+.2f} [{lo:+.2f}, {hi:+.2f}] -- {v}.")
    rs = [r.pooled["pearson"] for r in results]
    nulls = [r.controls["random_null"]["q95_abs_r"] for r in results]
    summary = (
        f"\n\n**Summary.** On this model, with this judge, the projection before generation predicts the judged trait "
        f"weakly: r = {min(rs):+.2f} to {max(rs):+.2f} over {len(rs)} traits, against the paper's 0.75-0.83. Random "
        f"directions reach |r| = {min(nulls):.2f} to {max(nulls):.2f} (95th percentile): the graded system prompts move the "
        f"last prompt token's residual stream along many directions at once, so part of any direction's r comes from "
        f"the level alone, and a trait's r counts as specific only where it clears that spread."
    )
    return "In words (paper: 0.75-0.83):\n\n" + "\n".join(lines) + summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traits", nargs="+", default=["evil", "impoliteness", "humor", "optimism"])
    ap.add_argument("--n-questions", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--judge", default="offline")
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "monitoring.md")
    ap.add_argument("--from-json", type=Path, help="Only redraw the page from a monitoring.json written before.")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results = [TraitReplication(**r) for r in saved["results"]]
        args.traits = [r.trait for r in results]
        write_text(args.out, page(results, saved["command"], saved["seconds"], args))
        return
    torch.set_num_threads(2)
    command = " ".join(["python scripts/monitoring_replication.py", *(shlex.quote(a) for a in sys.argv[1:])])
    start = time.time()
    model = PersonaModel.load(MODEL)
    vectors = load_vectors(MODEL)
    results = replicate_monitoring(model, args.traits, vectors, judge=args.judge, n_questions=args.n_questions,
                                   max_new_tokens=args.max_new_tokens, n_random=args.n_random, scan_layers=SCAN)  # fmt: skip
    seconds = time.time() - start
    write_json(args.out.with_suffix(".json"), {"command": command, "seconds": round(seconds, 1), "results": [r.to_dict() for r in results]})
    write_text(args.out, page(results, command.strip(), seconds, args))
    print(json.dumps([{"trait": r.trait, "r": r.pooled, "random": r.controls["random"]["pearson"]} for r in results], indent=1))


if __name__ == "__main__":
    main()
