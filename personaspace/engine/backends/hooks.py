"""The default backend: PyTorch forward hooks on a Hugging Face causal LM (any architecture)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from personaspace.engine.backends.base import (
    ForwardOutput,
    StopForward,
    cache_kwarg,
    find_decoder_layers,
    output_cache,
    text_config,
)
from personaspace.engine.callbacks import LayerFn


class HFHookBackend:
    """PyTorch forward hooks on a Hugging Face causal LM (any architecture; generation with a KV cache)."""

    name = "hooks"

    def __init__(self, hf_model: Any):
        self.hf_model = hf_model
        self.layers = find_decoder_layers(hf_model)
        config = text_config(hf_model)
        self.n_layers = len(self.layers)
        self.d_model = int(config.hidden_size)
        self._base = getattr(hf_model, hf_model.base_model_prefix, None) if hasattr(hf_model, "base_model_prefix") else None

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.hf_model.config)

    @contextlib.contextmanager
    def hooks(self, layer_fns: dict[int, LayerFn], stop_after: int | None) -> Iterator[None]:
        handles = []
        targets = set(layer_fns)
        if stop_after is not None:
            targets.add(stop_after)
        for layer in sorted(targets):
            handles.append(self.layers[layer].register_forward_hook(self._make_hook(layer, layer_fns.get(layer), layer == stop_after)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _make_hook(layer: int, fn: LayerFn | None, stop: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if fn is not None:
                new = fn(layer, hidden)
                if new is not None and new is not hidden:
                    output = (new, *output[1:]) if isinstance(output, tuple) else new
            if stop:
                raise StopForward
            return output

        return hook

    def forward(self, input_ids, attention_mask, position_ids, *, layer_fns, stop_after=None, cache=None, logits_to_keep=1):
        use_cache = cache is not None
        with self.hooks(layer_fns, stop_after):
            try:
                if stop_after is not None and self._base is not None:
                    # Only hidden states are needed: run the decoder without the LM head.
                    self._base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
                    return ForwardOutput(None, None)
                out = self.hf_model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=use_cache,
                    logits_to_keep=logits_to_keep,
                    **({cache_kwarg(self.hf_model): cache} if use_cache else {}),
                )
            except StopForward:
                return ForwardOutput(None, None)
        return ForwardOutput(out.logits, output_cache(out, cache) if use_cache else None)
