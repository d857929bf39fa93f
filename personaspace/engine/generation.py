"""Batched generation on a backend: left padding, KV cache, seeded sampling, capture, interventions.

Written against the :class:`~personaspace.engine.backends.base.Backend` protocol, so every backend generates
the same way. Rows that have finished are dropped from the batch (and from the KV cache), so a batch
costs what its longest answer costs only for the rows still writing.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from personaspace._util.shapes import Float, Int  # checked in the tests (jaxtyping)
from personaspace.engine.backends.base import Backend, ForwardOutput
from personaspace.engine.backends.packed_linear import VOCAB_CHUNK as DEFAULT_VOCAB_CHUNK
from personaspace.engine.backends.packed_linear import ChunkedHead
from personaspace.engine.backends.slot_cache import SlotCache
from personaspace.engine.callbacks import ContextSlot, layer_callbacks
from personaspace.engine.capture import CaptureAccumulator
from personaspace.engine.context import StepContext, position_ids
from personaspace.engine.interventions import Intervention

# Bump when sampling draws different tokens for the same seed, so cached runs made before are not reused.
# 2: one uniform per row that samples (rows at the length limit that are only fed for capture draw none);
#    the fused backend's static-cache loop (continuous batching when prompts outnumber ``batch_size``).
# 3: one random stream per prompt (:class:`RowStreams`), so a token that float rounding flips in one row
#    no longer reshuffles every other row's draws, and no row's draws depend on ``batch_size``.
SAMPLER_VERSION = "inverse-cdf-3"

# Vocabulary rows per LM-head chunk when the head and the sampler are fused (packed_linear.VOCAB_CHUNK).
VOCAB_CHUNK = DEFAULT_VOCAB_CHUNK

# Prompt tokens per prefill forward when many prompts are admitted at once: the activations of a few
# thousand tokens stay in the CPU's cache between the matmuls and the elementwise work around them (the
# main job's 8,680-token prefill runs about 20% faster in groups of 2,048 than whole). The rows are then
# sampled together, as after one prefill.
PREFILL_TOKENS = 2048


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


class RowStreams:
    """One seeded random stream per prompt of a generation call, keyed by ``(seed, the prompt's index in
    the call)``: each sampled token of a row takes that row's next uniform. A row's draws therefore do
    not depend on which rows share its batch, on ``batch_size`` (slots), or on what other rows sampled:
    a token that float rounding flips (another kernel, another summation order) changes that row's
    answer only, where one shared stream would shift every later draw of every row."""

    def __init__(self, seed: int, rows: Sequence[int]):
        self._streams = {row: torch.Generator().manual_seed(_row_seed(seed, row)) for row in rows}

    def uniforms(self, cfg: SamplingConfig, rows: Sequence[int]) -> Tensor | None:
        """The next uniform of each of ``rows``, ``[len(rows), 1]`` float32 (None when greedy: no draw)."""
        if cfg.temperature <= 0:
            return None
        return torch.cat([torch.rand(1, generator=self._streams[row], dtype=torch.float32) for row in rows])[:, None]


def _row_seed(seed: int, row: int) -> int:
    """A 63-bit seed for row ``row`` of a call seeded ``seed`` (a hash: nearby seeds and rows give unrelated streams)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{row}".encode(), digest_size=8).digest(), "little") >> 1


def sample_next(logits: Tensor, cfg: SamplingConfig, uniforms: Tensor | None) -> Tensor:
    """Greedy when temperature is 0, else temperature + nucleus sampling by inverse CDF at ``uniforms``."""
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
    assert uniforms is not None, "sampling at temperature > 0 needs uniforms (RowStreams)"
    cdf = probs.cpu().cumsum(-1)
    u = uniforms.to(cdf.dtype) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return token.to(logits.device)


def sample_from_hidden(hidden: Float[Tensor, "rows d_model"], head: Float[Tensor, "vocab d_model"] | ChunkedHead,
                       cfg: SamplingConfig, uniforms: Tensor | None) -> Int[Tensor, " rows"]:
    """The next token of each row from its final hidden state, with the LM head applied chunk by chunk.

    ``head`` is the LM head weight or a :class:`ChunkedHead` made from it. The same draw as
    :func:`sample_next` on ``hidden @ weight.T`` (up to float rounding): greedy is the first maximum;
    sampling is the inverse CDF of the softmax at each row's uniform, found in two levels -- which
    vocabulary chunk (from per-chunk masses), then which token inside it -- so no whole-vocabulary
    softmax, cumulative sum or sort is ever built. Nucleus sampling (``top_p < 1``) needs the sort and
    takes the whole-vocabulary path.
    """
    head = head if isinstance(head, ChunkedHead) else ChunkedHead(head, VOCAB_CHUNK)
    vocab, width, n_chunks = head.vocab, head.chunk, len(head.starts)
    if cfg.top_p < 1.0:
        return sample_next(torch.cat([head.logits(hidden, c) for c in range(n_chunks)], dim=-1), cfg, uniforms)
    if cfg.temperature <= 0:
        best, index = head.logits(hidden, 0).float().max(-1)
        for c in range(1, n_chunks):
            value, at = head.logits(hidden, c).float().max(-1)
            better = value > best  # strictly greater: ties keep the earlier token, as argmax does
            best, index = torch.where(better, value, best), torch.where(better, at + c * width, index)
        return index
    rows = hidden.shape[0]
    parts = []  # each chunk's logits, kept for the one chunk each row samples inside
    lse = torch.empty(n_chunks, rows, dtype=torch.float32, device=hidden.device)  # log of each chunk's mass
    for c in range(n_chunks):
        chunk = head.logits(hidden, c).float()
        if cfg.temperature != 1.0:
            chunk.div_(cfg.temperature)
        torch.logsumexp(chunk, -1, out=lse[c])
        parts.append(chunk)
    assert uniforms is not None, "sampling at temperature > 0 needs uniforms (RowStreams)"
    top = lse.amax(0)
    cum = torch.exp(lse - top).t().cumsum(-1)  # [rows, chunks]: cumulative mass, relative to the largest chunk's
    u = uniforms.to(cum.device) * cum[:, -1:]
    which = torch.searchsorted(cum, u).clamp_(max=n_chunks - 1)  # [rows, 1]
    before = torch.where(which > 0, cum.gather(1, (which - 1).clamp(min=0)), torch.zeros_like(u))
    chosen = which.squeeze(1)
    mass = lse.gather(0, which.t()).squeeze(0)  # [rows]: log mass of each row's chosen chunk
    picked = torch.full((rows, width), float("-inf"), device=hidden.device)  # past the vocabulary: no mass
    for c in chosen.unique().tolist():
        at = (chosen == c).nonzero().squeeze(1)
        picked[at, : parts[c].shape[1]] = parts[c].index_select(0, at)
    inside = torch.exp(picked - mass[:, None]).cumsum(-1)  # [rows, width]: the chunk's CDF
    target = (u - before) / torch.exp(mass - top)[:, None]
    offset = torch.searchsorted(inside, target).squeeze(1).clamp_(max=width - 1)
    return (chosen * width + offset).clamp_(max=vocab - 1)


class CallbackForward:
    """Forward passes of ``backend`` with the engine's layer callbacks (interventions, then capture).

    Each pass first sets the :class:`~personaspace.engine.context.StepContext` the callbacks read and
    starts the capture's pass (its token weights and counts), then runs the backend.
    """

    def __init__(self, backend: Any, interventions: dict[int, list[Intervention]], capture: CaptureAccumulator | None):
        self.backend, self.capture = backend, capture
        self.slot = ContextSlot()
        self.layer_fns = layer_callbacks(self.slot, interventions, capture)

    def __call__(self, ctx: StepContext, ids: Tensor, mask: Tensor, pos: Tensor, **kwargs: Any) -> ForwardOutput:
        self.slot.ctx = ctx
        if self.capture is not None:
            self.capture.begin(ctx)
        return self.backend.forward(ids, mask, pos, layer_fns=self.layer_fns, **kwargs)


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
) -> list[tuple[list[int], bool]]:
    """Generate for one batch on any backend; return ``(response_ids, ended_with_stop_token)`` per prompt.

    Left-padded prefill, then one step per new token with the backend's own KV cache (or, without one,
    a full forward per step); rows that finish are dropped from the batch and the cache. Response ids
    exclude the stop token. With ``capture``, every response token is fed through the model once (one
    extra step at the end if a row hit ``max_new_tokens``), so ``response_avg`` covers exactly the
    returned response ids, as a separate forward over (prompt, response) would. Sampling draws from
    each prompt's own stream (:class:`RowStreams`, keyed by ``cfg.seed`` and the prompt's entry in ``rows``).
    """
    if capture is not None and not use_cache:
        raise ValueError("Capture during generation needs the KV cache; capture the finished pairs instead.")
    n = len(prompts)
    prompt_len = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    row_ids = torch.tensor(list(rows), dtype=torch.long, device=device)
    responses: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    forward = CallbackForward(backend, interventions, capture)
    stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    streams = RowStreams(cfg.seed, rows)

    def run(ctx: StepContext, ids: Tensor, mask: Tensor, pos: Tensor, cache) -> ForwardOutput:
        return forward(ctx, ids, mask, pos, cache=cache, logits_to_keep=1)

    def sample(out: ForwardOutput, keep: Tensor | None = None) -> Tensor:
        """The next token of each live row (``alive``; the step's rows ``keep`` of them) from its last logits."""
        assert out.logits is not None, "generation needs the backend's logits"
        logits = out.logits[:, -1] if keep is None else out.logits[keep, -1]
        return sample_next(logits, cfg, streams.uniforms(cfg, [rows[i] for i in alive.tolist()]))

    # Prefill.
    ids, mask = pad_batch(prompts, pad_id, device)
    pos = position_ids(mask)
    cache = backend.new_cache() if use_cache else None
    out = run(StepContext(pos, prompt_len, mask.bool(), row_ids), ids, mask, pos, cache)
    cache = out.cache
    alive = torch.arange(n, device=device)  # batch positions (in the cache) -> prompt index
    token = sample(out)
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
        if bool(at_max.any()):  # rows at the limit were fed for capture only: they stop here
            keep = (~at_max).nonzero().squeeze(-1)
            alive = alive[keep]
            if use_cache:
                cache.batch_select_indices(keep)
                mask = mask[keep]
            token = sample(out, keep)
        else:
            token = sample(out)
    return [(responses[i], stopped[i]) for i in range(n)]


def prefill_groups(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of prompts, each at most ``budget`` tokens (or one prompt, if longer alone)."""
    groups: list[range] = []
    start, total = 0, 0
    for j, n in enumerate(lengths):
        if j > start and total + n > budget:
            groups.append(range(start, j))
            start, total = j, 0
        total += n
    groups.append(range(start, len(lengths)))
    return groups


# Shortest prompt prefix worth computing once for several prompts (below it the extra forward costs more).
MIN_SHARED_PREFIX = 8


def shared_prefixes(prompts: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> list[tuple[int, list[int]]]:
    """Groups of prompts that begin with the same tokens: ``(length, members)`` with ``members`` indices into
    ``prompts``, each group's first ``length`` tokens identical, ``length >= minimum``, and every member longer
    than ``length`` (its last prompt token is always its own). Each prompt is in at most one group.

    One level of sharing per prompt, chosen to save the most prefill tokens: the prompts are sorted, and a
    run of them sharing ``m`` tokens is either one group or split where neighbours share only ``m`` (10
    system prompts x 20 questions: ten groups of a system prompt each, not one group of the chat template's
    first tokens).
    """
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))

    def common(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return min(n, len(a) - 1, len(b) - 1)

    shared = [common(prompts[a], prompts[b]) for a, b in zip(order, order[1:])]  # between sorted neighbours

    def best(lo: int, hi: int) -> tuple[int, list[tuple[int, list[int]]]]:  # sorted prompts lo .. hi - 1
        if hi - lo < 2:
            return 0, []
        m = min(shared[lo : hi - 1])
        whole = (hi - lo - 1) * m if m >= minimum else 0
        cuts = [lo] + [j + 1 for j in range(lo, hi - 1) if shared[j] == m] + [hi]
        saved, groups = 0, list[tuple[int, list[int]]]()
        if m < max(shared[lo : hi - 1]):  # a split can keep longer prefixes
            for a, b in zip(cuts, cuts[1:]):
                part_saved, part_groups = best(a, b)
                saved, groups = saved + part_saved, groups + part_groups
        if whole >= saved and whole > 0:
            return whole, [(m, sorted(order[lo:hi]))]
        return saved, groups

    return sorted(best(0, len(order))[1], key=lambda group: group[1][0])


def generate_slots(
    backend: Any,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[int],
    *,
    cfg: SamplingConfig,
    stop_ids: set[int],
    pad_id: int,
    device,
    interventions: dict[int, list[Intervention]],
    cache: SlotCache,
    capture: CaptureAccumulator | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[tuple[list[int], bool]]:
    """Generate on a static :class:`SlotCache` with continuous batching (fused backend).

    Prompts are admitted in the order given into free slots (a packed prefill of the new rows), and
    every live row then advances one token per decode step. A row that finishes frees its slot at
    once: the last live row moves into it, and the next waiting prompt is prefilled into the first free
    slot, so a step always decodes ``min(slots, rows left)`` rows. The LM head and the sampler run
    together, chunked over the vocabulary (:func:`sample_from_hidden`). Each sampled token takes the next
    uniform of its prompt's own stream (:class:`RowStreams`), as in :func:`generate_batch`: the same
    draws whatever the number of slots. Same contract otherwise (response ids without the stop token, capture of
    every response token). ``on_done(k)`` is told when ``k`` more rows have finished.
    """
    n = len(prompts)
    head = backend.lm_head()
    prompt_len = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    row_ids = torch.tensor(list(rows), dtype=torch.long, device=device)
    responses: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    capture_only = [False] * n  # at the length limit: fed once more for capture, not sampled
    streams = RowStreams(cfg.seed, rows)
    forward = CallbackForward(backend, interventions, capture)
    queue = deque(range(n))
    live: list[int] = []  # prompt index in each occupied slot, slots 0 .. len(live) - 1
    pending: list[int] = []  # token each live row feeds next

    def run(ctx: StepContext, ids: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        hidden = forward(ctx, ids, mask, pos, cache=cache, logits_to_keep=1).hidden
        assert hidden is not None, "a slot-cache forward returns the final hidden states"
        return hidden

    def sample(hidden: Tensor, who: list[int]) -> list[int]:
        """Tokens for rows ``who`` (prompt indices), each from its own stream."""
        return sample_from_hidden(hidden, head, cfg, streams.uniforms(cfg, [rows[i] for i in who])).tolist()

    def take(who: list[int], tokens: list[int]) -> list[bool]:
        """Record sampled tokens; True for each row that is finished."""
        done = []
        for i, t in zip(who, tokens):
            if t in stop_ids:
                stopped[i] = True
                done.append(True)
                continue
            responses[i].append(t)
            capture_only[i] = len(responses[i]) >= cfg.max_new_tokens
            done.append(capture_only[i] and capture is None)
        return done

    def release(finished: list[int]) -> None:
        """Free the slots in ``finished``: fill each hole with the last live row."""
        for hole in sorted(finished, reverse=True):
            last = len(live) - 1
            if hole != last:
                cache.move(last, hole)
                live[hole], pending[hole] = live[last], pending[last]
            live.pop()
            pending.pop()
        if on_done is not None and finished:
            on_done(len(finished))

    # Shared prompt prefixes are computed once only when every layer callback works on packed tokens
    # position by position (the engine's own do): nothing else could tell the rows apart inside them.
    can_share = all(getattr(fn, "handles_packed", lambda _: False)(layer) for layer, fn in forward.layer_fns.items())

    def prefill(who: list[int], begin: list[int], end: list[int]) -> Tensor:
        """Feed tokens ``begin[j] .. end[j] - 1`` of prompt ``who[j]`` into slots ``len(live) + j`` (packed, in
        groups of at most ``PREFILL_TOKENS`` tokens); the final hidden state of each row's last token."""
        first, parts = len(live), []
        for group in prefill_groups([b - a for a, b in zip(begin, end)], PREFILL_TOKENS):
            sub = who[group.start : group.stop]
            ids, mask = pad_batch([prompts[i][begin[j] : end[j]] for j, i in zip(group, sub)], pad_id, device, side="right")
            pos = position_ids(mask) + torch.tensor(begin[group.start : group.stop], dtype=torch.long, device=device)[:, None]
            cache.first_slot = first + group.start
            parts.append(run(StepContext(pos, prompt_len[sub], mask.bool(), row_ids[sub]), ids, mask, pos))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def admit(new: list[int]) -> tuple[list[int], Tensor]:
        """Prefill prompts ``new`` into the next free slots; the order they now occupy and their last hidden states.

        Prompts that begin alike (:func:`shared_prefixes`) have their common prefix computed once, in the
        slot of the group's first prompt, then copied into the others' slots (keys, values, and the
        capture's sums); each prompt then prefills only its own remaining tokens.
        """
        groups = shared_prefixes([prompts[i] for i in new]) if can_share and len(new) > 1 else []
        begin = dict.fromkeys(new, 0)
        if groups:
            owners = [new[members[0]] for _, members in groups]
            sharers = [[new[m] for m in members[1:]] for _, members in groups]
            taken = set(owners)
            new = owners + [i for i in new if i not in taken]  # the owners' slots come first
            slot = {i: len(live) + j for j, i in enumerate(new)}
            prefill(owners, [0] * len(owners), [n for n, _ in groups])
            for owner, others, (n, _) in zip(owners, sharers, groups):
                cache.share(slot[owner], [slot[i] for i in others], n)
                if capture is not None:
                    capture.fan_out(row_ids[[owner] * len(others)], row_ids[others])
                begin.update(dict.fromkeys([owner, *others], n))
        return new, prefill(new, [begin[i] for i in new], [len(prompts[i]) for i in new])

    while queue or live:
        if queue and len(live) < cache.slots:
            first = len(live)
            new, hidden = admit([queue.popleft() for _ in range(min(cache.slots - len(live), len(queue)))])
            live.extend(new)
            tokens = sample(hidden, new)
            pending.extend(tokens)
            release([first + j for j, d in enumerate(take(new, tokens)) if d])
            continue  # admit again if rows finished at once; else decode
        cache.first_slot = 0
        step_pos = torch.tensor([len(prompts[i]) + len(responses[i]) - 1 for i in live], dtype=torch.long, device=device)[:, None]
        here = torch.tensor(live, dtype=torch.long, device=device)
        ctx = StepContext(step_pos, prompt_len[here], torch.ones_like(step_pos, dtype=torch.bool), row_ids[here])
        hidden = run(ctx, torch.tensor(pending, dtype=torch.long, device=device)[:, None], torch.ones_like(step_pos), step_pos)
        sampling = [j for j, i in enumerate(live) if not capture_only[i]]
        finished = [j for j, i in enumerate(live) if capture_only[i]]
        if sampling:
            who = [live[j] for j in sampling]
            tokens = sample(hidden[sampling] if len(sampling) < len(live) else hidden, who)
            for j, t, d in zip(sampling, tokens, take(who, tokens)):
                pending[j] = t
                if d:
                    finished.append(j)
        release(finished)
    return [(responses[i], stopped[i]) for i in range(n)]
