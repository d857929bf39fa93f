"""Shared benchmark helpers: timing, this CPU's matmul peak, FLOP accounting, result files.

Benchmarks report ratios against a reference run in the same process (these machines are noisy), never
absolute pass/fail times.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Minimum wall time of ``repeats`` calls (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak_gflops(n: int = 1536, repeats: int = 8) -> float:
    """Burst float32 matmul throughput of this CPU: the best of ``repeats`` single matmuls (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    t = best_of(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / t / 1e9


def sustained_matmul_gflops(seconds: float = 2.0, n: int = 1536) -> float:
    """Sustained float32 matmul throughput: back-to-back matmuls for ``seconds``, total FLOPs / time.

    The peak to hold a multi-second workload against. A best-of-N burst catches the CPU's best few
    milliseconds (highest turbo, no neighbour on the host), which no run of several seconds sees; on
    this VM the burst reads about 7-8 % above the sustained rate (per-run medians). n = 1536 is as
    fast as any size from 1024 to 4096 here.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    return _sustained(lambda: torch.mm(a, b), n, seconds)


def _sustained(run: Callable[[], object], n: int, seconds: float) -> float:
    """GFLOP/s of an n x n x n matmul ``run`` called back to back for ``seconds`` (after one warm-up)."""
    run()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def sustained_onednn_gflops(seconds: float = 2.0, n: int = 1536) -> float | None:
    """Sustained float32 rate of oneDNN's matmul against a reordered weight (what the fused backend
    runs on a CPU: ``personaspace.engine.backends.packed_linear``), measured like
    :func:`sustained_matmul_gflops`; None where that path is off or unavailable.

    ``torch.mm`` calls MKL, which takes its AVX-512 kernels only on Intel processors; on the AMD EPYC
    machines here oneDNN reaches about 2.3x MKL's rate, so the best of the two is the machine's peak.
    """
    from personaspace.engine.backends.packed_linear import Linear, onednn_works

    if not onednn_works():
        return None
    a, linear = torch.randn(n, n), Linear(torch.randn(n, n))
    return _sustained(lambda: linear(a), n, seconds)


def sustained_peaks() -> dict[str, float]:
    """``{"torch_mm": ..., "onednn": ..., "best": ...}`` sustained fp32 rates (GFLOP/s) measured now."""
    mm = sustained_matmul_gflops()
    dnn = sustained_onednn_gflops()
    return {"torch_mm": mm, "onednn": dnn or 0.0, "best": max(mm, dnn or 0.0)}


def _block_dims(config) -> tuple[int, int, int, int, int]:
    """``(d_model, heads, kv_heads, head_dim, ffn)`` of a decoder config."""
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads)
    return d, heads, kv, getattr(config, "head_dim", None) or d // heads, config.intermediate_size


def _block_weights(config) -> int:
    """Weight-matrix entries of one decoder block: q, k, v, o and the three MLP matrices."""
    d, heads, kv, hd, ffn = _block_dims(config)
    return d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * ffn


def block_matmul_gflops(config, tokens: int = 1024, repeats: int = 5) -> float:
    """Throughput of just the weight matmuls of one decoder block at ``tokens`` rows (GFLOP/s).

    The attainable peak for this model's shapes: a width-576 model multiplies thin matrices, which run
    below the square-matrix peak even with no other work at all.
    """
    d, heads, kv, hd, ffn = _block_dims(config)
    x, a, h = torch.randn(tokens, d), torch.randn(tokens, heads * hd), torch.randn(tokens, ffn)
    products = [  # (input, weight) of q, k, v, o, gate, up, down
        (x, torch.randn(d, heads * hd)), (x, torch.randn(d, kv * hd)), (x, torch.randn(d, kv * hd)),
        (a, torch.randn(heads * hd, d)), (x, torch.randn(d, ffn)), (x, torch.randn(d, ffn)), (h, torch.randn(ffn, d)),
    ]

    def block():
        for inp, weight in products:
            inp @ weight

    block()
    return 2 * tokens * _block_weights(config) / best_of(block, repeats) / 1e9


def decoder_flops(config, token_counts: list[int], n_blocks: int, lm_head: bool) -> float:
    """Useful FLOPs of a forward over sequences of the given lengths (real tokens only, no padding).

    Per token and block: 2 x (attention + MLP weight matrices) plus causal attention scores and mixing
    (2 x 2 x context x heads x head_dim, context averaged over the causal triangle).
    """
    d, heads, _, head_dim, _ = _block_dims(config)
    weights = _block_weights(config)
    total = 0.0
    for t in token_counts:
        per_block = 2 * weights * t + 2 * 2 * heads * head_dim * t * (t + 1) / 2
        total += n_blocks * per_block
        if lm_head:
            total += 2 * d * config.vocab_size * t
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``|a - b| / |b|`` (Frobenius norms)."""
    return float((a - b).norm() / b.norm())


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")
    return path


def report(name: str, result: dict) -> Path:
    """Write ``result`` (see :func:`write_result`) and print it, one aligned line per key."""
    path = write_result(name, result)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:>{width}}: {value}")
    print(f"written to {path}")
    return path


def make_pairs(model, n: int, max_new_tokens: int):
    """Realistic (prompt, response) pairs: trait questions under contrast prompts, answered by the model.

    Returns the prompts, their token ids and the sampled response ids (temperature 1, seed 0).
    """
    from personaspace import load_trait
    trait = load_trait("evil")
    prompts = []
    for i in range(n):
        pair = trait.instructions[i % len(trait.instructions)]
        system = pair.pos if (i // len(trait.instructions)) % 2 == 0 else pair.neg
        prompts.append({"system": system, "user": trait.extraction_questions[i % len(trait.extraction_questions)]})
    out = model.generate(prompts, max_new_tokens=max_new_tokens, temperature=1.0, seed=0)
    return prompts, [g.prompt_ids for g in out], [g.response_ids for g in out]
