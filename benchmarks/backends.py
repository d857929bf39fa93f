"""Benchmark: the same capture (and steered generation) through each backend, ratios against hooks.

Workload: ``--pairs`` (prompt, response) pairs from the evil trait's questions under its contrast
prompts, answers generated once by the default backend; capture of all layers, three reductions.
Every backend runs on the same weights in this process, in rotating order, best of ``--repeats``;
ratios are backend time / hooks time (1.0 = no overhead). Also reports the largest relative
difference of each backend's activations from the hooks backend, and a steered greedy generation.

Run: ``.venv/bin/python benchmarks/backends.py [--pairs 32] [--threads 1]``.
Prints and writes benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import make_pairs, rel_err, report

from personaspace import load_model
from personaspace.engine import Add, PersonaModel
from personaspace.engine.model import with_backend


def rotate_best(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time per entry, running the entries in rotating order each round (fair under load)."""
    best = {k: float("inf") for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gen-prompts", type=int, default=4)
    parser.add_argument("--gen-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    fused = load_model()  # the default backend for this Llama-family model
    hooks = with_backend(fused, "hooks")
    tl_base = PersonaModel.load(hooks.name)  # TransformerLens forces eager attention on its own copy
    models = {
        "hooks": hooks,
        "fused": fused,
        "nnsight": with_backend(hooks, "nnsight"),
        "nnsight_remote_sim": with_backend(hooks, "nnsight", remote="local"),
        "transformer_lens": with_backend(tl_base, "transformer_lens"),
    }
    prompts, p_ids, r_ids = make_pairs(hooks, args.pairs, args.max_new_tokens)
    tokens = sum(len(p) + len(r) for p, r in zip(p_ids, r_ids))
    acts: dict = {}

    def capture(name):
        return lambda: acts.__setitem__(name, models[name].capture(p_ids, r_ids, token_budget=1024))

    for name in models:  # warm-up (imports, first-call setup)
        models[name].capture(p_ids[:2], r_ids[:2])
    cap_s = rotate_best({name: capture(name) for name in models}, args.repeats)

    v = torch.randn(hooks.d_model, generator=torch.Generator().manual_seed(0))
    steer = [Add(v / v.norm(), coef=4.0, layers=[12], scope="response")]
    gen_prompts = prompts[: args.gen_prompts]
    texts: dict = {}

    def generate(name):
        cache = not name.endswith("remote_sim")
        return lambda: texts.__setitem__(
            name,
            [g.response_ids for g in models[name].generate(gen_prompts, max_new_tokens=args.gen_tokens, interventions=steer, use_cache=cache)],
        )

    gen_s = rotate_best({name: generate(name) for name in models}, max(1, args.repeats - 1))
    hooks_gen_uncached = rotate_best({"hooks_uncached": lambda: hooks.generate(gen_prompts, max_new_tokens=args.gen_tokens, interventions=steer, use_cache=False)}, 1)

    ref = acts["hooks"]
    result = {
        "pairs": len(p_ids),
        "tokens": tokens,
        "layers": hooks.n_layers,
        "capture_s": {k: round(t, 3) for k, t in cap_s.items()},
        "capture_ratio_vs_hooks": {k: round(t / cap_s["hooks"], 2) for k, t in cap_s.items()},
        "capture_max_rel_diff_vs_hooks": {
            k: max(rel_err(a[r], ref[r]) for r in ref.data) for k, a in acts.items()
        },
        "steered_generation": {"prompts": len(gen_prompts), "max_new_tokens": args.gen_tokens},
        "generation_s": {k: round(t, 3) for k, t in gen_s.items()},
        "generation_ratio_vs_hooks": {k: round(t / gen_s["hooks"], 2) for k, t in gen_s.items()},
        "generation_remote_sim_ratio_vs_hooks_uncached": round(gen_s["nnsight_remote_sim"] / hooks_gen_uncached["hooks_uncached"], 2),
        "generation_same_tokens_as_hooks": {k: t == texts["hooks"] for k, t in texts.items()},
        "note": "nnsight_remote_sim = nnsight's local simulation of NDIF (serialize + deserialize every forward, no KV cache).",
    }
    report("backends", result)


if __name__ == "__main__":
    main()
