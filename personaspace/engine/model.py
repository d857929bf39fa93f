"""PersonaModel: the one object that touches model internals.

It owns chat formatting, batched generation, activation capture and interventions, all on top of a
backend (PyTorch hooks by default). Layer ``L`` always means the output of decoder block ``L``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from personaspace._util import checks
from personaspace._util.memory import steady_heap
from personaspace.engine.backends import check_backend_options, default_backend, make_backend
from personaspace.engine.backends.base import Backend
from personaspace.engine.capture import Activations, CaptureAccumulator
from personaspace.engine.chat import ChatFormatter, PromptLike
from personaspace.engine.context import REDUCTIONS, StepContext, position_ids
from personaspace.engine.generation import CallbackForward, SamplingConfig, generate_batch, generate_slots, pad_batch
from personaspace.engine.interventions import Intervention, by_layer
from personaspace.engine.layers import LayerSpec, resolve_layers
from personaspace.engine.placement import input_device
from personaspace.models import DEFAULT_MODEL, LoadedModel, load_pretrained

DEFAULT_REDUCTIONS = ("prompt_avg", "prompt_last", "response_avg")


@dataclass
class Generation:
    """One generated answer: token ids (stop token excluded), text, and whether it ended by itself."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finished: bool


@dataclass
class GenerationResult:
    generations: list[Generation]
    activations: Activations | None = None  # aligned with ``generations`` when captured

    @property
    def texts(self) -> list[str]:
        return [g.text for g in self.generations]

    def __len__(self) -> int:
        return len(self.generations)

    def __getitem__(self, i: int) -> Generation:
        return self.generations[i]


class PersonaModel:
    """A causal LM with generation, capture and interventions.

    >>> model = PersonaModel.load()                                   # doctest: +SKIP
    >>> out = model.generate(["Hi!"], max_new_tokens=8)                # doctest: +SKIP
    >>> acts = model.capture(["Hi!"], out.texts, layers=[10, 15])    # doctest: +SKIP
    >>> acts["response_avg"].shape                                    # doctest: +SKIP
    torch.Size([1, 2, 576])
    """

    def __init__(self, loaded: LoadedModel, backend: Backend | None = None, *, thinking: bool = False):
        self.loaded = loaded
        self.name = loaded.name
        self.hf_model = loaded.hf_model
        self.tokenizer = loaded.tokenizer
        self.backend: Backend = backend or default_backend(self.hf_model)
        self.n_layers = self.backend.n_layers
        self.d_model = self.backend.d_model
        self.formatter = ChatFormatter(self.tokenizer, thinking=thinking)
        self._interventions: list[Intervention] = []

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: Any = None,
        backend: str = "auto",
        remote: bool | str = False,
        thinking: bool = False,
        **kwargs: Any,
    ) -> PersonaModel:
        """Load an embedded model name, a local directory or a hub id (see :mod:`personaspace.models`).

        ``backend``: "auto" (default: "fused" for Llama-family models, else "hooks"), "fused",
        "hooks", "nnsight" (``remote=True`` for NDIF) or "transformer_lens"; all give the same numbers
        (parity-tested). ``thinking``: keep a reasoning model's thinking where its chat template has a
        switch (Qwen3's ``enable_thinking``); off by default (see :mod:`personaspace.engine.chat`).
        """
        check_backend_options(backend, kwargs, remote=remote)  # before the weights load
        loaded = load_pretrained(name, device=device, dtype=dtype, **kwargs)
        if backend == "auto" and not remote:
            return cls(loaded, thinking=thinking)

        return cls(loaded, backend=make_backend(backend, loaded.hf_model, loaded.tokenizer, remote=remote), thinking=thinking)

    @classmethod
    def from_hf(cls, hf_model: Any, tokenizer: Any, name: str | None = None, *, thinking: bool = False) -> PersonaModel:
        """Wrap a Hugging Face model the caller already has."""
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        hf_model.eval()
        label = name or getattr(hf_model.config, "_name_or_path", "model")
        return cls(LoadedModel(hf_model, tokenizer, label, "object"), thinking=thinking)

    @property
    def thinking(self) -> bool:
        """Whether chat prompts keep a reasoning model's thinking (templates with a switch only; default off)."""
        return self.formatter.thinking

    @thinking.setter
    def thinking(self, value: bool) -> None:
        self.formatter.thinking = bool(value)

    @property
    def model_hash(self) -> str:
        """What identifies the weights: the GGUF digest (embedded), the hub commit, else, computed once
        when first asked for, a hash of a local directory's model files or of the state dict
        (see :mod:`personaspace.models.hashing`)."""
        if not self.loaded.model_hash:
            from personaspace.models.hashing import directory_hash, state_hash

            local_dir = self.loaded.info.get("local_dir")
            # Reading a large directory once is the price of knowing its weights; only runs that record
            # the hash (extraction, vectors) pay it, and the per-file hashes are remembered.
            self.loaded.model_hash = directory_hash(local_dir) if local_dir else state_hash(self.hf_model)
        return self.loaded.model_hash

    def __repr__(self) -> str:
        return f"PersonaModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, device={self.device})"

    @property
    def device(self) -> torch.device:
        """Where inputs are built: the backend's device if it says (remote backends), else the weights'
        (for a model dispatched or offloaded by accelerate, its input embedding's execution device)."""
        device = getattr(self.backend, "device", None)
        if device is not None:
            return torch.device(device)
        return input_device(self.hf_model)  # dispatched or offloaded by accelerate: the embedding's execution device

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.hf_model, "generation_config", None), self.hf_model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is None:
                continue
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return {int(i) for i in ids}

    def layers(self, spec: LayerSpec = None) -> list[int]:
        return resolve_layers(spec, self.n_layers)

    def compile(self, dynamic: bool = True) -> PersonaModel:
        """Compile each decoder block's forward with ``torch.compile`` (fuses norms, rotary, activations).

        Hooks stay outside the compiled code, so capture and interventions behave exactly as before.
        This speeds up what runs through the Hugging Face blocks: everything on the hooks backend, and
        generation with a KV cache on the fused one (whose cache-free forwards do not use the blocks'
        ``forward``; compiling its elementwise work measured no gain). Costs about half a minute of
        compilation on first use.
        """
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in self.backend.layers:
            if not hasattr(block, "_personaspace_eager_forward"):
                block._personaspace_eager_forward = block.forward
                block.forward = torch.compile(block.forward, dynamic=dynamic)
        return self

    # ---- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, prompt: PromptLike, system: str | None = None) -> list[int]:
        """Token ids of a chat prompt, ending with the assistant header (ready to generate)."""
        return self.formatter.ids(prompt, system)

    def response_ids(self, response: str | Sequence[int]) -> list[int]:
        if isinstance(response, str):
            return list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        return [int(t) for t in response]

    # ---- interventions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def intervene(self, *interventions: Intervention) -> Iterator[PersonaModel]:
        """Apply interventions to every generation and capture inside the ``with`` block."""
        by_layer(interventions, self.n_layers, self.d_model)  # validate now, before any work
        before = list(self._interventions)
        self._interventions.extend(interventions)
        try:
            yield self
        finally:
            self._interventions = before

    def _active(self, extra: Sequence[Intervention]) -> dict[int, list[Intervention]]:
        return by_layer([*self._interventions, *extra], self.n_layers, self.d_model)

    # ---- generation ---------------------------------------------------------------------------
    def _slot_cache(self, slots: int, capacity: int) -> Any:
        """The backend's static KV cache for this generation, or None (the backend has none, or declines)."""
        make = getattr(self.backend, "new_slot_cache", None)
        return make(slots, capacity) if make is not None else None

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[PromptLike],
        *,
        system: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 32,
        use_cache: bool = True,
        capture_layers: LayerSpec | bool = False,
        reductions: Sequence[str] = DEFAULT_REDUCTIONS,
        interventions: Sequence[Intervention] = (),
        progress: Any = None,
    ) -> GenerationResult:
        """Generate answers; optionally capture activations of prompt and response tokens on the way.

        ``capture_layers``: False (no capture), True/None/"all" (every layer), or a layer spec.
        ``batch_size`` rows generate together: on the fused backend they are the slots of a static KV
        cache, refilled from the remaining prompts as rows finish (continuous batching); on other
        backends prompts are sorted by length into batches to limit padding. Results come back in
        input order.
        """
        prompts = checks.prompt_list(prompts, allow_empty=True)
        max_new_tokens = checks.positive_int("max_new_tokens", max_new_tokens)
        batch_size = checks.positive_int("batch_size", batch_size)
        temperature, top_p = checks.sampling(temperature, top_p)
        seed = checks.integer("seed", seed)
        cfg = SamplingConfig(max_new_tokens, temperature, top_p, seed)
        if use_cache and self.backend.new_cache() is None:
            use_cache = False  # backend without a KV cache (e.g. remote execution): recompute each step
        ids = [self.prompt_ids(p, system) for p in prompts]
        active = self._active(interventions)
        capture = None
        if capture_layers is not False:
            spec = None if capture_layers is True else capture_layers
            capture = CaptureAccumulator(self.layers(spec), reductions, len(ids), self.d_model)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[tuple[list[int], bool] | None] = [None] * len(ids)
        common: dict[str, Any] = dict(cfg=cfg, stop_ids=self.stop_ids, pad_id=self.pad_id, device=self.device, interventions=active)
        slots = self._slot_cache(min(batch_size, len(ids)), max((len(p) for p in ids), default=0) + max_new_tokens) if use_cache and ids else None
        with steady_heap(self.device):  # the blocks' activations reuse freed memory instead of faulting it in again
            if slots is not None:  # a static KV cache: continuous batching over all prompts
                out = generate_slots(self.backend, [ids[i] for i in order], order, cache=slots, capture=capture, on_done=progress, **common)
                results = [res for _, res in sorted(zip(order, out))]
            else:
                for start in range(0, len(order), batch_size):
                    chunk = order[start : start + batch_size]
                    out = generate_batch(self.backend, [ids[i] for i in chunk], chunk, capture=capture if use_cache else None,
                                         use_cache=use_cache, **common)
                    for i, res in zip(chunk, out):
                        results[i] = res
                    if progress is not None:
                        progress(len(chunk))
        generations = [
            Generation(ids[i], resp, self.tokenizer.decode(resp, skip_special_tokens=True), fin)
            for i, (resp, fin) in enumerate(results)  # type: ignore[misc]
        ]
        acts = None
        if capture is not None:
            if use_cache:
                acts = capture.result()
            else:
                acts = self.capture(
                    [g.prompt_ids for g in generations],
                    [g.response_ids for g in generations],
                    layers=capture.layers,
                    reductions=reductions,
                    interventions=interventions,
                )
        return GenerationResult(generations, acts)

    # ---- capture ------------------------------------------------------------------------------
    @torch.inference_mode()
    def capture(
        self,
        prompts: Sequence[PromptLike],
        responses: Sequence[str | Sequence[int]] | None = None,
        *,
        system: str | None = None,
        layers: LayerSpec = None,
        reductions: Sequence[str] = DEFAULT_REDUCTIONS,
        interventions: Sequence[Intervention] = (),
        token_budget: int = 1024,
        padding_side: str = "right",
        early_exit: bool = True,
    ) -> Activations:
        """Residual-stream activations of (prompt, response) pairs, reduced per sample.

        Returns :class:`Activations` with ``data[reduction]`` float32 ``[samples, layers, d_model]``.
        Pairs are sorted by length and packed into batches of about ``token_budget`` tokens; the model
        stops after the deepest requested layer (no later blocks, no LM head) when ``early_exit``.
        """
        prompts = checks.prompt_list(prompts, allow_empty=True)
        if responses is not None:
            responses = checks.prompt_list(responses, "responses") if isinstance(responses, str) else responses
        token_budget = checks.positive_int("token_budget", token_budget)
        layer_list = self.layers(layers)
        reductions = list(reductions)
        unknown = [r for r in reductions if r not in REDUCTIONS]
        if unknown:
            raise ValueError(f"Unknown reductions {unknown}; use any of {REDUCTIONS}.")
        p_ids = [self.prompt_ids(p, system) for p in prompts]
        r_ids = [self.response_ids(r) for r in responses] if responses is not None else [[] for _ in p_ids]
        if len(r_ids) != len(p_ids):
            raise ValueError(f"Got {len(p_ids)} prompts but {len(r_ids)} responses.")
        deepest = max(layer_list)
        active = {k: v for k, v in self._active(interventions).items() if k <= deepest}
        acc = CaptureAccumulator(layer_list, reductions, len(p_ids), self.d_model)
        forward = CallbackForward(self.backend, active, acc)
        seqs = [p + r for p, r in zip(p_ids, r_ids)]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        with steady_heap(self.device):
            for batch in _token_batches(order, [len(s) for s in seqs], token_budget):
                ids, mask = pad_batch([seqs[i] for i in batch], self.pad_id, self.device, padding_side)
                ctx = StepContext.for_padded(
                    mask,
                    torch.tensor([len(p_ids[i]) for i in batch], device=self.device),
                    torch.tensor(batch, device=self.device),
                )
                forward(ctx, ids, mask, position_ids(mask), stop_after=deepest if early_exit else None, logits_to_keep=1)
        return acc.result()


def _token_batches(order: list[int], lengths: list[int], budget: int) -> Iterator[list[int]]:
    """Greedy packing of length-sorted samples into batches of at most ``budget`` padded tokens."""
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if batch and new_width * (len(batch) + 1) > budget:
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, dtype: Any = None, **kwargs: Any) -> PersonaModel:
    """Load a model for generation, capture and steering: an embedded name, a local directory or a hub id."""
    return PersonaModel.load(name, device=device, dtype=dtype, **kwargs)


# PersonaModels over the same weights through another backend, or over models other libraries hold.


def with_backend(model: PersonaModel, name: str, *, remote: bool | str = False) -> PersonaModel:
    """The same weights and tokenizer as ``model``, run through another backend.

    The two models share the Hugging Face module; note that the TransformerLens backend switches it
    to eager attention.
    """
    backend = make_backend(name, model.hf_model, model.tokenizer, remote=remote)
    return PersonaModel(model.loaded, backend=backend, thinking=model.thinking)


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
    from personaspace.engine.backends.transformer_lens_backend import (
        TransformerLensBackend,
    )

    backend = TransformerLensBackend(bridge)
    tokenizer = bridge.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    label = name or getattr(bridge.cfg, "model_name", None) or "transformer-bridge"
    return PersonaModel(LoadedModel(backend.hf_model, tokenizer, str(label), "transformer_lens"), backend=backend)
