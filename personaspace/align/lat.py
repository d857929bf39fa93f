"""Targeted latent adversarial training (LAT): a bounded residual-stream adversary and the defence step.

Input is any list of (prompt, safe, unsafe) triples. The adversary is a per-token perturbation
``delta[B, T, d]`` added to the residual stream at a few layers (the embedding output and evenly spaced
decoder blocks by default) at the prompt positions. Each token's delta lies in an L2 ball of radius
``eps``; the default radius is 6.0 at width 4096 scaled by ``sqrt(d / 4096)``, with ``d`` read from the
model config. PGD (Adam, then projection onto the ball) moves delta towards the unsafe completion and away
from the safe one. The defence trains the model (a LoRA adapter; see :mod:`personaspace.engine.adapters`) under
the frozen perturbation towards the safe completion and away from the unsafe one, plus a KL term that holds
it to the base model on benign anchor data. Method facts: targeted LAT (Sheshadri et al. 2024) as used by
Latent Personality Alignment (Le, Williams-King et al. 2026).

Loss terms, per example averaged over its completion tokens, then over the batch:
``towards(c) = -log p(c)``; ``away(c) = -log(1 - p(c_t))`` per token; ``kl = KL(new || base)`` over the
vocabulary at the anchor completion positions.

Both completions of a triple share one forward pass: the row is ``prompt + safe + unsafe`` with a 4-D
attention mask in which unsafe tokens cannot see safe tokens and restart their position ids after the
prompt, so the prompt (most of the tokens) is computed once. Logits are computed only at the positions
that predict completion tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from personaspace.engine.forward import EMBED, Edits, TokenBatch, hidden_states, output_logits, residual_edits
from personaspace.engine.layers import check_layer, default_layers
from personaspace.errors import AlignmentError, LayerOutOfRangeError

if TYPE_CHECKING:
    from personaspace.engine import PersonaModel
    from personaspace.engine.chat import PromptLike

REFERENCE_EPS = 6.0
REFERENCE_WIDTH = 4096

AttackLayer = int | str  # a decoder block index, or EMBED for the embedding output
ATTACK_BLOCKS = 4  # decoder blocks perturbed by default, besides the embedding output


# ---- data the engine consumes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Triple:
    """One training item: a prompt, the completion to make likely, the completion to make unlikely."""

    prompt: PromptLike
    safe: str
    unsafe: str


@dataclass(frozen=True)
class Anchor:
    """A benign (prompt, completion) pair on which the trained model is held to the base model."""

    prompt: PromptLike
    completion: str


# ---- sizes ------------------------------------------------------------------------------------------


def eps_for_width(d_model: int, eps_ref: float = REFERENCE_EPS, width_ref: int = REFERENCE_WIDTH) -> float:
    """Per-token L2 radius for a residual stream of width ``d_model`` (6.0 at 4096, scaled by sqrt(d))."""
    return float(eps_ref * math.sqrt(d_model / width_ref))


def resolve_attack_layers(spec: Any, n_layers: int) -> tuple[AttackLayer, ...]:
    """``None``, ``"embed,6,12"`` or an iterable of ints and ``"embed"``.

    ``None`` is the default: the embedding output plus :data:`ATTACK_BLOCKS` evenly spaced blocks
    (:func:`~personaspace.engine.layers.default_layers`: embed, 6, 12, 18, 24 of 30).
    """
    if spec is None:
        return (EMBED, *default_layers(n_layers, ATTACK_BLOCKS))
    parts = spec.replace(" ", "").split(",") if isinstance(spec, str) else list(spec if not isinstance(spec, int) else [spec])
    out: list[AttackLayer] = []
    for part in parts:
        if isinstance(part, str) and part.lower() in (EMBED, "emb", "embedding"):
            out.append(EMBED)
            continue
        try:
            layer = int(str(part).removeprefix("L"))
        except ValueError:
            raise LayerOutOfRangeError(f"Cannot read attack layer {part!r}; use 'embed' or a block index such as 6.") from None
        out.append(check_layer(layer, n_layers))
    if not out:
        raise AlignmentError("The adversary needs at least one layer to perturb.")
    blocks = sorted({x for x in out if x != EMBED})  # type: ignore[misc]
    return ((EMBED,) if EMBED in out else ()) + tuple(blocks)


# ---- packing ----------------------------------------------------------------------------------------


@dataclass
class Targets:
    """Which positions predict which completion tokens: all ``[B, L]``."""

    pos: Tensor  # long: position whose logits predict the token
    ids: Tensor  # long: the token
    valid: Tensor  # bool: False on padding


@dataclass
class Packed:
    """A batch of rows ``prompt + first (+ second)`` sharing the prompt, ready for one forward pass."""

    input_ids: Tensor  # long [B, T]
    position_ids: Tensor  # long [B, T]
    attention_mask: Tensor  # float [B, 1, T, T]: 0 where attention is allowed, dtype-min elsewhere
    prompt_mask: Tensor  # bool [B, T]: prompt tokens (where the adversary acts)
    first: Targets
    second: Targets | None = None
    n_tokens: int = 0  # real tokens in the batch

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack(
    model: PersonaModel,
    prompts: Sequence[PromptLike],
    first: Sequence[str],
    second: Sequence[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Packed:
    """Tokenise (prompt, first[, second]) rows into a :class:`Packed` batch (right padding)."""
    if not prompts:
        raise AlignmentError("Cannot pack an empty batch.")
    rows = []
    for i, prompt in enumerate(prompts):
        p = model.prompt_ids(prompt)
        a = model.response_ids(first[i])
        b = model.response_ids(second[i]) if second is not None else []
        if not p or not a or (second is not None and not b):
            raise AlignmentError(f"Row {i} has an empty prompt or completion after tokenisation.")
        rows.append((p, a, b))
    B = len(rows)
    T = max(len(p) + len(a) + len(b) for p, a, b in rows)
    La = max(len(a) for _, a, _ in rows)
    Lb = max(len(b) for _, _, b in rows) if second is not None else 0
    ids = torch.full((B, T), model.pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    block = torch.full((B, T), -1, dtype=torch.long)  # 0 prompt, 1 first, 2 second, -1 padding
    tgt = {k: (torch.zeros((B, n), dtype=torch.long), torch.zeros((B, n), dtype=torch.long), torch.zeros((B, n), dtype=torch.bool)) for k, n in (("a", La), ("b", Lb))}
    for r, (p, a, b) in enumerate(rows):
        n_p, n_a = len(p), len(a)
        seq = p + a + b
        ids[r, : len(seq)] = torch.tensor(seq)
        pos[r, : n_p + n_a] = torch.arange(n_p + n_a)
        pos[r, n_p + n_a : len(seq)] = torch.arange(n_p, n_p + len(b))
        block[r, :n_p], block[r, n_p : n_p + n_a], block[r, n_p + n_a : len(seq)] = 0, 1, 2
        for key, toks, start in (("a", a, n_p), ("b", b, n_p + n_a)):
            if not toks:
                continue
            where = [n_p - 1] + list(range(start, start + len(toks) - 1))
            tgt[key][0][r, : len(toks)] = torch.tensor(where)
            tgt[key][1][r, : len(toks)] = torch.tensor(toks)
            tgt[key][2][r, : len(toks)] = True
    real = block >= 0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same_or_prompt = (block[:, None, :] == 0) | (block[:, None, :] == block[:, :, None])
    allowed = causal[None] & same_or_prompt & real[:, None, :] & real[:, :, None]
    allowed |= torch.eye(T, dtype=torch.bool)[None]  # padding rows see themselves (no all-masked softmax)
    mask = torch.zeros((B, 1, T, T), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    device = model.device
    first_t = Targets(*(t.to(device) for t in tgt["a"]))
    second_t = Targets(*(t.to(device) for t in tgt["b"])) if second is not None else None
    return Packed(ids.to(device), pos.to(device), mask.to(device), (block == 0).to(device), first_t, second_t, int(real.sum()))


def pack_triples(model: PersonaModel, triples: Sequence[Triple]) -> Packed:
    """Rows ``prompt + safe + unsafe``: ``first`` targets the safe completion, ``second`` the unsafe one."""
    return pack(model, [t.prompt for t in triples], [t.safe for t in triples], [t.unsafe for t in triples])


def pack_anchors(model: PersonaModel, anchors: Sequence[Anchor]) -> Packed:
    return pack(model, [a.prompt for a in anchors], [a.completion for a in anchors])


# ---- forward ----------------------------------------------------------------------------------------


def target_logits(model: PersonaModel, batch: Packed, perturbation: Perturbation | None = None) -> tuple[Tensor, Tensor | None]:
    """Logits ``[B, L, vocab]`` at the positions predicting the first (and second) completion tokens.

    With a ``perturbation``, it is applied to the residual stream for this forward only.
    """
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.position_ids)
    hidden = hidden_states(model, tokens, edits=perturbation.edits() if perturbation is not None else None)  # [B, T, d]

    def at(t: Targets) -> Tensor:
        return output_logits(model, hidden.gather(1, t.pos[..., None].expand(-1, -1, hidden.shape[-1])))

    return at(batch.first), (at(batch.second) if batch.second is not None else None)


def token_logprobs(logits: Tensor, t: Targets) -> Tensor:
    """log p of each target token, ``[B, L]`` (0 on padding)."""
    lp = torch.log_softmax(logits, dim=-1).gather(-1, t.ids[..., None])[..., 0]
    return lp * t.valid


def _per_example_mean(values: Tensor, valid: Tensor) -> Tensor:
    n = valid.sum(-1).clamp(min=1)
    return ((values * valid).sum(-1) / n).mean()


def towards_loss(logits: Tensor, t: Targets) -> Tensor:
    """Cross-entropy of the target completion (make it likely)."""
    return _per_example_mean(-token_logprobs(logits, t), t.valid)


def away_loss(logits: Tensor, t: Targets) -> Tensor:
    """``-log(1 - p)`` per target token (make it unlikely; bounded gradient unlike negative CE)."""
    lp = token_logprobs(logits, t).clamp(max=math.log1p(-1e-6))
    return _per_example_mean(-torch.log1p(-lp.exp()), t.valid)


def kl_loss(logits: Tensor, base_logprobs: Tensor, t: Targets) -> Tensor:
    """``KL(new || base)`` over the vocabulary at each target position."""
    lp = torch.log_softmax(logits, dim=-1)
    kl = (lp.exp() * (lp - base_logprobs)).sum(-1)
    return _per_example_mean(kl, t.valid)


def sequence_logprob(logits: Tensor, t: Targets) -> Tensor:
    """Total log p of each completion, ``[B]``."""
    return token_logprobs(logits, t).sum(-1)


@torch.no_grad()
def base_logprobs(model: PersonaModel, anchors: Packed) -> Tensor:
    """Log-probabilities ``[B, L, vocab]`` at the anchor positions (call with the adapter disabled)."""
    logits, _ = target_logits(model, anchors)
    return torch.log_softmax(logits, dim=-1)


# ---- the adversary ----------------------------------------------------------------------------------


class Perturbation:
    """``delta[layer]`` of shape ``[B, T, d]``, zero outside the prompt, each token inside an L2 ball of radius ``eps``."""

    def __init__(self, layers: Sequence[AttackLayer], batch: Packed, d_model: int, eps: float, *, dtype: torch.dtype = torch.float32):
        if eps < 0:
            raise AlignmentError(f"The perturbation radius must be non-negative, got {eps}.")
        self.layers = tuple(layers)
        self.eps = float(eps)
        self.mask = batch.prompt_mask[..., None].to(dtype)  # [B, T, 1]
        B, T = batch.input_ids.shape
        self.deltas: dict[AttackLayer, Tensor] = {
            layer: torch.zeros((B, T, d_model), dtype=dtype, device=batch.input_ids.device, requires_grad=True) for layer in self.layers
        }

    def parameters(self) -> list[Tensor]:
        return list(self.deltas.values())

    @torch.no_grad()
    def project_(self) -> None:
        """Zero delta outside the prompt and scale each token's delta back into the ball."""
        for delta in self.deltas.values():
            delta.mul_(self.mask)
            norms = delta.norm(dim=-1, keepdim=True)
            delta.mul_((self.eps / norms.clamp(min=1e-12)).clamp(max=1.0))

    @torch.no_grad()
    def max_norm(self) -> float:
        """The largest per-token L2 norm over all layers (must stay <= eps)."""
        return max(float(d.norm(dim=-1).max()) for d in self.deltas.values())

    def frozen(self) -> Perturbation:
        """A detached copy, for the defence step (no gradient flows into the adversary)."""
        new = object.__new__(Perturbation)
        new.layers, new.eps, new.mask = self.layers, self.eps, self.mask
        new.deltas = {k: v.detach().clone() for k, v in self.deltas.items()}
        return new

    def _add(self, layer: AttackLayer, hidden: Tensor) -> Tensor:
        delta = self.deltas[layer]
        if hidden.shape != delta.shape:
            raise AlignmentError(
                f"The perturbation was built for a batch of shape {tuple(delta.shape)} but the model ran on {tuple(hidden.shape)}."
            )
        return hidden + delta.to(hidden.dtype) * self.mask.to(hidden.dtype)

    def edits(self) -> Edits:
        """What the engine adds at each perturbed site (the embedding output and block outputs)."""
        return {layer: functools.partial(self._add, layer) for layer in self.layers}

    def applied(self, model: PersonaModel) -> contextlib.AbstractContextManager[None]:
        """Add the perturbation to every forward inside the block; every hook is removed on exit, also on errors."""
        return residual_edits(model, self.edits())


@dataclass
class AttackConfig:
    """PGD settings; ``eps=None`` scales 6.0 at width 4096 by sqrt(d/4096); ``layers=None`` = default layers."""

    eps: float | None = None
    steps: int = 16
    lr: float = 1e-3
    layers: Any = None

    def resolved(self, model: PersonaModel) -> tuple[float, tuple[AttackLayer, ...]]:
        if self.steps < 1:
            raise AlignmentError(f"PGD needs at least one step, got {self.steps}.")
        if self.lr <= 0:
            raise AlignmentError(f"The PGD learning rate must be positive, got {self.lr}.")
        eps = eps_for_width(model.d_model) if self.eps is None else float(self.eps)
        return eps, resolve_attack_layers(self.layers, model.n_layers)


@dataclass
class AttackResult:
    perturbation: Perturbation
    losses: list[float] = field(default_factory=list)  # adversary loss before each step, then after the last


@contextlib.contextmanager
def frozen_weights(model: PersonaModel) -> Iterator[None]:
    """No weight gradients while the adversary optimises (halves the backward pass); restored on exit."""
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def adversary_loss(model: PersonaModel, batch: Packed, perturbation: Perturbation | None) -> Tensor:
    """``towards(unsafe) + away(safe)`` under the perturbation."""
    safe_logits, unsafe_logits = target_logits(model, batch, perturbation)
    if unsafe_logits is None or batch.second is None:
        raise AlignmentError("The adversary needs (prompt, safe, unsafe) rows; pack them with pack_triples.")
    return towards_loss(unsafe_logits, batch.second) + away_loss(safe_logits, batch.first)


def pgd_attack(model: PersonaModel, batch: Packed, cfg: AttackConfig | None = None) -> AttackResult:
    """Optimise a bounded perturbation that makes the unsafe completions likely (model weights untouched)."""
    cfg = cfg or AttackConfig()
    eps, layers = cfg.resolved(model)
    pert = Perturbation(layers, batch, model.d_model, eps)
    opt = torch.optim.Adam(pert.parameters(), lr=cfg.lr)
    losses: list[float] = []
    with frozen_weights(model):
        for _ in range(cfg.steps):
            loss = adversary_loss(model, batch, pert)
            losses.append(float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pert.project_()
        with torch.no_grad():
            losses.append(float(adversary_loss(model, batch, pert)))
    return AttackResult(pert.frozen(), losses)


# ---- the defence ------------------------------------------------------------------------------------


@dataclass
class DefenceWeights:
    towards: float = 1.0
    away: float = 1.0
    kl: float = 1.0


def defence_loss(
    model: PersonaModel,
    batch: Packed,
    perturbation: Perturbation | None,
    anchors: Packed | None = None,
    anchor_base: Tensor | None = None,
    weights: DefenceWeights | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``towards(safe) + away(unsafe)`` under the (frozen) perturbation, plus ``KL`` on clean anchors."""
    w = weights or DefenceWeights()
    safe_logits, unsafe_logits = target_logits(model, batch, perturbation)
    parts: dict[str, Tensor] = {"towards": towards_loss(safe_logits, batch.first)}
    if w.away and unsafe_logits is not None and batch.second is not None:
        parts["away"] = away_loss(unsafe_logits, batch.second)
    if w.kl and anchors is not None and anchor_base is not None:
        anchor_logits, _ = target_logits(model, anchors)
        parts["kl"] = kl_loss(anchor_logits, anchor_base, anchors.first)
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]


def defence_step(
    model: PersonaModel,
    optimizer: torch.optim.Optimizer,
    batch: Packed,
    perturbation: Perturbation | None,
    anchors: Packed | None = None,
    anchor_base: Tensor | None = None,
    weights: DefenceWeights | None = None,
) -> dict[str, float]:
    """One optimiser step on the trainable weights (the adapter); returns the loss parts before the step."""
    loss, parts = defence_loss(model, batch, perturbation, anchors, anchor_base, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts
