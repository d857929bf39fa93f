"""Alternative backends for the engine: fused Llama, nnsight (local or NDIF) and TransformerLens 4.

Each implements the engine's backend protocol (:mod:`personaspace.engine.backend`), so generation,
capture and interventions behave the same on all of them -- parity tests hold them to the default
hooks backend. See docs/backends.md for when to use which. nnsight and TransformerLens are imported
only when asked for, so personaspace works without them.

>>> model = load_model()                            # doctest: +SKIP
>>> nn = with_backend(model, "nnsight")             # same weights, nnsight traces  # doctest: +SKIP
>>> tl = with_backend(model, "transformer_lens")    # TransformerBridge hooks  # doctest: +SKIP
>>> big = from_nnsight(LanguageModel("meta-llama/Llama-3.1-70B-Instruct"), remote=True)  # NDIF  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from personaspace.engine.backend import HFHookBackend, default_backend
from personaspace.engine.model import PersonaModel
from personaspace.errors import BackendError
from personaspace.models import LoadedModel

BACKENDS = ("auto", "fused", "hooks", "nnsight", "transformer_lens")


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
        from personaspace.engine.backends.transformer_lens_backend import TransformerLensBackend

        return TransformerLensBackend.from_hf(hf_model, tokenizer)
    raise BackendError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")


def with_backend(model: PersonaModel, name: str, *, remote: bool | str = False) -> PersonaModel:
    """The same weights and tokenizer as ``model``, run through another backend.

    The two models share the Hugging Face module; note that the TransformerLens backend switches it
    to eager attention.
    """
    return PersonaModel(model.loaded, backend=make_backend(name, model.hf_model, model.tokenizer, remote=remote))


class _RemotePersonaModel(PersonaModel):
    """A PersonaModel whose weights live elsewhere (NDIF): inputs are built on the CPU."""

    @property
    def device(self) -> torch.device:
        device = super().device
        return torch.device("cpu") if device.type == "meta" else device


def from_nnsight(lm: Any, *, remote: bool | str = False, name: str | None = None) -> PersonaModel:
    """A PersonaModel over a user's existing ``nnsight.LanguageModel`` (or ``TransformersModel``).

    With ``remote=True`` the model may be a meta model (``LanguageModel("org/model")`` without
    ``dispatch``): nothing but the config and tokenizer are needed locally.
    """
    from personaspace.engine.backends.nnsight_backend import NNsightBackend

    backend = NNsightBackend(lm, remote=remote)
    tokenizer = lm.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    module = lm._module
    label = name or getattr(lm, "repo_id", None) or getattr(module.config, "_name_or_path", "nnsight-model")
    return _RemotePersonaModel(LoadedModel(module, tokenizer, str(label), "nnsight"), backend=backend)


def from_bridge(bridge: Any, *, name: str | None = None) -> PersonaModel:
    """A PersonaModel over a user's existing TransformerLens 4 ``TransformerBridge``."""
    from personaspace.engine.backends.transformer_lens_backend import TransformerLensBackend

    backend = TransformerLensBackend(bridge)
    tokenizer = bridge.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    label = name or getattr(bridge.cfg, "model_name", None) or "transformer-bridge"
    return PersonaModel(LoadedModel(backend.hf_model, tokenizer, str(label), "transformer_lens"), backend=backend)


def __getattr__(name: str) -> Any:
    if name == "NNsightBackend":
        from personaspace.engine.backends.nnsight_backend import NNsightBackend

        return NNsightBackend
    if name == "TransformerLensBackend":
        from personaspace.engine.backends.transformer_lens_backend import TransformerLensBackend

        return TransformerLensBackend
    if name == "OpenAISampler":
        from personaspace.engine.backends.openai_sampling import OpenAISampler

        return OpenAISampler
    raise AttributeError(name)


__all__ = ["BACKENDS", "NNsightBackend", "OpenAISampler", "TransformerLensBackend", "from_bridge", "from_nnsight", "make_backend", "with_backend"]
