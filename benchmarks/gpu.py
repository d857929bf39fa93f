"""Benchmark at a real 7-8B shape: capture, steered generation, memory, on a GPU (or a tiny model on the CPU).

The model has the Llama-3-8B shape (hidden 4096, 32 layers, MLP 14336, 32 query / 8 key-value heads,
vocabulary 128256) with random weights made directly on the device in bf16: nothing is downloaded and
no float32 copy of the 8B weights ever exists. Random weights cost what real ones cost: the timings and
the memory are those of the real model; only the text is noise. All figures are ratios within one
process (or per-token rates), against:

* **capture**: ``PersonaModel.capture`` (response-averaged activations, every layer, on the backend that
  ``default_backend`` picks, and on the plain hooks backend) vs a Hugging Face forward with
  ``output_hidden_states=True`` over the same token batches (inference mode, padded batches, LM head
  included, as it is there), reduced the same way. Also their agreement (relative error, layers below
  the last, whose Hugging Face entry is post-norm).
* **steering**: greedy generation with one ``Add`` at the middle layer (scope response) vs the same
  generation without; tokens per second of each.
* **memory**: ``torch.cuda.max_memory_allocated`` of each phase (n/a on the CPU).
* **bf16 vs fp32**: the same tiny random model captured in float32 and in bf16; the largest relative
  error (per layer, Frobenius) of the bf16 activations against the float32 ones.

    .venv/bin/python benchmarks/gpu.py                       # cuda if available, the 8B shape
    .venv/bin/python benchmarks/gpu.py --tiny --device cpu   # a tiny model: checks the script runs

Writes ``benchmarks/results/gpu.json`` (``gpu-tiny.json`` with ``--tiny``; ``--out`` elsewhere). Needs
torch and transformers only: no plotting or backend packages (nnsight, TransformerLens) are imported,
which the result records under ``optional_modules_loaded``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _common import RESULTS, machine, rel_err  # noqa: E402

# Llama-3-8B (meta-llama/Meta-Llama-3-8B config.json), written out: no download.
LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
# Packages that `import personaspace` and this benchmark must not need.
OPTIONAL_MODULES = ("plotly", "matplotlib", "kaleido", "nnsight", "transformer_lens")


def llama_config(shape: dict):
    from transformers import LlamaConfig

    # No BOS/EOS: generation runs for exactly max_new_tokens (the tokenizer's stop token is outside the vocabulary).
    return LlamaConfig(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=0)


def build_model(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-weight Llama made on ``device`` in ``dtype`` (parameters are created there, not copied)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(shape))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None
    return model.eval().requires_grad_(False)


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer made in code: token ``i`` is the word ``t<i>``; its stop token lies outside the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<eos>"] = vocab_size
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", unk_token="t1", eos_token="<eos>")


def persona_model(hf_model, tokenizer, name: str, backend: str = "auto"):
    from personaspace.engine import PersonaModel
    from personaspace.engine.model import with_backend

    model = PersonaModel.from_hf(hf_model, tokenizer, name=name)
    return model if backend == "auto" else with_backend(model, backend)


def token_pairs(n: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` (prompt, response) token-id pairs of varied lengths (75-100 % of the given lengths)."""
    g = torch.Generator().manual_seed(seed)

    def ids(length: int) -> list[int]:
        k = int(torch.randint(max(1, length * 3 // 4), length + 1, (1,), generator=g))
        return torch.randint(2, vocab, (k,), generator=g).tolist()

    pairs = [(ids(prompt_len), ids(response_len)) for _ in range(n)]
    return [p for p, _ in pairs], [r for _, r in pairs]


@torch.inference_mode()
def hf_hidden_states_capture(hf_model, prompt_ids, response_ids, batch_size: int) -> torch.Tensor:
    """The Hugging Face reference: padded batches, ``output_hidden_states=True``; response means per layer ``[n, layers, d]`` (float32)."""
    device = next(hf_model.parameters()).device
    rows: list[torch.Tensor] = []
    for start in range(0, len(prompt_ids), batch_size):
        ps, rs = prompt_ids[start : start + batch_size], response_ids[start : start + batch_size]
        seqs = [p + r for p, r in zip(ps, rs)]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: positions of real tokens are 0..len-1
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        hs = hf_model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        for i, (p, r) in enumerate(zip(ps, rs)):  # hs[0] is the embedding output, hs[k] block k - 1's
            rows.append(torch.stack([h[i, len(p) : len(p) + len(r)].float().mean(0) for h in hs[1:]]))
    return torch.stack(rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (synchronised on a GPU) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def peak_gib(device: torch.device, fn: Callable[[], object]) -> float | str:
    """Peak allocated memory during ``fn()`` in GiB (``torch.cuda.max_memory_allocated``); "n/a" off CUDA."""
    if device.type != "cuda":
        fn()
        return "n/a (CPU)"
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def bf16_parity(device: torch.device, seed: int = 0) -> dict:
    """Capture of one tiny random model in float32 and in bf16: the bf16 error per layer, and its maximum."""
    fp32 = build_model(TINY, device, torch.float32, seed=seed)
    bf16 = build_model(TINY, device, torch.float32, seed=seed).to(torch.bfloat16)
    tok = word_tokenizer(TINY["vocab_size"])
    p, r = token_pairs(8, 48, 32, TINY["vocab_size"], seed=seed + 1)
    a = persona_model(fp32, tok, "tiny-fp32").capture(p, r, reductions=["response_avg"])["response_avg"].float()
    b = persona_model(bf16, tok, "tiny-bf16").capture(p, r, reductions=["response_avg"])["response_avg"].float()
    per_layer = [rel_err(b[:, layer].cpu(), a[:, layer].cpu()) for layer in range(a.shape[1])]
    return {"max_rel_diff": round(max(per_layer), 5), "per_layer": [round(e, 5) for e in per_layer],
            "what": "relative Frobenius error of bf16 response_avg activations against float32, same weights and tokens"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--tiny", action="store_true", help="a tiny config (4 layers, width 64): a quick check on the CPU")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--pairs", type=int, default=None, help="capture pairs (default 32; 8 with --tiny)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per pair (default 256; 24 with --tiny)")
    parser.add_argument("--response-len", type=int, default=None, help="response tokens per pair (default 256; 16 with --tiny)")
    parser.add_argument("--gen-prompts", type=int, default=None, help="prompts generated at once (default 16; 4 with --tiny)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt (default 64; 8 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/gpu.json or gpu-tiny.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    shape = TINY if args.tiny else LLAMA3_8B
    small = args.tiny
    pairs = args.pairs or (8 if small else 32)
    prompt_len = args.prompt_len or (24 if small else 256)
    response_len = args.response_len or (16 if small else 256)
    gen_prompts = args.gen_prompts or (4 if small else 16)
    gen_tokens = args.gen_tokens or (8 if small else 64)

    import transformers  # noqa: F401  (imported before the clock starts)

    from personaspace.engine import Add

    start = time.perf_counter()
    hf = build_model(shape, device, dtype)
    sync(device)
    build_s = time.perf_counter() - start
    weights_gib = round(torch.cuda.memory_allocated(device) / 2**30, 2) if device.type == "cuda" else "n/a (CPU)"
    tok = word_tokenizer(shape["vocab_size"])
    name = "random-llama3-8b-shape" if not small else "random-tiny-llama"
    ours = persona_model(hf, tok, name)
    hooks = persona_model(hf, tok, name, backend="hooks")
    n_layers, d_model = ours.n_layers, ours.d_model
    default_error = None

    # --- capture vs output_hidden_states, same tokens
    p_ids, r_ids = token_pairs(pairs, prompt_len, response_len, shape["vocab_size"])
    tokens = sum(len(p) + len(r) for p, r in zip(p_ids, r_ids))
    batch = max(1, min(pairs, 8))
    budget = batch * (prompt_len + response_len)  # the same tokens per forward as the reference's batches

    def cap(m):
        return m.capture(p_ids, r_ids, reductions=["response_avg"], token_budget=budget)["response_avg"]

    def ref():
        return hf_hidden_states_capture(hf, p_ids, r_ids, batch)

    try:  # warm-up (kernels, allocator); a default backend that fails here is recorded, and hooks stands in
        cap(ours)
    except Exception as exc:  # noqa: BLE001
        default_error = f"{type(exc).__name__}: {exc}"
        ours = hooks
    cap(hooks)
    ref()
    t_ref = t_ours = t_hooks = float("inf")
    acts_ours = acts_ref = None
    for _ in range(args.repeats):  # interleaved: drift hits all three alike
        t, acts_ref = timed(ref, device, 1)
        t_ref = min(t_ref, t)
        t, acts_ours = timed(lambda: cap(ours), device, 1)
        t_ours = min(t_ours, t)
        t_hooks = min(t_hooks, timed(lambda: cap(hooks), device, 1)[0])
    assert acts_ours is not None and acts_ref is not None
    below_last = slice(0, n_layers - 1)  # Hugging Face's last hidden_states entry is post-norm
    capture_err = rel_err(acts_ours.float()[:, below_last].cpu(), acts_ref[:, below_last].cpu())
    mem_ours = peak_gib(device, lambda: cap(ours))
    mem_ref = peak_gib(device, ref)

    # --- steered vs unsteered greedy generation
    g_ids, _ = token_pairs(gen_prompts, prompt_len, 1, shape["vocab_size"], seed=1)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d_model, generator=g)
    steer = [Add(v / v.norm(), coef=4.0, layers=[n_layers // 2], scope="response")]

    def gen(ivs):
        out = ours.generate(g_ids, max_new_tokens=gen_tokens, interventions=ivs, batch_size=gen_prompts)
        return sum(len(x.response_ids) for x in out)

    gen([])  # warm-up
    best = {"unsteered": float("inf"), "steered": float("inf")}
    counts: dict[str, int] = {}
    for _ in range(args.repeats):
        for key, ivs in (("unsteered", []), ("steered", steer)):
            t, n = timed(lambda ivs=ivs: gen(ivs), device, 1)
            best[key] = min(best[key], t)
            counts[key] = int(n)  # type: ignore[call-overload]
    mem_gen = peak_gib(device, lambda: gen(steer))

    result = {
        "what": "capture vs output_hidden_states, steered vs unsteered generation, peak memory, bf16 vs fp32 parity",
        "model": name,
        "shape": {k: shape[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                                        "num_key_value_heads", "vocab_size")},
        "parameters": sum(p.numel() for p in hf.parameters()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "build_s": round(build_s, 2),
        "weights_gib": weights_gib,
        "backend_default": ours.backend.name,
        "backend_default_error": default_error,
        "capture": {
            "pairs": pairs, "tokens": tokens, "layers": n_layers, "reference_batch": batch, "token_budget": budget,
            "hf_output_hidden_states_s": round(t_ref, 4),
            "ours_s": round(t_ours, 4),
            "hooks_s": round(t_hooks, 4),
            "speedup_vs_hf": round(t_ref / t_ours, 2),
            "hooks_speedup_vs_hf": round(t_ref / t_hooks, 2),
            "ours_tokens_per_s": round(tokens / t_ours, 1),
            "hf_tokens_per_s": round(tokens / t_ref, 1),
            "rel_err_vs_hf_below_last_layer": round(capture_err, 6),
            "peak_gib_ours": mem_ours,
            "peak_gib_hf": mem_ref,
        },
        "generation": {
            "prompts": gen_prompts, "new_tokens": gen_tokens, "steering": f"Add (unit vector x 4) at layer {n_layers // 2}, scope response",
            "unsteered_s": round(best["unsteered"], 4),
            "steered_s": round(best["steered"], 4),
            "steered_over_unsteered": round(best["steered"] / best["unsteered"], 3),
            "unsteered_tokens_per_s": round(counts["unsteered"] / best["unsteered"], 1),
            "steered_tokens_per_s": round(counts["steered"] / best["steered"], 1),
            "peak_gib_steered": mem_gen,
        },
        "bf16_vs_fp32_tiny": bf16_parity(device),
        "optional_modules_loaded": sorted(m for m in OPTIONAL_MODULES if m in sys.modules),
        "repeats": args.repeats,
        "machine": machine(),
    }
    out = Path(args.out) if args.out else RESULTS / ("gpu-tiny.json" if small else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
