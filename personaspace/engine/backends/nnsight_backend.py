"""The engine's backend protocol on an ``nnsight`` model, locally or remotely on NDIF.

Locally, a forward is one ``model.trace(...)``: the block reads each hooked decoder block's
``.output``, passes it through the engine's layer callback and writes the result back, so any
callback -- interventions, capture, a user's own -- runs exactly as with plain hooks.

Remotely (``remote=True``: NDIF; ``remote="local"``: nnsight's simulation of it), the callbacks
cannot run: the trace block is shipped as source to a server that has torch and nnsight but not
personaspace. So the engine's interventions and capture are first compiled into plain tensors
(:mod:`personaspace.engine.backends.remote_plan`), and the block applies them with torch
operations only; captured layers come back already reduced per sample (``[reductions, batch, d]``),
never as whole ``[batch, tokens, d]`` activations.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from typing import Any
from urllib.parse import urlparse

import torch

from personaspace.engine.backends.base import (
    DECODER_LAYER_PATHS,
    ForwardOutput,
    cache_kwarg,
    find_decoder_layers,
    text_config,
)
from personaspace.engine.backends.remote_plan import RemotePlan, compile_plan
from personaspace.engine.callbacks import LayerFn
from personaspace.errors import BackendError

NDIF_KEY_URL = "https://login.ndif.us"


def import_nnsight():
    """Import nnsight or raise one clear BackendError."""
    try:
        import nnsight
    except ImportError as exc:
        raise BackendError(
            "The nnsight backend needs the 'nnsight' package, which is not installed.\n"
            "  Install it with: pip install 'personaspace[backends]'  (or: pip install nnsight)"
        ) from exc
    return nnsight


def wrap_hf_model(hf_model: Any, tokenizer: Any) -> Any:
    """An ``nnsight.LanguageModel`` around a Hugging Face model already in memory.

    nnsight sets the tokenizer to left padding and may add a pad token; the engine does its own
    padding, so the tokenizer the caller shares with us is restored afterwards.
    """
    import_nnsight()
    from nnsight import LanguageModel

    side, pad = getattr(tokenizer, "padding_side", None), getattr(tokenizer, "pad_token", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation notice
        lm = LanguageModel(hf_model, tokenizer=tokenizer)
    if side is not None:
        tokenizer.padding_side = side
    if pad is not None:
        tokenizer.pad_token = pad
    return lm


def ndif_api_key() -> str | None:
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or None


def check_ndif(timeout: float = 5.0) -> str:
    """Fail fast, with one message, when NDIF cannot be used: no API key, or its host unreachable."""
    import_nnsight()
    from nnsight import CONFIG

    if not ndif_api_key():
        raise BackendError(
            "remote=True runs on NDIF and needs an API key, but NDIF_API_KEY is not set.\n"
            f"  Get a key at {NDIF_KEY_URL} and export NDIF_API_KEY=..., or pass remote='local' to run "
            "the same remote code path on this machine (nnsight's simulation of remote execution)."
        )
    host = CONFIG.API.HOST
    url = urlparse(host)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BackendError(
            f"Cannot reach NDIF at {host} ({type(exc).__name__}: {exc}).\n"
            "  Check the network (or NDIF_HOST), or use remote='local' to simulate remote execution here."
        ) from exc
    return host


def _strict_simulation(lm: Any):
    """nnsight's local simulation of remote execution, made as strict as a real NDIF server.

    nnsight hides the caller's modules while it deserializes the shipped trace, but an editable
    install (like a development checkout of personaspace) stays importable through its import hook,
    so a block that leaked a personaspace object would pass the simulation and fail on the server.
    Here every hidden module that does not live in site-packages is also made unimportable.
    """
    from nnsight.intervention.backends.local import LocalSimulationBackend

    class Blocker:
        def __init__(self, roots: set[str]):
            self.roots = roots

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.roots:
                raise ModuleNotFoundError(f"No module named {name!r} (not installed on the NDIF server)", name=name)
            return None

    class StrictLocalSimulation(LocalSimulationBackend):
        def _hide_local_modules(self) -> dict:
            hidden = super()._hide_local_modules()
            roots = {
                name.split(".")[0]
                for name, module in hidden["modules"].items()
                if "site-packages" not in str(getattr(module, "__file__", None) or "site-packages")
            }
            hidden["blocker"] = Blocker(roots)
            sys.meta_path.insert(0, hidden["blocker"])
            return hidden

        def _restore(self, hidden: dict) -> None:
            sys.meta_path.remove(hidden["blocker"])
            super()._restore(hidden)

    return StrictLocalSimulation(lm)


class NNsightBackend:
    """Backend protocol on an ``nnsight`` model (``LanguageModel`` / ``TransformersModel``).

    ``remote``: False (run here), True (run on NDIF; needs ``NDIF_API_KEY`` and a network), or
    ``"local"`` (serialize the trace as for NDIF, with personaspace unimportable, and run it here).
    Remote runs keep no KV cache between steps (``new_cache()`` is None): generate with
    ``use_cache=False``.
    """

    name = "nnsight"

    def __init__(self, lm: Any, *, remote: bool | str = False):
        import_nnsight()
        if remote not in (False, True, "local"):
            raise BackendError(f"remote must be False, True or 'local', got {remote!r}.")
        if remote is True:
            check_ndif()
        self.lm = lm
        self.remote = remote
        module = lm._module
        self.layers = find_decoder_layers(module)
        self.layer_path = _layer_path(module)
        config = text_config(module)
        self.n_layers = len(self.layers)
        self.d_model = int(config.hidden_size)

    @classmethod
    def from_hf(cls, hf_model: Any, tokenizer: Any, *, remote: bool | str = False) -> NNsightBackend:
        return cls(wrap_hf_model(hf_model, tokenizer), remote=remote)

    def __repr__(self) -> str:
        return f"NNsightBackend(remote={self.remote!r}, layers={self.n_layers})"

    @property
    def blocks(self) -> Any:
        """The envoy list of decoder blocks (``lm.model.layers`` for Llama-style models)."""
        envoy = self.lm
        for part in self.layer_path.split("."):
            envoy = getattr(envoy, part)
        return envoy

    def new_cache(self) -> Any:
        if self.remote:
            return None  # a KV cache would have to travel to the server and back at every step
        from transformers import DynamicCache

        return DynamicCache(config=self.lm._module.config)

    def forward(self, input_ids, attention_mask, position_ids, *, layer_fns, stop_after=None, cache=None, logits_to_keep=1):
        if self.remote:
            if cache is not None or attention_mask.shape[1] != input_ids.shape[1]:
                # A mask wider than the input means the caller expects earlier tokens in a cache.
                raise BackendError("Remote nnsight runs keep no KV cache; generate with use_cache=False.")
            plan = compile_plan(layer_fns, stop_after)
            return self._forward_remote(input_ids, attention_mask, position_ids, plan, stop_after, logits_to_keep)
        return self._forward_local(input_ids, attention_mask, position_ids, layer_fns, stop_after, cache, logits_to_keep)

    # ---- local: the engine's callbacks run inside the trace ------------------------------------
    def _forward_local(self, input_ids, attention_mask, position_ids, layer_fns: dict[int, LayerFn], stop_after, cache, logits_to_keep):
        lm, blocks = self.lm, self.blocks
        targets = sorted(set(layer_fns) | ({stop_after} if stop_after is not None else set()))
        use_cache = cache is not None
        result: dict[str, Any] = {}
        cache_arg = {cache_kwarg(lm._module): cache} if use_cache else {}
        with lm.trace(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **cache_arg,
        ) as tracer:
            for layer in targets:  # modules must be visited in execution order
                block = blocks[layer]
                fn = layer_fns.get(layer)
                if fn is not None:
                    out = block.output
                    hidden = out[0] if isinstance(out, tuple) else out  # transformers 5: a bare tensor
                    new = fn(layer, hidden)
                    if new is not None and new is not hidden:
                        block.output = (new, *out[1:]) if isinstance(out, tuple) else new
                if layer == stop_after:
                    tracer.stop()
            output = lm.output
            result["logits"] = output.logits
            # The model extends the DynamicCache it was given in place (reading it back from the
            # output would name the field, which transformers 5.24 renamed to ``cache``).
            result["cache"] = cache if use_cache else None
        if stop_after is not None:
            return ForwardOutput(None, None)
        return ForwardOutput(result["logits"], result["cache"])

    # ---- remote: plain tensors in, reduced tensors out -----------------------------------------
    def _forward_remote(self, input_ids, attention_mask, position_ids, plan: RemotePlan, stop_after, logits_to_keep):
        backend = _strict_simulation(self.lm) if self.remote == "local" else None
        saved = run_remote_trace(
            self.lm,
            self.layer_path,
            input_ids,
            attention_mask,
            position_ids,
            plan.ops,
            plan.capture_layers,
            plan.weights,
            plan.valid,
            stop_after,
            logits_to_keep,
            remote=self.remote is True,
            backend=backend,
        )
        plan.deliver(saved["reduced"])
        return ForwardOutput(saved.get("logits"), None)


def run_remote_trace(lm, layer_path, input_ids, attention_mask, position_ids, ops, capture_layers, weights, valid, stop_after, logits_to_keep, *, remote, backend):
    """One trace whose block uses only torch, builtins and the model: what NDIF can run.

    ``ops[layer]``: list of ``(kind, vector, mask, lo, hi)`` with kind ``add`` (``h += mask * vector``),
    ``ablate`` (project ``vector`` out) or ``cap`` (clamp the projection on ``vector`` into
    ``[lo, hi]``), applied in order at the masked ``[batch, tokens]`` positions. For each layer in
    ``capture_layers`` the block returns ``einsum(weights [R, batch, tokens], h)``.
    Must stay a module-level function whose ``with`` block references no personaspace object.
    """
    layers = sorted(set(ops) | set(capture_layers) | ({stop_after} if stop_after is not None else set()))
    kwargs = {"remote": True} if remote else {"backend": backend} if backend is not None else {}
    with lm.trace(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs
    ) as tracer:
        saved = {"reduced": {}}.save()
        blocks = lm
        for part in layer_path.split("."):
            blocks = getattr(blocks, part)
        for layer in layers:
            block = blocks[layer]
            if layer in ops or layer in capture_layers:
                out = block.output
                hidden = out[0] if isinstance(out, tuple) else out
                for kind, vector, mask, lo, hi in ops.get(layer, ()):
                    v = vector.to(device=hidden.device, dtype=hidden.dtype)
                    m = mask.to(device=hidden.device, dtype=hidden.dtype)
                    if kind == "add":
                        hidden = hidden + m[..., None] * v
                    elif kind == "ablate":
                        proj = (hidden @ v) * m
                        hidden = hidden - proj[..., None] * v
                    else:
                        proj = hidden @ v
                        hidden = hidden + ((proj.clamp(min=lo, max=hi) - proj) * m)[..., None] * v
                if layer in ops:
                    block.output = (hidden, *out[1:]) if isinstance(out, tuple) else hidden
                if layer in capture_layers:
                    keep = valid.to(hidden.device)[..., None]
                    h = hidden.float().masked_fill(~keep, 0.0)
                    saved["reduced"][layer] = torch.einsum("rbt,btd->rbd", weights.to(hidden.device), h).cpu()
            if layer == stop_after:
                tracer.stop()
        saved["logits"] = lm.output.logits.cpu()
    return saved


def _layer_path(module: Any) -> str:
    for path in DECODER_LAYER_PATHS:
        obj = module
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return path
    raise BackendError(f"Cannot find the decoder blocks of {type(module).__name__}; looked at {', '.join(DECODER_LAYER_PATHS)}.")
