"""Reference computations the engine is tested against: plain Hugging Face forwards, one sample at a time."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def raw_last_layer(hf_model):
    """Make ``hidden_states[-1]`` the raw last block output by removing the final norm for a while.

    Hugging Face applies the final norm to the last entry of ``output_hidden_states`` only; our layer
    convention reads raw block outputs at every layer, the last included.
    """
    base = getattr(hf_model, getattr(hf_model, "base_model_prefix", "") or "model", None)
    base = hf_model.model if base is None else base
    name = next(n for n in FINAL_NORMS if isinstance(getattr(base, n, None), torch.nn.Module))
    norm = getattr(base, name)
    setattr(base, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(base, name, norm)


FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")  # Llama-like, GPT-2, GPT-NeoX


def reference_reductions(hf_model, prompt_ids, response_ids, layers):
    """Per-sample reductions from ``output_hidden_states`` (no padding, no batching)."""
    out = {"prompt_avg": [], "prompt_last": [], "response_avg": [], "all_avg": []}
    with torch.no_grad(), raw_last_layer(hf_model):
        for p, r in zip(prompt_ids, response_ids):
            ids = torch.tensor([list(p) + list(r)])
            hs = hf_model(input_ids=ids, output_hidden_states=True).hidden_states
            stack = torch.stack([hs[layer + 1][0] for layer in layers], dim=1)  # [T, layers, d]
            n = len(p)
            out["prompt_avg"].append(stack[:n].mean(0))
            out["prompt_last"].append(stack[n - 1])
            out["response_avg"].append(stack[n:].mean(0) if len(r) else torch.zeros_like(stack[0]))
            out["all_avg"].append(stack.mean(0))
    return {k: torch.stack(v) for k, v in out.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))
