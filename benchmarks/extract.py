"""Benchmark: extraction (generation + activations) vs the reference pipeline, same prompts, same process.

Reference (persona_vectors style): Hugging Face ``generate`` in batches of 20, then a separate forward pass
per sample with ``output_hidden_states=True`` on the full model (LM head included), gradients on.
Ours: ``PersonaModel.generate(..., capture_layers=True)`` -- one batch, KV cache, finished rows dropped,
activations captured during generation, no second pass.

Equality: the reference's activation pass run on *our* responses gives the same vector (cosine).

Run: ``.venv/bin/python benchmarks/extract.py [--per-side 20 --max-new-tokens 64]`` (writes results/extract.json),
or ``--main-job``: the shape of ``extract --trait evil`` with its defaults, 100 rows per side and 48 new
tokens (writes results/extract_main_job.json; the reference then takes about two minutes).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import rel_err, report

from personaspace import load_model, load_trait


def prompts_for(trait, per_side: int):
    rows = []
    for side in ("pos", "neg"):
        for i in range(per_side):
            pair = trait.instructions[i % len(trait.instructions)]
            q = trait.extraction_questions[i % len(trait.extraction_questions)]
            rows.append((side, {"system": pair.pos if side == "pos" else pair.neg, "user": q}))
    return rows


def reference_pipeline(model, prompt_ids, max_new_tokens, seed):
    """HF generate (batches of 20, left padding), then one full forward per sample with hidden states."""
    hf, tok = model.hf_model, model.tokenizer
    tok.padding_side = "left"
    responses = []
    torch.manual_seed(seed)
    started = time.perf_counter()
    for start in range(0, len(prompt_ids), 20):
        batch = prompt_ids[start : start + 20]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in batch])[:, None]).long()
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                              temperature=1.0, top_p=1.0, pad_token_id=tok.pad_token_id)
        for row in out[:, width:].tolist():
            stop = [i for i, t in enumerate(row) if t in model.stop_ids]
            responses.append(row[: stop[0]] if stop else row)
    generation_s = time.perf_counter() - started
    started = time.perf_counter()
    acts = reference_activations(hf, prompt_ids, responses)
    return responses, acts, generation_s, time.perf_counter() - started


def reference_activations(hf, prompt_ids, responses):
    hf.requires_grad_(True)
    rows = []
    for p, r in zip(prompt_ids, responses):
        out = hf(input_ids=torch.tensor([p + r]), output_hidden_states=True)
        hs = out.hidden_states[1:-1]  # blocks 0..n-2 (the last entry is post-norm in Hugging Face)
        rows.append(torch.stack([h[0, len(p):].mean(0) for h in hs]).detach() if r else torch.zeros(len(hs), hf.config.hidden_size))
    hf.requires_grad_(False)
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-side", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trait", default="evil")
    parser.add_argument("--main-job", action="store_true", help="the default extraction's shape: 100 rows per side, 48 new tokens")
    args = parser.parse_args()
    if args.main_job:
        from personaspace.extraction.pipeline import ExtractionConfig

        defaults = ExtractionConfig(trait=args.trait)
        args.per_side, args.max_new_tokens = defaults.n_instructions * defaults.n_questions, defaults.max_new_tokens

    model = load_model()
    trait = load_trait(args.trait)
    rows = prompts_for(trait, args.per_side)
    prompt_ids = [model.prompt_ids(p) for _, p in rows]
    n = args.per_side
    model.generate(["warm-up"], max_new_tokens=4)

    _, _, ref_gen_s, ref_act_s = reference_pipeline(model, prompt_ids, args.max_new_tokens, seed=0)

    started = time.perf_counter()
    ours = model.generate(prompt_ids, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0,
                          batch_size=len(prompt_ids), capture_layers=True, reductions=["response_avg"])
    ours_s = time.perf_counter() - started

    # Equality on identical responses: the reference's activation pass over our answers.
    ref_on_ours = reference_activations(model.hf_model, prompt_ids, [g.response_ids for g in ours])
    mine = ours.activations["response_avg"][:, :-1]
    v_ref = ref_on_ours[:n].mean(0) - ref_on_ours[n:].mean(0)
    v_ours = mine[:n].mean(0) - mine[n:].mean(0)
    cos = torch.nn.functional.cosine_similarity(v_ref, v_ours, dim=-1)
    tokens_ours = sum(len(g.response_ids) for g in ours)

    result = {
        "samples": len(prompt_ids),
        "max_new_tokens": args.max_new_tokens,
        "reference_generation_s": round(ref_gen_s, 2),
        "reference_activation_pass_s": round(ref_act_s, 2),
        "reference_total_s": round(ref_gen_s + ref_act_s, 2),
        "ours_total_s": round(ours_s, 2),
        "speedup_end_to_end": round((ref_gen_s + ref_act_s) / ours_s, 2),
        "our_response_tokens": tokens_ours,
        "min_cosine_per_layer_vs_reference": float(cos.min()),
        "max_rel_error_vector": rel_err(v_ours, v_ref),
        "target_speedup": 3.0,
    }
    report("extract_main_job" if args.main_job else "extract", result)


if __name__ == "__main__":
    main()
