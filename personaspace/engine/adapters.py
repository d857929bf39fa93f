"""LoRA adapters (peft) on a private copy of a model: the one adapter stack of fine-tuning and alignment.

- :func:`add_lora` puts a trainable adapter on a deep copy of a :class:`PersonaModel`; the base is never
  modified, so it stays available for comparisons, and the adapter can be switched off
  (:meth:`Adapted.base_view`) for a KL anchor or a before/after measurement.
- :meth:`Adapted.save` writes the adapter (peft format) and ``personaspace-finetune.json`` (the base
  model's shape) atomically: a reader never sees half an adapter directory.
- :func:`load_adapter` puts a saved adapter back on a copy of its base, refusing one saved for a model
  of another shape with a one-line :class:`~personaspace.errors.AdapterError`.
- :meth:`Adapted.merge` folds the adapter into the copy's weights (a plain model, no peft at run time).

LoRA targets the linear layers inside the decoder blocks only, never the (possibly tied) embedding or
LM head: :func:`default_targets` names them; explicit ``targets`` are kept where such layers exist.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from personaspace._util.io import atomic_dir, write_json
from personaspace._util.progress import quiet_loading
from personaspace.engine.backends.base import find_decoder_layers, text_config
from personaspace.engine.model import PersonaModel
from personaspace.errors import AdapterError, InvalidArgumentError

ADAPTER_DIR = "adapter"  # the adapter's folder inside a run directory (fine-tune or alignment)
ADAPTER_META = "personaspace-finetune.json"  # the base model's shape beside the adapter (name kept for old runs)


def default_targets(hf_model: Any) -> list[str]:
    """Names of the linear layers inside the decoder blocks, sorted (never the embedding or the LM head)."""
    names: set[str] = set()
    for block in find_decoder_layers(hf_model):
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
                names.add(name.split(".")[-1])
    if not names:
        raise AdapterError(f"Found no linear layers inside the decoder blocks of {type(hf_model).__name__}.")
    return sorted(names)


def _present_targets(hf_model: Any, targets: Sequence[str] | None) -> list[str]:
    """``targets`` (default: every block linear) that exist in the decoder blocks, sorted; one of them at least."""
    available = default_targets(hf_model)
    if targets is None:
        return available
    if isinstance(targets, str):
        targets = [targets]
    present = sorted({t for t in targets if t in available})
    if not present:
        raise AdapterError(
            f"None of the LoRA target modules {list(targets)} exist in the decoder blocks of {type(hf_model).__name__}; "
            f"its linear layers are {', '.join(available)}."
        )
    return present


def base_identity(model: PersonaModel) -> dict[str, Any]:
    """What an adapter must match: the base model's name, weights hash, architecture and shape."""
    return {
        "base_model": model.name,
        "base_model_hash": model.model_hash,
        "architecture": type(model.hf_model).__name__,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": int(getattr(text_config(model.hf_model), "vocab_size", 0)),
    }


class Adapted:
    """A LoRA-wrapped copy of a model: ``.model`` (a PersonaModel that runs with the adapter), ``.peft``
    (the peft wrapper) and ``.base`` (the untouched model it was copied from)."""

    def __init__(self, model: PersonaModel, peft_model: Any, base: PersonaModel):
        self.model = model
        self.peft = peft_model
        self.base = base

    @property
    def targets(self) -> list[str]:
        """The module names the adapter is on, sorted (peft keeps them as a set)."""
        return sorted(self.peft.peft_config["default"].target_modules)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.hf_model.parameters() if p.requires_grad]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable())

    @contextlib.contextmanager
    def base_view(self) -> Iterator[PersonaModel]:
        """The same model with the adapter switched off (the base model's outputs, no second copy)."""
        with self.peft.disable_adapter():
            yield self.model

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A copy of every LoRA weight (for checking what training changed)."""
        return {k: v.detach().clone() for k, v in self.model.hf_model.state_dict().items() if "lora_" in k}

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write the adapter (peft format) and its base model's identity (+ ``meta``) atomically to ``path``."""
        with atomic_dir(path) as tmp:
            self.peft.save_pretrained(str(tmp))
            write_json(tmp / ADAPTER_META, {"format": "personaspace.adapter", **base_identity(self.base), **meta})
        return Path(path)

    def merge(self) -> PersonaModel:
        """The adapter folded into the copy's weights: a plain PersonaModel (this Adapted is spent afterwards)."""
        hf = self.peft.merge_and_unload()
        hf.eval()
        hf.requires_grad_(False)
        return _copy_model(self.base, hf, self.model.name.removeprefix(f"{self.base.name}+"))


def _copy_model(base: PersonaModel, hf_model: Any, suffix: str) -> PersonaModel:
    # model_hash=None: the copy carries adapter weights, so it is hashed from its own state when asked.
    info = {k: v for k, v in base.loaded.info.items() if k != "local_dir"}  # the adapter changes the weights
    loaded = replace(base.loaded, hf_model=hf_model, name=f"{base.name}+{suffix}", model_hash=None, info=info)
    return PersonaModel(loaded, thinking=getattr(base, "thinking", False))


def add_lora(
    base: PersonaModel,
    *,
    r: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] | None = None,
    seed: int | None = 0,
    name: str = "lora",
) -> Adapted:
    """A trainable LoRA adapter on a copy of ``base``: rank ``r``, scale ``alpha / r`` (``alpha`` defaults to
    ``r``), on ``targets`` (default :func:`default_targets`; names absent from the model are skipped).

    ``seed`` seeds torch's global generator just before the adapter weights are drawn (None: leave it).
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InvalidArgumentError(f"The LoRA rank must be a whole number of at least 1, got {r!r}.")
    hf = copy.deepcopy(base.hf_model)
    present = _present_targets(hf, targets)
    if seed is not None:
        torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=float(alpha if alpha is not None else r),
        lora_dropout=dropout,
        target_modules=present,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_loading():  # peft's calls of deprecated transformers helpers warn (FutureWarning) on every model
        peft_model = get_peft_model(hf, config)  # injects LoRA layers into ``hf`` in place and freezes the rest
    hf.eval()
    return Adapted(_copy_model(base, hf, name), peft_model, base)


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / ADAPTER_META).is_file():
        return {}  # saved by peft alone (or by an older personaspace align): peft's own checks remain
    try:
        return json.loads((path / ADAPTER_META).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path / ADAPTER_META} is damaged: {exc}") from None


def _check_base(meta: dict[str, Any], base: PersonaModel, path: Path) -> None:
    if not meta:
        return
    mine = base_identity(base)
    diffs = [f"{k} {meta[k]} vs {mine[k]}" for k in ("n_layers", "d_model", "vocab_size") if k in meta and meta[k] != mine[k]]
    if diffs:
        raise AdapterError(
            f"The adapter in {path} was trained on {meta.get('base_model')!r}, which does not match {base.name!r}: "
            + "; ".join(diffs)
            + ". Load it on the model it was trained on."
        )


def load_adapter(path: str | os.PathLike, base: PersonaModel | str | None = None, *, name: str | None = None) -> Adapted:
    """The adapter saved at ``path`` on a copy of ``base`` (a PersonaModel or model name; default: the base
    model the adapter records).

    ``path`` is an adapter directory or a run directory holding ``adapter/`` (``personaspace finetune``
    and ``personaspace align`` both write one). The copy is named ``<base>+<run or adapter folder>``
    (or ``<base>+name``). An adapter saved for a model of another shape raises
    :class:`~personaspace.errors.AdapterError` before any weights are touched. ``.merge()`` the result
    for a plain model, ``.model`` runs it with the adapter.
    """
    if isinstance(path, PersonaModel):
        raise InvalidArgumentError("load_adapter(path, base): the adapter's path comes first, then the base model.")
    path = Path(path).expanduser()
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        path = path / ADAPTER_DIR  # a run directory
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} is not a LoRA adapter directory (no adapter_config.json there or in {ADAPTER_DIR}/).")
    meta = _read_meta(path)
    if base is None:
        try:
            recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{path / 'adapter_config.json'} is damaged: {exc}") from None
        base = meta.get("base_model") or recorded
        if not base:
            raise AdapterError(f"{path} does not say which base model it belongs to; pass base=...")
    if not isinstance(base, PersonaModel):
        base = PersonaModel.load(base)
    _check_base(meta, base, path)
    from peft import PeftModel

    hf = copy.deepcopy(base.hf_model)
    try:
        with quiet_loading():
            peft_model = PeftModel.from_pretrained(hf, str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdapterError(
            f"The adapter in {path} does not fit {base.name!r} ({type(base.hf_model).__name__}, "
            f"{base.n_layers} layers, width {base.d_model}): {first}"
        ) from None
    hf.eval()
    hf.requires_grad_(False)
    suffix = name or (path.parent.name if path.name == ADAPTER_DIR else path.name)
    return Adapted(_copy_model(base, hf, suffix), peft_model, base)
