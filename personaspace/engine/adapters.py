"""The defence's trainable part: a LoRA adapter (peft) on a private copy of the model.

The base :class:`PersonaModel` is never modified: the adapter goes on a deep copy, so the base stays
available for comparisons and the adapter can be switched off (``base_view``) for the KL anchor.
Adapters are saved atomically (a reader never sees half an adapter directory).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from personaspace._util.io import atomic_dir
from personaspace.engine import PersonaModel
from personaspace.errors import AlignmentError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
ADAPTER_DIR = "adapter"


def _present_targets(hf_model: Any, targets: Sequence[str]) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, module in hf_model.named_modules() if isinstance(module, torch.nn.Linear)}
    return [t for t in targets if t in names]


class Adapted:
    """A LoRA-wrapped copy of a model: ``.model`` (a PersonaModel that runs with the adapter) and ``.peft``."""

    def __init__(self, model: PersonaModel, peft_model: Any):
        self.model = model
        self.peft = peft_model

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.hf_model.parameters() if p.requires_grad]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable())

    @contextlib.contextmanager
    def base_view(self) -> Iterator[PersonaModel]:
        """The same model with the adapter switched off (for the KL anchor to the base)."""
        with self.peft.disable_adapter():
            yield self.model

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A copy of every LoRA weight (for checking what training changed)."""
        return {k: v.detach().clone() for k, v in self.model.hf_model.state_dict().items() if "lora_" in k}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the adapter (peft format) atomically to ``path``."""
        with atomic_dir(path) as tmp:
            self.peft.save_pretrained(str(tmp))
        return Path(path)


def _copy_model(base: PersonaModel, hf_model: Any, suffix: str) -> PersonaModel:
    # model_hash=None: the copy carries adapter weights, so it is hashed from its own state when asked.
    info = {k: v for k, v in base.loaded.info.items() if k != "local_dir"}  # the adapter changes the weights
    loaded = replace(base.loaded, hf_model=hf_model, name=f"{base.name}+{suffix}", model_hash=None, info=info)
    return PersonaModel(loaded)


def add_lora(
    base: PersonaModel,
    *,
    r: int = 64,
    alpha: float | None = None,
    targets: Sequence[str] = LORA_TARGETS,
    seed: int = 0,
    name: str = "lora",
) -> Adapted:
    """A trainable LoRA adapter (rank ``r``, scale ``alpha / r``; ``alpha`` defaults to ``r``) on a copy of ``base``."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise AlignmentError(f"The LoRA rank must be at least 1, got {r}.")
    hf = copy.deepcopy(base.hf_model)
    present = _present_targets(hf, targets)
    if not present:
        raise AlignmentError(
            f"None of the LoRA target modules {list(targets)} exist in {type(hf).__name__}; pass the names of its linear layers."
        )
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=float(alpha if alpha is not None else r), target_modules=present, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(hf, config)  # injects LoRA layers into ``hf`` in place and freezes the rest
    hf.eval()
    return Adapted(_copy_model(base, hf, name), peft_model)


def load_adapter(base: PersonaModel, path: str | os.PathLike, *, name: str | None = None) -> Adapted:
    """A copy of ``base`` with the adapter saved at ``path`` (by :meth:`Adapted.save`)."""
    from peft import PeftModel

    path = Path(path)
    if (path / ADAPTER_DIR / "adapter_config.json").exists():
        path = path / ADAPTER_DIR  # a run directory written by personaspace align
    if not (path / "adapter_config.json").exists():
        raise AlignmentError(f"No LoRA adapter at '{path}' (expected adapter_config.json there or in {ADAPTER_DIR}/).")
    hf = copy.deepcopy(base.hf_model)
    peft_model = PeftModel.from_pretrained(hf, str(path))
    hf.eval()
    hf.requires_grad_(False)
    return Adapted(_copy_model(base, hf, name or (path.parent.name if path.name == ADAPTER_DIR else path.name)), peft_model)
