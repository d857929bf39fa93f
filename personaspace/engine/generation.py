"""Batched generation on a backend: left padding, KV cache, seeded sampling, capture, interventions.

Written against the :class:`~personaspace.engine.backends.base.Backend` protocol, so every backend generates
the same way. Rows that have finished are dropped from the batch (and from the KV cache), so a batch
costs what its longest answer costs only for the rows still writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from personaspace.engine.backends.base import Backend
from personaspace.engine.callbacks import ContextSlot, layer_callbacks
from personaspace.engine.capture import CaptureAccumulator
from personaspace.engine.context import StepContext, position_ids
from personaspace.engine.interventions import Intervention

if TYPE_CHECKING:  # shape hints only
    pass


# Bump when sampling draws different tokens for the same seed, so cached runs made before are not reused.
SAMPLER_VERSION = "inverse-cdf-1"


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


def sample_next(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> Tensor:
    """Greedy when temperature is 0, else temperature + nucleus sampling from a seeded generator."""
    logits = logits.float()
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # Inverse-CDF sampling: one uniform draw per row. torch.multinomial draws an exponential per
    # vocabulary entry (50k per row per step), which costs more than the decoder step on CPU.
    cdf = probs.cpu().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return token.to(logits.device)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device, side: str = "left") -> tuple[Tensor, Tensor]:
    """Token ids and attention mask ``[batch, longest]``, padded before (``left``) or after (``right``) each row."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            cols = slice(width - len(s), None) if side == "left" else slice(None, len(s))
            ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def generate_batch(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[int],
    *,
    cfg: SamplingConfig,
    stop_ids: set[int],
    pad_id: int,
    device,
    interventions: dict[int, list[Intervention]],
    capture: CaptureAccumulator | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> list[tuple[list[int], bool]]:
    """Generate for one batch; return ``(response_ids, ended_with_stop_token)`` per prompt.

    Response ids exclude the stop token. With ``capture``, every response token is fed through the model
    once (one extra step at the end if a row hit ``max_new_tokens``), so ``response_avg`` covers exactly
    the returned response ids, as a separate forward over (prompt, response) would.
    """
    if capture is not None and not use_cache:
        raise ValueError("Capture during generation needs the KV cache; capture the finished pairs instead.")
    n = len(prompts)
    prompt_len = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    row_ids = torch.tensor(list(rows), dtype=torch.long, device=device)
    responses: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    slot = ContextSlot()
    fns = layer_callbacks(slot, interventions, capture)
    stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

    def run(ctx: StepContext, ids: Tensor, mask: Tensor, pos: Tensor, cache) -> Tensor:
        slot.ctx = ctx
        if capture is not None:
            capture.begin(ctx)
        return backend.forward(ids, mask, pos, layer_fns=fns, cache=cache, logits_to_keep=1)

    # Prefill.
    ids, mask = pad_batch(prompts, pad_id, device)
    pos = position_ids(mask)
    cache = backend.new_cache() if use_cache else None
    out = run(StepContext(pos, prompt_len, mask.bool(), row_ids), ids, mask, pos, cache)
    cache = out.cache
    alive = torch.arange(n, device=device)  # batch positions (in the cache) -> prompt index
    token = sample_next(out.logits[:, -1], cfg, generator)
    while True:
        is_stop = torch.isin(token, stop_tensor)
        for j, i in enumerate(alive.tolist()):
            if is_stop[j]:
                stopped[i] = True
            else:
                responses[i].append(int(token[j]))
        lengths = torch.tensor([len(responses[i]) for i in alive.tolist()], dtype=torch.long, device=device)
        at_max = lengths >= cfg.max_new_tokens
        feed = ~is_stop & (~at_max | (capture is not None))
        if not bool(feed.any()):
            break
        if not bool(feed.all()):
            keep = feed.nonzero().squeeze(-1)
            alive, token, lengths, at_max = alive[keep], token[keep], lengths[keep], at_max[keep]
            if use_cache:
                cache.batch_select_indices(keep)
                mask = mask[keep]
        step_pos = (prompt_len[alive] + lengths - 1)[:, None]
        ctx_rows = row_ids[alive]
        if use_cache:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            ctx = StepContext(step_pos, prompt_len[alive], torch.ones_like(step_pos, dtype=torch.bool), ctx_rows)
            out = run(ctx, token[:, None], mask, step_pos, cache)
            cache = out.cache
        else:
            seqs = [list(prompts[i]) + responses[i] for i in alive.tolist()]
            full_ids, full_mask = pad_batch(seqs, pad_id, device)
            full_pos = position_ids(full_mask)
            ctx = StepContext(full_pos, prompt_len[alive], full_mask.bool(), ctx_rows)
            out = run(ctx, full_ids, full_mask, full_pos, None)
        if bool(at_max.all()):
            break  # that was the capture-only step for rows at the length limit
        token = sample_next(out.logits[:, -1], cfg, generator)
        if bool(at_max.any()):
            keep = (~at_max).nonzero().squeeze(-1)
            alive, token = alive[keep], token[keep]
            if use_cache:
                cache.batch_select_indices(keep)
                mask = mask[keep]
    return [(responses[i], stopped[i]) for i in range(n)]
