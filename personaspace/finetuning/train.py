"""LoRA fine-tuning on chat data, with optional preventative steering or CAFT ablation during training.

``finetune(model, data, out=...)`` trains a LoRA adapter (peft) on the assistant turns of chat
conversations (the loss ignores system and user tokens), then writes, each atomically:

- ``out/adapter/``  -- the peft adapter (``adapter_config.json`` + safetensors) and ``personaspace-finetune.json``
  with the base model's shape, so loading it on another model fails with a clear message;
- ``out/merged/``   -- a plain Hugging Face directory (safetensors + tokenizer) with the adapter merged in,
  which ``PersonaModel.load(path)`` and ``load_pretrained(path)`` accept;
- ``out/finetune.json`` -- config, data hash, per-step losses, held-out-free before/after loss, timings.

Training interventions (the engine's ``Add`` / ``Ablate`` / ``Cap``) act on the decoder block outputs
in the training forward passes only (the engine's teacher-forced loss, :func:`personaspace.engine.forward.token_loss`):

- preventative steering (Chen et al. 2025): ``Add(vector, coef=..., layers=[L])`` at every position,
  so the optimiser has no need to move the model along ``vector`` itself;
- CAFT-style ablation: ``Ablate(vector, layers=[L])`` projects the direction out during training.

The saved model never contains the hooks: it is evaluated as it would be deployed.
The adapter comes from :mod:`personaspace.engine.adapters` (the same stack alignment uses): LoRA on
the linear layers inside the decoder blocks only, never the (possibly tied) embedding or LM head.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from personaspace._util.io import atomic_dir, write_json
from personaspace._util.progress import Progress, callback, progress_scope
from personaspace.data.chat import as_rows, dataset_hash
from personaspace.engine.adapters import ADAPTER_DIR, ADAPTER_META, add_lora, base_identity, load_adapter
from personaspace.engine.forward import IGNORE_INDEX, TokenBatch, token_loss
from personaspace.engine.interventions import by_layer
from personaspace.errors import AdapterError, DatasetError, InvalidArgumentError

IGNORE = IGNORE_INDEX


@dataclass
class FinetuneConfig:
    """LoRA and optimiser settings (saved in ``finetune.json``).

    Defaults are sized for the embedded 135M model on a CPU (a few hundred rows, one epoch, short
    sequences, a few minutes). The published EM fine-tunes use r=32, alpha=64, lr 1e-5 on ~6,000
    rows; with ~100x fewer steps a higher learning rate is needed to move the model at all.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: Sequence[str] | None = None  # None: every linear layer inside the decoder blocks
    lr: float = 2e-4
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # when set, train exactly this many optimiser steps (epochs is ignored)
    seed: int = 0
    eval_rows: int = 16  # rows whose loss is measured before and after training (no hooks)
    save_every: int | None = None  # adapter checkpoint every N optimiser steps

    def validate(self) -> None:
        """Every setting's type and range (InvalidArgumentError, one line, naming the setting)."""
        from personaspace._util import checks
        checks.positive_int("rank", self.rank)
        checks.finite("alpha", self.alpha, lo=0, lo_open=True)
        checks.finite("dropout", self.dropout, lo=0, hi=1, hi_open=True)
        checks.finite("lr", self.lr, lo=0, lo_open=True)
        checks.finite("epochs", self.epochs, lo=0, lo_open=True)
        checks.positive_int("batch_size", self.batch_size)
        checks.positive_int("grad_accum", self.grad_accum)
        checks.integer("max_length", self.max_length, lo=8)
        checks.finite("warmup_ratio", self.warmup_ratio, lo=0, hi=1)
        checks.finite("weight_decay", self.weight_decay, lo=0)
        checks.finite("max_grad_norm", self.max_grad_norm, lo=0, lo_open=True)
        if self.max_steps is not None:
            checks.positive_int("max_steps", self.max_steps)
        checks.integer("seed", self.seed)
        checks.non_negative_int("eval_rows", self.eval_rows)
        if self.save_every is not None:
            checks.positive_int("save_every", self.save_every)


@dataclass
class FinetuneResult:
    """The trained (merged) model and where everything was written."""

    model: Any  # PersonaModel with the adapter merged in (no hooks)
    out: Path | None
    summary: dict
    losses: list[float] = field(default_factory=list)

    @property
    def merged_dir(self) -> Path | None:
        return self.out / "merged" if self.out else None

    @property
    def adapter_dir(self) -> Path | None:
        return self.out / "adapter" if self.out else None


# ---------------------------------------------------------------------------------------------
# encoding: chat template segments, loss on assistant tokens only


def _render(tokenizer: Any, formatter: Any, messages: list[dict], generation_prompt: bool) -> str:
    # The engine's rendering (system folding, thinking switch): the prompt part is what generation feeds the model.
    return formatter.render(messages, add_generation_prompt=generation_prompt)


def _plain_segments(formatter: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """Segments for tokenizers without a chat template, in the engine's System/User/Assistant layout."""
    from personaspace.engine import Chat

    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [m for m in messages if m["role"] != "system"]
    segments: list[tuple[str, bool]] = []
    history: list[tuple[str, str]] = []
    user = None
    prev = ""
    for m in turns:
        if m["role"] == "user":
            user = m["content"]
            continue
        prompt = formatter.text(Chat(user=user or "", system=system, history=tuple(history)))
        segments.append((prompt[len(prev):] if prompt.startswith(prev) else prompt, False))
        segments.append((m["content"], True))
        history.append((user or "", m["content"]))
        prev = prompt + m["content"]
    return segments


def _template_segments(tokenizer: Any, formatter: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trainable) pieces: context and assistant turns.

    The text before each assistant turn is the template rendered up to that turn with the
    generation prompt -- exactly what the engine feeds the model at inference -- and the turn is
    what the template adds after it (content plus the end-of-turn marker).
    """
    segments: list[tuple[str, bool]] = []
    prev = ""
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, formatter, messages[:k], True)
        full = _render(tokenizer, formatter, messages[: k + 1], False)
        if not prompt.startswith(prev) or not full.startswith(prompt):
            # The template rewrites earlier turns (some hide reasoning): learn this turn after a fresh context.
            segments = [(prompt, False)]
            answer = full[len(prompt):] if full.startswith(prompt) else m["content"] + (tokenizer.eos_token or "")
        else:
            segments.append((prompt[len(prev):], False))
            answer = full[len(prompt):]
        segments.append((answer, True))
        prev = full if full.startswith(prompt) else prompt + answer
    return segments


def encode_conversation(
    tokenizer: Any, formatter: Any, messages: list[dict], max_length: int
) -> tuple[list[int], list[int]] | None:
    """Token ids and labels of one conversation; labels are ``-100`` except on assistant tokens.

    Each segment is tokenised on its own, so the prompt part is token-for-token what
    ``PersonaModel.prompt_ids`` produces. Truncated to ``max_length``; None when no assistant
    token survives truncation.
    """
    if formatter.has_template:
        segments = _template_segments(tokenizer, formatter, messages)
    else:
        segments = _plain_segments(formatter, messages)
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, trainable) in enumerate(segments):
        add_special = (not formatter.has_template) and i == 0
        seg = list(tokenizer(text, add_special_tokens=add_special)["input_ids"]) if text else []
        if trainable and not formatter.has_template and tokenizer.eos_token_id is not None:
            seg.append(int(tokenizer.eos_token_id))
        ids.extend(seg)
        labels.extend(seg if trainable else [IGNORE] * len(seg))
    ids, labels = ids[:max_length], labels[:max_length]
    if not any(lab != IGNORE for lab in labels[1:]):
        return None
    return ids, labels


def encode_rows(model: Any, rows: Sequence[dict], max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encode every row; return the encoded rows and how many were dropped (nothing left to learn)."""
    encoded, dropped = [], 0
    for row in rows:
        enc = encode_conversation(model.tokenizer, model.formatter, row["messages"], max_length)
        if enc is None:
            dropped += 1
        else:
            encoded.append(enc)
    return encoded, dropped


def _collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


# ---------------------------------------------------------------------------------------------
# losses


@torch.no_grad()
def mean_loss(hf_model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean assistant-token loss of ``encoded`` rows (no hooks, no gradients)."""
    device = next(hf_model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        ids, mask, labels = _collate(encoded[start : start + batch_size], pad_id, device)
        loss, n = token_loss(hf_model, TokenBatch(ids, mask), labels)
        total += float(loss.detach()) * n
        count += n
    return total / max(count, 1)


def _check_training_interventions(model: Any, interventions: Sequence[Any]) -> None:
    """Training interventions must fit the model and act at every position (no prompt/response scopes)."""
    for ivs in by_layer(interventions, model.n_layers, model.d_model).values():
        for iv in ivs:
            if iv.scope != "all":
                raise ValueError(f"Training interventions act on every position; got scope {iv.scope!r} for '{iv.label}'.")


# ---------------------------------------------------------------------------------------------
# training


def finetune(
    model: Any,
    data: str | os.PathLike | Sequence[Any],
    *,
    config: FinetuneConfig | None = None,
    out: str | os.PathLike | None = None,
    interventions: Sequence[Any] = (),
    save_merged: bool = True,
    progress: bool | Progress | Callable[[int, int, float], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """LoRA fine-tune ``model`` (a PersonaModel or model name; never modified) on chat ``data``.

    ``data`` is a JSONL path or a list of ``{"messages": [...]}`` rows. ``interventions`` are
    engine interventions applied during training only (preventative steering: ``Add``; CAFT:
    ``Ablate``). Settings come from ``config`` and keyword overrides (see :class:`FinetuneConfig`).
    Returns the merged model; with ``out`` the adapter, merged model and summary are saved.
    ``progress``: a bar over the optimiser steps with the loss (see :mod:`personaspace._util.progress`;
    True/False forces it), or a function called with ``(step, steps, loss)``.
    """
    from personaspace.engine import PersonaModel

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(FinetuneConfig)})
    if unknown:
        raise InvalidArgumentError(
            f"unknown fine-tuning setting(s) {', '.join(unknown)}; known: {', '.join(f.name for f in dataclasses.fields(FinetuneConfig))}"
        )
    cfg = dataclasses.replace(config or FinetuneConfig(), **overrides)
    cfg.validate()
    rows = as_rows(data)  # the whole dataset parsed before the model loads
    if out is not None:
        from personaspace._util import checks
        checks.writable_dir(out)
    if not isinstance(model, PersonaModel):
        model = PersonaModel.load(model)
    encoded, dropped = encode_rows(model, rows, cfg.max_length)
    if not encoded:
        raise DatasetError(f"No row has an assistant token within max_length={cfg.max_length}; raise max_length.")
    torch.manual_seed(cfg.seed)
    # The adapter goes on a copy: the caller's model stays untouched.
    adapted = add_lora(model, r=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.target_modules or None, seed=cfg.seed)
    hf = adapted.model.hf_model
    _check_training_interventions(model, interventions)
    pad_id = model.pad_id
    eval_set = encoded[: cfg.eval_rows]
    started = time.perf_counter()
    with adapted.base_view():
        loss_before = mean_loss(hf, eval_set, pad_id, cfg.batch_size) if eval_set else float("nan")
    peft_model = adapted.peft
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    micro_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total_steps = max(1, math.ceil(micro_per_epoch * cfg.epochs / cfg.grad_accum))
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    warmup = int(round(cfg.warmup_ratio * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(hf.parameters()).device
    losses: list[float] = []
    tokens_seen = 0
    out_path = Path(out).expanduser() if out is not None else None

    def micro_batches():
        while True:
            order = torch.randperm(len(encoded), generator=gen).tolist()
            for start in range(0, len(order), cfg.batch_size):
                yield [encoded[i] for i in order[start : start + cfg.batch_size]]

    batches = micro_batches()
    report = callback(progress)
    with progress_scope(progress) as bars:
        bars.update("steps", 0, total_steps)
        for step in range(total_steps):
            optim.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                ids, mask, labels = _collate(next(batches), pad_id, device)
                loss, n = token_loss(hf, TokenBatch(ids, mask), labels, interventions=interventions)  # training only
                (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
                tokens_seen += n
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            sched.step()
            losses.append(step_loss)
            if report is not None:
                report(step + 1, total_steps, step_loss)
            bars.update("steps", step + 1, total_steps, note=f"loss {step_loss:.4f}")
            if out_path is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
                adapted.save(out_path / "checkpoints" / f"step-{step + 1:06d}", step=step + 1, config=dataclasses.asdict(cfg))
    train_s = time.perf_counter() - started
    peft_model.eval()
    summary: dict[str, Any] = {
        "format": "personaspace.finetune",
        **base_identity(model),
        "config": {**dataclasses.asdict(cfg), "target_modules": adapted.targets},  # sorted: peft keeps a set
        "data": {
            "source": str(data) if isinstance(data, (str, os.PathLike)) else "in-memory rows",
            "sha": dataset_hash(rows),
            "n_rows": len(rows),
            "n_used": len(encoded),
            "n_dropped_too_long": dropped,
        },
        "interventions_during_training": [iv.to_dict() for iv in interventions],
        "steps": total_steps,
        "tokens_trained": tokens_seen,
        "trainable_parameters": n_trainable,
        "losses": losses,
        "eval_rows": len(eval_set),
        "loss_before": loss_before,
        "seconds": {"train": round(train_s, 1)},
    }
    if out_path is not None:
        adapted.save(out_path / ADAPTER_DIR, step=total_steps, config=dataclasses.asdict(cfg))
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    summary["loss_after"] = mean_loss(merged, eval_set, pad_id, cfg.batch_size) if eval_set else float("nan")
    name = f"{model.name}+lora"
    if out_path is not None:
        if save_merged:
            with atomic_dir(out_path / "merged") as tmp:
                merged.save_pretrained(tmp, safe_serialization=True)
                model.tokenizer.save_pretrained(tmp)
                write_json(tmp / ADAPTER_META, {k: v for k, v in summary.items() if k != "losses"})
            name = str(out_path / "merged")
        write_json(out_path / "finetune.json", summary)
    result_model = PersonaModel.from_hf(merged, model.tokenizer, name=name)
    return FinetuneResult(result_model, out_path, summary, losses)


# ---------------------------------------------------------------------------------------------
# loading


def load_finetuned(path: str | os.PathLike, base: Any = None) -> Any:
    """Load a fine-tune output as a plain PersonaModel: a run directory (uses ``merged/``, else ``adapter/``
    merged onto ``base``, default the recorded base model), a merged dir or an adapter dir."""
    from personaspace.engine import PersonaModel

    p = Path(path).expanduser()
    if (p / "merged" / "config.json").is_file():
        return PersonaModel.load(str(p / "merged"))
    if (p / "config.json").is_file():
        return PersonaModel.load(str(p))
    if (p / ADAPTER_DIR / "adapter_config.json").is_file() or (p / "adapter_config.json").is_file():
        return load_adapter(p, base).merge()
    raise AdapterError(f"No fine-tuned model at {p}: expected a merged model (config.json) or an adapter (adapter_config.json).")
