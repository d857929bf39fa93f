"""Bulk unsteered sampling through an OpenAI-compatible server, with activations captured afterwards.

Persona-vector extraction samples ~1,000 answers per trait side at temperature 1 -- work a vLLM
server with tensor parallelism does far faster than a Python generation loop. The server only
writes text; the activations are then captured here, in batches, by a :class:`PersonaModel` of the
same checkpoint (any backend), exactly as for answers generated locally.

The server must serve the same weights and chat template; the answer text is re-tokenized with the
local tokenizer, so a capture covers the tokens the local model would have read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from personaspace.engine.capture import Activations
from personaspace.engine.chat import PromptLike, as_chat
from personaspace.engine.model import DEFAULT_REDUCTIONS, Generation, GenerationResult
from personaspace.errors import BackendError


def chat_messages(prompt: PromptLike, system: str | None = None) -> list[dict[str, str]]:
    """OpenAI chat messages for a prompt (a string, ``{"system", "user"}`` mapping or Chat)."""
    chat = as_chat(prompt, system)
    if isinstance(chat, list):
        raise BackendError("An OpenAI-compatible server needs chat prompts (text), not token ids.")
    return chat.messages()


class OpenAISampler:
    """Sample answers on a server, capture their activations on ``model``.

    >>> sampler = OpenAISampler(model, OpenAICompatClient("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"))  # doctest: +SKIP
    >>> out = sampler.sample(questions, system=instruction, samples_per_prompt=10, capture_layers=True)   # doctest: +SKIP
    >>> out.activations["response_avg"].shape     # [questions x 10, layers, d_model]                   # doctest: +SKIP
    """

    def __init__(self, model: Any, client: Any, *, request_batch: int = 256):
        if request_batch < 1:
            raise ValueError("request_batch must be at least 1.")
        self.model = model
        self.client = client
        self.request_batch = request_batch

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        system: str | None = None,
        samples_per_prompt: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 256,
        capture_layers: Any = False,
        reductions: Sequence[str] = DEFAULT_REDUCTIONS,
        progress: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Answers in prompt-major order (prompt 0's samples first); activations aligned when captured.

        Requests go out ``request_batch`` at a time (the client bounds concurrency and retries); each
        batch's activations are captured as soon as its answers arrive, so memory stays bounded.
        """
        if samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be at least 1.")
        if getattr(self.model, "_interventions", None):
            raise BackendError(
                "An OpenAI-compatible server samples unsteered, but interventions are active on this model "
                "(an intervene() block). Sample outside it, or generate locally to steer."
            )
        rows = [p for p in prompts for _ in range(samples_per_prompt)]
        layers = None if capture_layers is True else capture_layers
        generations: list[Generation] = []
        parts: list[Activations] = []
        for start in range(0, len(rows), self.request_batch):
            chunk = rows[start : start + self.request_batch]
            replies = self.client.chat_many(
                [chat_messages(p, system) for p in chunk], temperature=temperature, max_tokens=max_new_tokens
            )
            batch = []
            for prompt, reply in zip(chunk, replies):
                response_ids = self.model.response_ids(reply.text)
                prompt_ids = self.model.prompt_ids(prompt, system)
                batch.append(Generation(prompt_ids, response_ids, reply.text, len(response_ids) < max_new_tokens))
            if capture_layers is not False:
                parts.append(
                    self.model.capture(
                        [g.prompt_ids for g in batch], [g.response_ids for g in batch], layers=layers, reductions=reductions
                    )
                )
            generations.extend(batch)
            if progress is not None:
                progress(len(chunk))
        acts = Activations.concat(parts) if parts else None
        return GenerationResult(generations, acts)
