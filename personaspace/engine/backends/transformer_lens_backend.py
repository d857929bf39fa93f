"""The engine's backend protocol on a TransformerLens 4 ``TransformerBridge``.

Layer ``L`` is the bridge's ``blocks.L.hook_resid_post`` (the output of decoder block ``L``, our
convention). The engine's layer callbacks run as TransformerLens hooks on those names, and the KV
cache is a Hugging Face ``DynamicCache`` handed to the wrapped model, which extends it in place.

transformers 5.24 renamed the cache keyword from ``past_key_values`` to ``cache`` everywhere, down to
the call each decoder layer makes into its attention module. TransformerLens 4 (through 4.3) replaces
that attention module with a bridge that reimplements attention and looks the cache up only as
``past_key_values`` (or ``layer_past``), so on 5.24 it never sees the cache: nothing is written to it
and every decode step attends to its own token alone (steered SmolLM2 answers became 'De-------').
While a cached forward runs, :func:`_kv_cache_aliases` lets each attention bridge find the cache under
the new name as well; on earlier transformers there is no ``cache`` keyword and it changes nothing.

Note: booting a bridge switches the wrapped Hugging Face model to eager attention (TransformerLens
needs it for attention-pattern hooks); on SmolLM2 that moves activations by ~1e-6 relative.
"""

from __future__ import annotations

import contextlib
from typing import Any

from personaspace.engine.backends.base import (
    ForwardOutput,
    StopForward,
    cache_kwarg,
    find_decoder_layers,
)
from personaspace.engine.callbacks import LayerFn
from personaspace.errors import BackendError


def import_bridge():
    """``TransformerBridge`` or one clear BackendError when TransformerLens 4 is missing."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        raise BackendError(
            "The TransformerLens backend needs TransformerLens 4 (transformer_lens.model_bridge), which is not installed.\n"
            "  Install it with: pip install 'personaspace[backends]'  (or: pip install 'transformer-lens>=4')"
        ) from exc
    return TransformerBridge


def supported_architectures() -> set[str]:
    from transformer_lens.factories.architecture_adapter_factory import (
        SUPPORTED_ARCHITECTURES,
    )

    return set(SUPPORTED_ARCHITECTURES)


def hook_name(layer: int) -> str:
    """TransformerLens name of our layer ``layer`` (output of decoder block ``layer``)."""
    return f"blocks.{layer}.hook_resid_post"


def boot_bridge(hf_model: Any, tokenizer: Any, name: str | None = None, **kwargs: Any) -> Any:
    """A ``TransformerBridge`` around a Hugging Face model already in memory (no download)."""
    bridge_cls = import_bridge()
    archs = list(getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])
    supported = supported_architectures()
    if not any(a in supported for a in archs):
        raise BackendError(
            f"TransformerLens has no TransformerBridge adapter for {', '.join(archs)}.\n"
            "  Use the default backend ('hooks') or nnsight for this model; "
            "transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES lists what it supports."
        )
    name = name or getattr(hf_model.config, "_name_or_path", None) or archs[0]
    try:
        return bridge_cls.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, **kwargs)
    except ValueError as exc:
        raise BackendError(f"TransformerBridge cannot wrap {archs[0]}: {exc}") from exc


class TransformerLensBackend:
    """Backend protocol on a TransformerLens 4 ``TransformerBridge``."""

    name = "transformer_lens"

    def __init__(self, bridge: Any):
        import_bridge()
        if not hasattr(bridge, "hook_dict") or not hasattr(bridge, "original_model"):
            raise BackendError(f"Expected a TransformerLens 4 TransformerBridge, got {type(bridge).__name__}.")
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.layers = find_decoder_layers(self.hf_model)
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        missing = [hook_name(layer) for layer in (0, self.n_layers - 1) if hook_name(layer) not in bridge.hook_dict]
        if missing:
            raise BackendError(f"This TransformerBridge has no {missing[0]} hook; it cannot serve as a personaspace backend.")
        # Attention bridges that compute attention themselves and extend the KV cache through
        # ``_update_kv_cache`` (the others hand every keyword to the Hugging Face module unchanged).
        self._kv_updaters = [m for m in bridge.modules() if callable(getattr(type(m), "_update_kv_cache", None))]
        self._cache_kwarg = cache_kwarg(self.hf_model)

    @classmethod
    def from_hf(cls, hf_model: Any, tokenizer: Any, name: str | None = None) -> TransformerLensBackend:
        return cls(boot_bridge(hf_model, tokenizer, name))

    def __repr__(self) -> str:
        return f"TransformerLensBackend(layers={self.n_layers}, d_model={self.d_model})"

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.hf_model.config)

    @contextlib.contextmanager
    def _hooks(self, layer_fns: dict[int, LayerFn], stop_after: int | None):
        targets = sorted(set(layer_fns) | ({stop_after} if stop_after is not None else set()))
        hooks = [(hook_name(layer), _make_hook(layer, layer_fns.get(layer), layer == stop_after)) for layer in targets]
        with self.bridge.hooks(fwd_hooks=hooks):
            yield

    def forward(self, input_ids, attention_mask, position_ids, *, layer_fns, stop_after=None, cache=None, logits_to_keep=1):
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "logits_to_keep": logits_to_keep}
        if cache is not None:
            # Under the wrapped model's own keyword: the bridge's ``past_key_values`` argument would
            # pass the deprecated name on transformers >= 5.24. The cache is extended in place.
            kwargs.update({self._cache_kwarg: cache, "use_cache": True})
        else:
            kwargs["use_cache"] = False
        with self._hooks(layer_fns, stop_after), _kv_cache_aliases(self._kv_updaters if cache is not None else []):
            try:
                logits = self.bridge(input_ids, return_type="logits", **kwargs)
            except StopForward:
                return ForwardOutput(None, None)
        return ForwardOutput(logits[:, -logits_to_keep:], cache)


@contextlib.contextmanager
def _kv_cache_aliases(modules: list[Any]):
    """Let each attention bridge's ``_update_kv_cache`` find the KV cache passed as ``cache=``.

    Installed per instance for the duration of one forward, then removed, so a bridge the user
    passed in is left exactly as it was.
    """
    patched = []
    try:
        for module in modules:
            if "_update_kv_cache" in vars(module):
                continue  # already wrapped (re-entrant forward) or customised by the user: leave it
            module._update_kv_cache = _aliasing(module._update_kv_cache)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module._update_kv_cache


def _aliasing(update):
    def update_kv_cache(k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return update(k, v, **kwargs)

    return update_kv_cache


def _make_hook(layer: int, fn: LayerFn | None, stop: bool):
    def hook(hidden, hook):
        new = fn(layer, hidden) if fn is not None else None
        if stop:
            raise StopForward
        return new if new is not None and new is not hidden else None

    return hook
