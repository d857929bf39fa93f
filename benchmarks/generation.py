"""Benchmark: the generation stage of the main job against its FLOP and weight-streaming bounds, same process.

Workload: the generation stage of ``personaspace extract --trait evil`` with the default settings (the
planned rows, batches, seeds, sampling and capture of the pipeline, the default backend), run through
``PersonaModel.generate`` exactly as the pipeline calls it. Reported, all measured in this process:

- tokens/s, and the stage's time over its FLOP bound: useful FLOPs (real tokens only: prefill of every
  prompt token, one decode step per fed token with its causal attention, the LM head where a token is
  sampled) over the machine's sustained fp32 matmul peak measured just before and after: the better of
  ``torch.mm`` (MKL) and oneDNN with a reordered weight (``_common.sustained_peaks``; on AMD CPUs MKL
  reaches less than half of oneDNN's rate). The bound at ``torch.mm``'s rate alone is reported beside it;
- the time over the bound of the FLOPs actually computed: prompts that begin alike (the same system
  prompt) have their common prefix prefilled once (``generation.shared_prefixes``), which the first
  bound still counts for every prompt. ``fraction_of_peak`` is against this one: how busy the matmul
  units are, where the first ratio says how close the stage is to the job's arithmetic;
- its time over the weight-streaming bound: every forward pass reads every weight matrix once, at
  the memory bandwidth measured here (a 256 MiB copy, read + write bytes);
- where the time goes: prefill, decode steps, LM head + sampler;
- the same stage steered (``Add`` of the shipped ``evil`` vector at layer 12, +4, response scope)
  per useful FLOP against unsteered (the tokens differ, so the work is compared per FLOP), the best of
  as many repeats as the unsteered stage;
- the same stage on the plain hooks backend (Hugging Face forward, ``DynamicCache``, left padding):
  the path generation took before the static cache;
- with ``--stages``, the whole main job (``ps.extract``, offline judge, a fresh judge cache): its
  generation, judging and everything else;
- with ``--overlap``, whether judging should run beside generation: the stage followed by the offline
  judge's embedding of its answers, against the same two at once (the embedding in a thread).

Run: ``.venv/bin/python benchmarks/generation.py [--stages] [--skip-hooks] [--overlap] [--repeats N]``. Writes
benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import _block_dims, _block_weights, best_of, decoder_flops, report, sustained_peaks

import personaspace.engine.generation as generation
from personaspace import Add, load_model, load_trait, load_vectors
from personaspace.engine.model import with_backend
from personaspace.extraction.pipeline import POSITIONS, ExtractionConfig, plan_rows


def memory_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth (read + write bytes per second, GB/s): the rate a weight can stream in at."""
    a = torch.randn(mib * 1024 * 1024 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    return 2 * a.numel() * 4 / best_of(lambda: b.copy_(a), repeats) / 1e9


def generation_flops(config, prompts: list[list[int]], responses: list[list[int]], finished: list[bool], capture: bool) -> float:
    """Useful FLOPs of generating ``responses`` after ``prompts``: prefill (LM head on the last prompt
    token), then each fed response token at its context length, with the LM head wherever a next token
    was sampled from it. A row that hit the length limit feeds its last token only when capturing."""
    d, heads, _, head_dim, _ = _block_dims(config)
    weights, layers, head = _block_weights(config), config.num_hidden_layers, 2 * d * config.vocab_size
    total = decoder_flops(config, [len(p) for p in prompts], layers, lm_head=False) + head * len(prompts)
    for p, r, stop in zip(prompts, responses, finished):
        n, m = len(p), len(r)
        fed = m if (stop or capture) else max(m - 1, 0)
        for j in range(fed):
            context = n + j + 1
            total += layers * (2 * weights + 4 * heads * head_dim * context)
            if j < m - 1 or stop:  # the logits of this token chose the next one (or the stop token)
                total += head
    return total


def shared_prefix_flops(config, prompts: list[list[int]], batch_size: int) -> float:
    """Prefill FLOPs the static-cache loop does not do: prompts admitted together that begin alike have their
    common prefix computed once (``generation.shared_prefixes``), so every other prompt of a group skips its
    first ``length`` tokens. The pipeline admits each batch of ``batch_size`` prompts at once."""
    skipped = []
    for start in range(0, len(prompts), batch_size):
        for length, members in generation.shared_prefixes(prompts[start : start + batch_size]):
            skipped += [length] * (len(members) - 1)
    return decoder_flops(config, skipped, config.num_hidden_layers, lm_head=False)


def weight_bytes(config) -> int:
    """Bytes of the weight matrices one forward pass reads (blocks and LM head, float32)."""
    return 4 * (config.num_hidden_layers * _block_weights(config) + config.hidden_size * config.vocab_size)


class StageClock:
    """Times the backend's forward passes (prefill vs decode) and the LM head + sampler of a model."""

    def __init__(self, model):
        self.seconds = {"prefill": 0.0, "decode": 0.0, "head_and_sampler": 0.0}
        self.forwards = 0
        backend, forward, sampler = model.backend, model.backend.forward, generation.sample_from_hidden

        def timed_forward(input_ids, *args, **kwargs):
            start = time.perf_counter()
            out = forward(input_ids, *args, **kwargs)
            self.seconds["decode" if input_ids.shape[1] == 1 else "prefill"] += time.perf_counter() - start
            self.forwards += 1
            return out

        def timed_sampler(*args, **kwargs):
            start = time.perf_counter()
            out = sampler(*args, **kwargs)
            self.seconds["head_and_sampler"] += time.perf_counter() - start
            return out

        self._patched = ((backend, "forward", forward, timed_forward), (generation, "sample_from_hidden", sampler, timed_sampler))

    def __enter__(self) -> StageClock:
        for owner, name, _, timed in self._patched:
            setattr(owner, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original, _ in self._patched:
            setattr(owner, name, original)


def generation_stage(model, rows, cfg: ExtractionConfig, interventions=()):
    """The pipeline's generation calls (``extraction.pipeline._generate``), without the files."""
    out = []
    for b, start in enumerate(range(0, len(rows), cfg.batch_size)):
        batch = rows[start : start + cfg.batch_size]
        out.append(model.generate([{"system": r.system, "user": r.user} for r in batch], max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed * 1_000_003 + b,
                                  batch_size=len(batch), capture_layers=True, reductions=POSITIONS, interventions=interventions))
    return [g for o in out for g in o.generations]


def measure(model, rows, cfg, interventions=()) -> dict:
    """One timed generation stage bracketed by two measurements of the sustained peaks."""
    before = sustained_peaks()
    with StageClock(model) as clock:
        faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        gens = generation_stage(model, rows, cfg, interventions)
        seconds, faults = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    after = sustained_peaks()
    peaks = {k: (before[k] + after[k]) / 2 for k in before}
    config = model.hf_model.config
    prompts = [g.prompt_ids for g in gens]
    flops = generation_flops(config, prompts, [g.response_ids for g in gens], [g.finished for g in gens], capture=True)
    computed = flops - (shared_prefix_flops(config, prompts, cfg.batch_size) if model.backend.name == "fused" else 0.0)
    tokens = sum(len(g.response_ids) for g in gens)
    bound = flops / peaks["best"] / 1e9
    return {
        "seconds": seconds, "page_faults": faults, "new_tokens": tokens, "flops": flops, "peaks": peaks, "forwards": clock.forwards,
        "split_s": {k: round(v, 2) for k, v in clock.seconds.items()},
        "tflop": flops / 1e12, "bound_s": bound, "over_flop_bound": seconds / bound,
        "over_torch_mm_bound": seconds / (flops / peaks["torch_mm"] / 1e9),
        "computed_tflop": computed / 1e12, "over_computed_flop_bound": seconds / (computed / peaks["best"] / 1e9),
    }


def main_job_stages(model) -> dict:
    """``ps.extract("evil")`` with defaults in a temporary run directory and judge cache: stage times."""
    import personaspace as ps

    marks: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, []).append(time.perf_counter())

    home = os.environ.get("PERSONASPACE_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PERSONASPACE_HOME"] = str(Path(tmp) / "home")  # a fresh judge cache
        try:
            start = time.perf_counter()
            ps.extract("evil", model, out=Path(tmp) / "run", progress=progress)
            total = time.perf_counter() - start
        finally:
            if home is None:
                os.environ.pop("PERSONASPACE_HOME", None)
            else:
                os.environ["PERSONASPACE_HOME"] = home
    stages = {name: round(times[-1] - times[0], 2) for name, times in marks.items()}
    return {"total_s": round(total, 2), **{f"{k}_s": v for k, v in stages.items()}, "rest_s": round(total - sum(stages.values()), 2)}


def judge_overlap(model, rows, cfg: ExtractionConfig, repeats: int) -> dict:
    """The generation stage then the offline judge's embedding of its answers, against both at once: best seconds."""
    from personaspace.judges.embedding import shared_embedder

    embedder = shared_embedder()
    texts = [g.text for g in generation_stage(model, rows, cfg)]
    embedder.embed(texts[:4])  # loaded and warm

    def sequential() -> None:
        generation_stage(model, rows, cfg)
        embedder.embed(texts)

    def concurrent() -> None:
        judge = threading.Thread(target=embedder.embed, args=(texts,))
        judge.start()
        generation_stage(model, rows, cfg)
        judge.join()

    one_after_the_other, at_once = best_of(sequential, repeats), best_of(concurrent, repeats)
    return {"sequential_s": round(one_after_the_other, 2), "concurrent_s": round(at_once, 2),
            "concurrent_over_sequential": round(at_once / one_after_the_other, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stages", action="store_true", help="also time the whole main job (ps.extract)")
    parser.add_argument("--skip-hooks", action="store_true", help="skip the hooks-backend comparison")
    parser.add_argument("--overlap", action="store_true", help="also time judging beside generation against after it")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    model = load_model()
    cfg = ExtractionConfig(trait="evil")
    rows = plan_rows(load_trait("evil"), cfg)
    model.generate(["warm-up"], max_new_tokens=4)
    bandwidth = memory_gbps()
    config = model.hf_model.config
    runs = [measure(model, rows, cfg) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["over_flop_bound"])
    steer = Add(load_vectors(model.name)["evil"], coef=4.0, layers=[12], scope="response")
    steered = min((measure(model, rows, cfg, interventions=[steer]) for _ in range(args.repeats)), key=lambda r: r["over_flop_bound"])
    stream_s = best["forwards"] * weight_bytes(config) / bandwidth / 1e9
    result = {
        "workload": f"generation stage of extract --trait evil: {len(rows)} rows, batch {cfg.batch_size}, "
                    f"max_new_tokens {cfg.max_new_tokens}, temperature {cfg.temperature}, capture of {len(POSITIONS)} reductions x {model.n_layers} layers",
        "backend": model.backend.name,
        "seconds": round(best["seconds"], 2),
        "new_tokens": best["new_tokens"],
        "tokens_per_s": round(best["new_tokens"] / best["seconds"], 1),
        "useful_tflop": round(best["tflop"], 3),
        "computed_tflop": round(best["computed_tflop"], 3),
        "sustained_gflops": {k: round(v, 1) for k, v in best["peaks"].items()},
        "flop_bound_s": round(best["bound_s"], 2),
        "time_over_flop_bound": round(best["over_flop_bound"], 3),
        "time_over_flop_bound_each_repeat": [round(r["over_flop_bound"], 3) for r in runs],
        "time_over_computed_flop_bound": round(best["over_computed_flop_bound"], 3),
        "fraction_of_peak": round(1 / best["over_computed_flop_bound"], 3),
        "time_over_torch_mm_flop_bound": round(best["over_torch_mm_bound"], 3),
        "forward_passes": best["forwards"],
        "memory_copy_gbps": round(bandwidth, 1),
        "weight_streaming_bound_s": round(stream_s, 2),
        "time_over_weight_streaming_bound": round(best["seconds"] / stream_s, 1),
        "split_s": best["split_s"],
        "page_faults": best["page_faults"],
        "steered_seconds": round(steered["seconds"], 2),
        "steered_new_tokens": steered["new_tokens"],
        "steered_time_over_flop_bound": round(steered["over_flop_bound"], 3),
        "steered_vs_unsteered_per_flop": round(steered["over_flop_bound"] / best["over_flop_bound"], 3),
        "targets": {"time_over_flop_bound": 1.4, "steered_vs_unsteered_per_flop": 1.05},
    }
    if not args.skip_hooks:
        hooks = measure(with_backend(model, "hooks"), rows, cfg)
        result.update({
            "hooks_backend_seconds": round(hooks["seconds"], 2),
            "hooks_backend_time_over_flop_bound": round(hooks["over_flop_bound"], 3),
        "hooks_backend_time_over_torch_mm_flop_bound": round(hooks["over_torch_mm_bound"], 3),
            "speedup_vs_hooks_backend_per_flop": round(hooks["over_flop_bound"] / best["over_flop_bound"], 2),
        })
    if args.stages:
        result["main_job"] = main_job_stages(model)
    if args.overlap:
        result["judge_overlap"] = judge_overlap(model, rows, cfg, max(args.repeats, 2))
    result["note"] = ("ratios from one process; the sustained peaks are measured around each timed stage (mean of the two); "
                      "the FLOP bound uses the better of torch.mm (MKL) and oneDNN")
    report("generation", result)


if __name__ == "__main__":
    main()
