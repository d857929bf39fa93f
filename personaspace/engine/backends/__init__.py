"""Backends of the engine: hooks (any Hugging Face causal LM), fused Llama, nnsight (local or NDIF) and
TransformerLens 4.

Each implements the backend protocol (:mod:`personaspace.engine.backends.base`), so generation, capture
and interventions behave the same on all of them -- parity tests hold them to the hooks backend. See
docs/backends.md for when to use which. nnsight and TransformerLens are imported only when asked for, so
personaspace works without them. To run a loaded model through another backend, or to wrap a model that
nnsight or TransformerLens already holds, see :func:`personaspace.engine.model.with_backend`,
:func:`~personaspace.engine.model.from_nnsight` and :func:`~personaspace.engine.model.from_bridge`.
"""

from __future__ import annotations

from typing import Any

from personaspace.engine.backends.base import Backend
from personaspace.engine.backends.hooks import HFHookBackend
from personaspace.engine.placement import requested_reason
from personaspace.errors import BackendError

BACKENDS = ("auto", "fused", "hooks", "nnsight", "transformer_lens")


def default_backend(hf_model: Any) -> Backend:
    """The fastest exact backend for ``hf_model``: fused for Llama-family models, hooks otherwise."""
    from personaspace.engine.backends.fused_llama import (
        FusedLlamaBackend,
        unsupported_reason,
    )

    return HFHookBackend(hf_model) if unsupported_reason(hf_model) else FusedLlamaBackend(hf_model)


def check_backend_options(name: str, options: dict[str, Any], *, remote: bool | str = False) -> None:
    """Refuse, before any weight loads, a backend name that does not exist, or one that cannot run what
    the ``from_pretrained`` ``options`` ask for (a ``device_map`` with disk or several devices, a
    quantization config)."""
    if name not in BACKENDS and name != "tl":
        raise BackendError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")
    if remote and name != "nnsight":
        raise BackendError(f"Remote execution needs the nnsight backend, not {name!r}.")
    reason = requested_reason(options)
    if reason and name == "fused":
        from personaspace.engine.backends.fused_llama import weights_refusal

        raise weights_refusal(reason)


def make_backend(name: str, hf_model: Any, tokenizer: Any, *, remote: bool | str = False) -> Any:
    """A backend by name over a Hugging Face model already in memory."""
    if remote and name != "nnsight":
        raise BackendError(f"Remote execution needs the nnsight backend, not {name!r}.")
    if name == "auto":
        return default_backend(hf_model)
    if name == "hooks":
        return HFHookBackend(hf_model)
    if name == "fused":
        from personaspace.engine.backends.fused_llama import FusedLlamaBackend

        return FusedLlamaBackend(hf_model)
    if name == "nnsight":
        from personaspace.engine.backends.nnsight_backend import NNsightBackend

        return NNsightBackend.from_hf(hf_model, tokenizer, remote=remote)
    if name in ("transformer_lens", "tl"):
        from personaspace.engine.backends.transformer_lens_backend import (
            TransformerLensBackend,
        )

        return TransformerLensBackend.from_hf(hf_model, tokenizer)
    raise BackendError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")


def __getattr__(name: str) -> Any:
    if name == "NNsightBackend":
        from personaspace.engine.backends.nnsight_backend import NNsightBackend

        return NNsightBackend
    if name == "TransformerLensBackend":
        from personaspace.engine.backends.transformer_lens_backend import (
            TransformerLensBackend,
        )

        return TransformerLensBackend
    if name == "FusedLlamaBackend":
        from personaspace.engine.backends.fused_llama import FusedLlamaBackend

        return FusedLlamaBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS", "Backend", "FusedLlamaBackend", "HFHookBackend", "NNsightBackend", "TransformerLensBackend",
    "check_backend_options", "default_backend", "make_backend",
]
