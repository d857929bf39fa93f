"""Steered vs unsteered generation of the same batch, same process: the cost of the intervention hooks.

Greedy generation on the embedded SmolLM2-135M-Instruct: the same prompts are generated plainly and
with one ``Add`` at one layer (scope response), with an add + ablate + cap stack over ten layers, and
with the add under ``scope="all"``. The reported figure is the overhead ratio (steered / unsteered - 1),
best of ``--repeats`` runs each, interleaved so that machine noise hits both alike.

    .venv/bin/python benchmarks/steering.py [--prompts 8] [--tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _common import write_result  # noqa: E402

PROMPTS = [
    "What should I cook tonight?",
    "Describe the sea in one sentence.",
    "How do I stay focused while studying?",
    "What is a good name for a dog?",
    "Explain why the sky is blue.",
    "Give me three tips for a job interview.",
    "What do you think about rainy days?",
    "How can I be a better friend?",
    "Suggest a weekend hobby.",
    "What is the best way to learn a language?",
    "Tell me something interesting about octopuses.",
    "How should I start a morning routine?",
    "What makes a story memorable?",
    "How do I fix a squeaky door?",
    "Why do people like music?",
    "What should I pack for a day hike?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from personaspace.engine import Ablate, Add, Cap, PersonaModel

    model = PersonaModel.load()
    prompts = PROMPTS[: args.prompts]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.n_layers, model.d_model, generator=g)
    v = v / v.norm(dim=1, keepdim=True) * 4.0  # about the norm of a real persona vector row mid-model
    settings = {
        "unsteered": [],
        "add@L12 (response)": [Add(v, coef=1.0, layers=[12], scope="response")],
        "add@L12 (all)": [Add(v, coef=1.0, layers=[12], scope="all")],
        "add+ablate+cap @L10-19": [
            Add(v, coef=1.0, layers="10-19", scope="response"),
            Ablate(v[5], layers="10-19"),
            Cap(v, max=0.0, layers="10-19"),
        ],
    }

    def run(ivs):
        # min_new_tokens is not an engine option: steering can change when a row stops, so count tokens too
        out = model.generate(prompts, max_new_tokens=args.tokens, interventions=ivs)
        return sum(len(x.response_ids) for x in out)

    run([])  # warm-up
    best = {k: float("inf") for k in settings}
    tokens = {}
    for _ in range(args.repeats):
        for name, ivs in settings.items():  # interleaved: noise hits every setting alike
            t = time.perf_counter()
            tokens[name] = run(ivs)
            best[name] = min(best[name], time.perf_counter() - t)
    base = best["unsteered"]
    per_token_base = base / tokens["unsteered"]
    rows = {}
    for name in settings:
        per_token = best[name] / tokens[name]
        rows[name] = {
            "seconds": round(best[name], 3),
            "tokens": tokens[name],
            "overhead_wall": round(best[name] / base - 1, 4),
            "overhead_per_token": round(per_token / per_token_base - 1, 4),
        }
        print(f"{name:>24}: {best[name]:.3f} s, {tokens[name]} tokens, overhead {rows[name]['overhead_per_token']:+.1%} per token")
    headline = rows["add@L12 (response)"]["overhead_per_token"]
    print(f"steering overhead (one add, per generated token): {headline:+.1%} (target <= 5%)")
    path = write_result(
        "steering",
        {
            "what": "greedy generation with interventions vs without, same prompts, same process (best of repeats, interleaved)",
            "model": model.name,
            "prompts": len(prompts),
            "max_new_tokens": args.tokens,
            "repeats": args.repeats,
            "settings": rows,
            "headline_overhead_per_token": headline,
            "target": 0.05,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
