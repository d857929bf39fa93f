"""Streaming capture of residual-stream activations.

Activations are reduced on the fly -- a running per-sample sum and count for each reduction -- so the
memory is O(samples x layers x d_model), never O(tokens). The same accumulator works for one forward
over finished (prompt, response) pairs and for the many small forwards of generation with a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from personaspace._util.shapes import Float, Int  # checked in the tests (jaxtyping)
from personaspace.engine.context import REDUCTIONS, StepContext


@dataclass
class Activations:
    """Captured activations: ``data[reduction]`` is float32 ``[samples, layers, d_model]``.

    ``layers`` lists which model layers the second axis holds; ``counts[reduction]`` the number of tokens
    averaged per sample (0 means the reduction saw no token, e.g. an empty response, and the row is 0).
    """

    data: dict[str, Tensor]
    counts: dict[str, Tensor]
    layers: list[int]

    def __getitem__(self, reduction: str) -> Tensor:
        return self.data[reduction]

    def at(self, reduction: str, layer: int) -> Tensor:
        """``[samples, d_model]`` for one model layer."""
        return self.data[reduction][:, self.layers.index(layer)]

    def select(self, index: Sequence[int] | Tensor) -> Activations:
        idx = torch.as_tensor(index, dtype=torch.long)
        return Activations({k: v[idx] for k, v in self.data.items()}, {k: v[idx] for k, v in self.counts.items()}, list(self.layers))

    @staticmethod
    def concat(parts: Sequence[Activations]) -> Activations:
        first = parts[0]
        return Activations(
            {k: torch.cat([p.data[k] for p in parts]) for k in first.data},
            {k: torch.cat([p.counts[k] for p in parts]) for k in first.counts},
            list(first.layers),
        )


class CaptureAccumulator:
    """Running sums per (sample, layer) for each requested reduction."""

    def __init__(self, layers: Sequence[int], reductions: Sequence[str], n_samples: int, d_model: int):
        unknown = [r for r in reductions if r not in REDUCTIONS]
        if unknown:
            raise ValueError(f"Unknown reductions {unknown}; use any of {REDUCTIONS}.")
        self.layers = list(layers)
        self.reductions = list(reductions)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        # [reductions, layers, samples, d_model]: one (reduction, layer) block is contiguous, so each
        # layer's index_add_ writes into dense rows
        self.sums = torch.zeros(len(self.reductions), len(self.layers), n_samples, d_model, dtype=torch.float32)
        self.counts = torch.zeros(len(self.reductions), n_samples, dtype=torch.float32)
        self._weights: Tensor | None = None
        self._packed_weights: tuple[Tensor, list] | None = None  # (index, segment plan) of this pass

    def begin(self, ctx: StepContext) -> None:
        """Prepare the reduction weights of one forward pass and count its tokens."""
        w = torch.stack([ctx.reduction_mask(r) for r in self.reductions]).float()  # [R, B, T]
        self._weights = w
        self._packed_weights = None
        self._valid = ctx.valid
        self._rows = ctx.rows.to(self.sums.device)  # sample index of each batch row, where the sums live
        self.counts.index_add_(1, self._rows, w.sum(-1).to(self.counts.device))

    def accumulate(self, layer: int, contrib: Float[Tensor, "reductions batch d_model"]) -> None:
        """Add one layer's weighted sums of the current forward pass to each row's sample."""
        self.sums[:, self._slot[layer]].index_add_(1, self._rows, contrib.to(self.sums.device))

    def add(self, layer: int, hidden: Tensor) -> None:
        """Accumulate one layer's output ``hidden`` [batch, seq, d_model] of the current forward pass."""
        w = self._weights.to(hidden.device)
        # Padding rows can hold NaN from fully masked attention: zero them before the weighted sum.
        h = hidden.float().masked_fill(~self._valid.to(hidden.device)[..., None], 0.0)
        self.accumulate(layer, torch.einsum("rbt,btd->rbd", w, h))

    def add_packed(self, layer: int, x: Float[Tensor, "tokens d_model"], index: Int[Tensor, " tokens"]) -> None:
        """Accumulate one layer's output on packed real tokens: ``x[j]`` is flat position ``index[j]``.

        Each token adds to one sample, so every reduction is a segment sum: the tokens it counts are
        added straight into their samples' rows (``index_add_``). A reduction that counts no token of
        this pass (``response_avg`` in a prefill, ``prompt_*`` in a decode step) costs nothing. The plan
        (which tokens, which samples) is built once per forward pass: every layer shares ``index``.
        """
        if self._packed_weights is None or self._packed_weights[0] is not index:
            self._packed_weights = (index, self._segments(index))
        x = x.float()
        for r, tokens, samples, weight in self._packed_weights[1]:
            part = x if tokens is None else x.index_select(0, tokens)
            if weight is not None:
                part = part * weight[:, None]
            self.sums[r, self._slot[layer]].index_add_(0, samples, part.to(self.sums.device))

    def fan_out(self, sources: Int[Tensor, " n"], targets: Int[Tensor, " n"]) -> None:
        """Add what samples ``sources`` hold so far to samples ``targets`` (sums and counts): after a pass over
        a prompt prefix that several prompts share, fed once for its first prompt."""
        self.sums.index_add_(2, targets.to(self.sums.device), self.sums.index_select(2, sources.to(self.sums.device)))
        self.counts.index_add_(1, targets.to(self.counts.device), self.counts.index_select(1, sources.to(self.counts.device)))

    def _segments(self, index: Tensor) -> list[tuple[int, Tensor | None, Tensor, Tensor | None]]:
        """Per reduction with any weight in this pass: (reduction, packed tokens or None for all, their
        samples, their weights or None when all are 1)."""
        r, batch, seq = self._weights.shape
        weights = self._weights.to(index.device).reshape(r, batch * seq).index_select(1, index)  # [R, tokens]
        samples_all = self._rows.to(index.device)[index // seq]
        plan: list[tuple[int, Tensor | None, Tensor, Tensor | None]] = []
        for k in range(r):
            w = weights[k]
            tokens = w.nonzero().squeeze(1)
            if tokens.numel() == 0:
                continue
            if tokens.numel() == w.numel():
                plan.append((k, None, samples_all, None if bool((w == 1).all()) else w))
            else:
                wk = w.index_select(0, tokens)
                plan.append((k, tokens, samples_all.index_select(0, tokens), None if bool((wk == 1).all()) else wk))
        return plan

    def result(self) -> Activations:
        means = (self.sums / self.counts.clamp(min=1)[:, None, :, None]).transpose(1, 2).contiguous()
        return Activations(
            {r: means[i] for i, r in enumerate(self.reductions)},
            {r: self.counts[i].long() for i, r in enumerate(self.reductions)},
            list(self.layers),
        )
