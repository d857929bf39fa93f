"""The one teacher-forced forward: fixed token rows in; layer read-outs, logits, log-probs, losses out.

Everything outside the engine that runs a model over known tokens (monitoring projections, residual
norms, the KL of steering, fine-tuning losses, the LAT adversary and defence, a local judge's
next-token distribution) comes through here, so that nothing else registers a hook, calls a backend or
reads a model's submodules. Two ways through the model, one per need:

- **inference** (:func:`run`, :func:`next_token_logprobs`): the model's backend (fused, hooks, nnsight,
  TransformerLens) with the engine's layer callbacks -- interventions and their scopes exactly as in
  generation and capture, read-outs of block outputs, early exit after the deepest layer read when no
  logits are needed. Logits are the causal LM's own (Hugging Face applies final-logit softcapping
  inside the model's forward where the config asks for it).
- **training** (:func:`hidden_states`, :func:`output_logits`, :func:`token_loss`): the Hugging Face
  decoder modules with gradients flowing, interventions and additive :data:`Edits` (the LAT adversary)
  hooked in, and the output layer applied at the chosen positions only -- the one place where this
  package applies a model's logit scaling (Granite, Cohere) and ``final_logit_softcapping`` itself.

:func:`next_token_logits` and :func:`select_cache_rows` are the KV-cached single step a tree search
(the local judge) grows branches with.

Layer ``L`` is the output of decoder block ``L``; :data:`EMBED` names the embedding output.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from personaspace._util.shapes import Float, Int  # checked in the tests (jaxtyping)
from personaspace.engine.backends.base import cache_kwarg, output_cache, text_config
from personaspace.engine.backends.hooks import HFHookBackend
from personaspace.engine.callbacks import ContextSlot, LayerFn, layer_callbacks
from personaspace.engine.context import StepContext, position_ids
from personaspace.engine.generation import pad_batch
from personaspace.engine.interventions import Intervention, by_layer
from personaspace.engine.model import PersonaModel

__all__ = [
    "EMBED",
    "IGNORE_INDEX",
    "Edits",
    "ReadFn",
    "Readout",
    "TokenBatch",
    "hidden_states",
    "next_token_logits",
    "next_token_logprobs",
    "output_logits",
    "residual_edits",
    "run",
    "select_cache_rows",
    "token_loss",
]

EMBED = "embed"  # edit site: the embedding output (the residual stream before block 0)
IGNORE_INDEX = -100  # label of a position without a loss (the Hugging Face convention)

# What a read-out does with one block output [batch, seq, d_model]: reduce it to what the caller keeps.
ReadFn = Callable[[Tensor], Tensor]
# Additive edits of the residual stream for one forward: site (block index or EMBED) -> new = fn(hidden).
Edits = Mapping[int | str, Callable[[Tensor], Tensor]]


@dataclass
class TokenBatch:
    """Token rows for one forward: ids, attention and positions, and where each row's prompt ends.

    ``attention_mask`` is a ``[batch, seq]`` padding mask, or (for rows that pack several
    continuations after one prompt, as LAT does) a ready ``[batch, 1, seq, seq]`` additive mask.
    ``position_ids`` None lets the model count positions itself; ``prompt_len`` (needed by
    interventions scoped to prompt or response) is the number of prompt tokens per row.
    """

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Tensor
    position_ids: Int[Tensor, "batch seq"] | None = None
    prompt_len: Int[Tensor, " batch"] | None = None

    @classmethod
    def pad(
        cls,
        model: PersonaModel,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]] | None = None,
        *,
        side: str = "right",
    ) -> TokenBatch:
        """Rows ``prompt + continuation`` padded after (``right``) or before (``left``) the tokens."""
        conts = continuations if continuations is not None else [[] for _ in prompts]
        if len(conts) != len(prompts):
            raise ValueError(f"Got {len(prompts)} prompts but {len(conts)} continuations.")
        seqs = [list(p) + list(c) for p, c in zip(prompts, conts)]
        ids, mask = pad_batch(seqs, model.pad_id, model.device, side=side)
        plen = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=ids.device)
        return cls(ids, mask, position_ids(mask), plen)

    @property
    def lengths(self) -> list[int]:
        """Real tokens per row (2-D masks only)."""
        return [int(n) for n in self.attention_mask.sum(-1).tolist()]

    def context(self) -> StepContext:
        """The positions interventions and scopes see (as in capture: rows numbered from 0)."""
        if self.attention_mask.ndim != 2:
            raise ValueError("Interventions need a [batch, seq] padding mask, not a packed 4-D attention mask.")
        rows = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)
        plen = self.prompt_len if self.prompt_len is not None else torch.zeros_like(rows)
        return StepContext.for_padded(self.attention_mask, plen, rows)


@dataclass
class Readout:
    """What :func:`run` returns: each read layer's reduced value, and the logits when asked for."""

    layers: dict[int, Tensor]
    logits: Float[Tensor, "batch seq vocab"] | None = None


def _scoped(
    batch: TokenBatch, interventions: Sequence[Intervention], n_layers: int, d_model: int
) -> dict[int, LayerFn]:
    """The engine's layer callbacks for ``interventions`` on this batch (empty when there are none)."""
    table = by_layer(list(interventions), n_layers, d_model)
    if not table:
        return {}
    if batch.prompt_len is None and any(iv.scope != "all" for ivs in table.values() for iv in ivs):
        raise ValueError("Interventions scoped to prompt or response need the batch's prompt lengths.")
    slot = ContextSlot()
    slot.ctx = batch.context()
    return layer_callbacks(slot, table, None)


@torch.inference_mode()
def run(
    model: PersonaModel,
    batch: TokenBatch,
    *,
    read: Mapping[int, ReadFn] | None = None,
    interventions: Sequence[Intervention] = (),
    logits: bool = False,
) -> Readout:
    """One inference forward on the model's backend: interventions applied, block outputs read.

    ``read[L](hidden)`` gets block ``L``'s output ``[batch, seq, d_model]`` after that layer's
    interventions and returns what to keep (a projection, a norm, ...; padding positions hold
    arbitrary values). Without ``logits`` the model stops after the deepest read layer.
    """
    read = dict(read or {})
    if not read and not logits:
        raise ValueError("Nothing to compute: give layers to read or ask for logits.")
    fns = _scoped(batch, interventions, model.n_layers, model.d_model)
    found: dict[int, Tensor] = {}
    for layer, fn in read.items():
        fns[layer] = _read_after(layer, fn, fns.get(layer), found)
    pos = batch.position_ids if batch.position_ids is not None else position_ids(batch.attention_mask)
    out = model.backend.forward(
        batch.input_ids,
        batch.attention_mask,
        pos,
        layer_fns=fns,
        stop_after=None if logits else max(read),
        logits_to_keep=0 if logits else 1,
    )
    return Readout({layer: found[layer] for layer in read}, out.logits if logits else None)


def _read_after(layer: int, read: ReadFn, before: LayerFn | None, found: dict[int, Tensor]) -> LayerFn:
    def fn(lay: int, hidden: Tensor) -> Tensor | None:
        new = before(lay, hidden) if before is not None else None
        hidden = hidden if new is None else new
        found[layer] = read(hidden)
        return new

    return fn


@torch.inference_mode()
def next_token_logprobs(
    model: PersonaModel,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
) -> list[Float[Tensor, "positions vocab"]]:
    """Log-probabilities (float32, CPU) of the next token at the last prompt position and every continuation position.

    One teacher-forced forward per batch (right padding) with the interventions applied, scopes
    meaning what they mean in generation. Row ``i`` has ``len(continuations[i]) + 1`` positions.
    """
    out: list[Tensor] = []
    for start in range(0, len(prompts), batch_size):
        p_batch = [list(p) for p in prompts[start : start + batch_size]]
        c_batch = [list(c) for c in continuations[start : start + batch_size]]
        logits = run(model, TokenBatch.pad(model, p_batch, c_batch), interventions=interventions, logits=True).logits
        assert logits is not None  # asked for
        logits = logits.float()
        for i, (p, c) in enumerate(zip(p_batch, c_batch)):
            lo, hi = len(p) - 1, len(p) + len(c)  # positions predicting continuation tokens and the one after
            out.append(torch.log_softmax(logits[i, lo:hi], dim=-1).cpu())
    return out


# ---- the training path: Hugging Face modules, gradients --------------------------------------------


def _hf(model: PersonaModel | Any) -> Any:
    return model.hf_model if isinstance(model, PersonaModel) else model


def _decoder(hf: Any) -> Any:
    """The decoder stack without the output layer (what ``last_hidden_state`` comes from)."""
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    return decoder if decoder is not None else getattr(hf, hf.base_model_prefix)


@contextlib.contextmanager
def residual_edits(model: PersonaModel | Any, edits: Edits) -> Iterator[None]:
    """Replace the embedding output (:data:`EMBED`) or block outputs by ``fn(hidden)`` in every forward
    of the model inside the ``with`` block (gradients flow through ``fn``); hooks removed on exit."""
    hf = _hf(model)
    embed = edits.get(EMBED)
    fns = {int(site): _edit(fn) for site, fn in edits.items() if site != EMBED}
    handle = None if embed is None else hf.get_input_embeddings().register_forward_hook(lambda _m, _a, out: embed(out))
    try:
        with HFHookBackend(hf).hooks(fns, stop_after=None):
            yield
    finally:
        if handle is not None:
            handle.remove()


def _edit(fn: Callable[[Tensor], Tensor]) -> LayerFn:
    return lambda _layer, hidden: fn(hidden)


def hidden_states(
    model: PersonaModel | Any,
    batch: TokenBatch,
    *,
    interventions: Sequence[Intervention] = (),
    edits: Edits | None = None,
) -> Float[Tensor, "batch seq d_model"]:
    """Final hidden states (after the last norm, before the output layer) of the Hugging Face decoder.

    ``model`` is a PersonaModel or a Hugging Face causal LM (a LoRA-injected one too). Gradients flow
    when enabled. ``edits`` replace the embedding output (:data:`EMBED`) or a block output by
    ``fn(hidden)`` (e.g. an added perturbation); ``interventions`` then act at block outputs as in
    generation. Every hook is removed on return, also on errors.
    """
    hf = _hf(model)
    hooks = HFHookBackend(hf)
    fns = _scoped(batch, interventions, hooks.n_layers, hooks.d_model)
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    # Edits hook in first: at a block with both, the interventions see the edited output (hooks run in order).
    with residual_edits(hf, edits or {}), hooks.hooks(fns, stop_after=None):
        out = _decoder(hf)(**kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def output_logits(model: PersonaModel | Any, hidden: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows vocab"]:
    """The output layer on chosen final hidden states: float32 logits, scaled and softcapped where the model is.

    Run it on the positions that are scored only (the head is the largest matrix of a small model).
    What causal LMs do to the head's output is applied here and nowhere else in the package, in the
    models' order: ``logits_scaling`` (Granite: divided by), ``logit_scale`` (Cohere: multiplied by),
    then ``final_logit_softcapping`` (Gemma 2/3).
    """
    hf = _hf(model)
    logits = hf.get_output_embeddings()(hidden).float()
    config = text_config(hf)
    divide = getattr(config, "logits_scaling", None)
    if divide and divide != 1:
        logits = logits / divide
    multiply = getattr(config, "logit_scale", None)
    if isinstance(multiply, (int, float)) and multiply != 1:
        logits = logits * multiply
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def token_loss(
    model: PersonaModel | Any,
    batch: TokenBatch,
    labels: Int[Tensor, "batch seq"],
    *,
    interventions: Sequence[Intervention] = (),
) -> tuple[Float[Tensor, ""], int]:
    """Mean next-token cross-entropy over labelled positions (``labels != IGNORE_INDEX``), and their count.

    ``labels[b, t]`` is the token expected at position ``t`` (predicted from ``t - 1``); the output
    layer runs on those positions only. Gradients flow when enabled.
    """
    hidden = hidden_states(model, batch, interventions=interventions)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = output_logits(model, hidden[:, :-1][keep])
    n = int(keep.sum())
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / max(n, 1), n


# ---- one cached step (tree search over continuations) ---------------------------------------------


def next_token_logits(
    model: PersonaModel | Any,
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch total"],
    positions: Int[Tensor, "batch seq"],
    cache: Any = None,
) -> tuple[Float[Tensor, "batch vocab"], Any]:
    """Next-token logits after the last position, and the KV cache extended by ``input_ids``.

    ``attention_mask`` covers the cached tokens and the new ones. Used to grow many continuations of
    one prompt from its cache (see :func:`select_cache_rows`).
    """
    hf = _hf(model)
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True
    )
    if cache is not None:
        kwargs[cache_kwarg(hf)] = cache
    try:
        out = hf(**kwargs, logits_to_keep=1)
    except TypeError:  # architectures without logits_to_keep
        out = hf(**kwargs)
    return out.logits[:, -1, :], output_cache(out, cache)


def select_cache_rows(cache: Any, rows: Int[Tensor, " rows"]) -> Any:
    """A cache holding ``rows`` of ``cache`` (repeats allowed), leaving ``cache`` itself intact.

    Shallow copies of the cache and its per-layer holders, then ``reorder_cache`` (an index_select)
    swaps in new tensors on the copies only: no full deep copy of the keys.
    """
    selected = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers >= 4.56
        selected.layers = [copy.copy(layer) for layer in cache.layers]
    else:  # older DynamicCache keeps parallel lists of tensors
        selected.key_cache = list(cache.key_cache)
        selected.value_cache = list(cache.value_cache)
    selected.reorder_cache(rows)
    return selected
