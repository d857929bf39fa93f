"""Backends run one forward pass with per-layer callbacks; everything above them is backend-agnostic.

The protocol is deliberately small: a forward over ``input_ids`` that calls ``layer_fn(layer, hidden)``
on the output of each requested decoder block (the callback may return a replacement), stops early
after ``stop_after`` when no logits are needed, and threads a KV cache through. Generation, capture and
interventions are written once on top of it. The hooks backend uses plain PyTorch forward hooks on a
Hugging Face model; the fused backend (the default for Llama-family models) runs cache-free forwards
through a fused reimplementation and everything else through hooks; nnsight and TransformerLens
backends implement the same protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from personaspace.engine.callbacks import LayerFn
from personaspace.errors import BackendError

# Where decoder blocks live, per architecture family (first match wins).
DECODER_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo
    "model.language_model.layers",  # multimodal wrappers (Gemma 3 4B+)
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
)


@dataclass
class ForwardOutput:
    logits: Tensor | None  # [batch, kept positions, vocab], or None after an early exit
    cache: Any
    # [batch, d_model]: final-normed hidden state of each row's last token, when the backend leaves the
    # LM head to the caller (slot-cache generation steps; logits is None then)
    hidden: Tensor | None = None


@runtime_checkable
class Backend(Protocol):
    n_layers: int
    d_model: int

    def new_cache(self) -> Any: ...

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        *,
        layer_fns: dict[int, LayerFn],
        stop_after: int | None = None,
        cache: Any = None,
        logits_to_keep: int = 1,
    ) -> ForwardOutput: ...


class StopForward(Exception):
    """Raised inside the hook of the deepest needed layer to skip the rest of the model."""


def _get_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@functools.cache
def _outputs_name_cache() -> bool:
    """Whether this transformers names the KV cache ``cache`` (5.24 on) rather than ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}


def cache_kwarg(model: Any) -> str:
    """The keyword under which ``model.forward`` takes its KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still works until 5.40 but
    warns on every call); older releases and remote-code models keep ``past_key_values``. The model's own
    signature decides; wrappers that hide it (PEFT, ``**kwargs``) get the installed transformers' name.
    """
    forward = getattr(model, "forward", None)
    key = getattr(forward, "__func__", forward)  # the function behind a bound method: one look per class
    name = _CACHE_KWARG.get(key)
    if name is None:
        try:
            params = inspect.signature(forward).parameters
        except (TypeError, ValueError):
            params = {}
        if "cache" in params:
            name = "cache"
        elif "past_key_values" in params:
            name = "past_key_values"
        else:
            name = "cache" if _outputs_name_cache() else "past_key_values"
        _CACHE_KWARG[key] = name
    return name


_CACHE_KWARG: dict[Any, str] = {}


def output_cache(output: Any, default: Any = None) -> Any:
    """The KV cache in a Hugging Face model output, under either name, without the deprecation warning."""
    keys = output.keys() if hasattr(output, "keys") else ()
    for key in ("cache", "past_key_values"):
        if key in keys:
            return output[key]
    return default


def text_config(hf_model: Any) -> Any:
    """The language model's config (a multimodal config's text part; the config itself otherwise)."""
    cfg = hf_model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_decoder_layers(hf_model: Any) -> torch.nn.ModuleList:
    for path in DECODER_LAYER_PATHS:
        try:
            layers = _get_path(hf_model, path)
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return layers
    raise BackendError(
        f"Cannot find the decoder blocks of {type(hf_model).__name__}; looked at {', '.join(DECODER_LAYER_PATHS)}."
    )
