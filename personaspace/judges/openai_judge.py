"""A judge served by any OpenAI-compatible endpoint, scored from the first token's logprobs.

First pass: one completion token at temperature 0 with the top 20 logprobs, reduced to the
expected integer (see :mod:`personaspace.judges.logprob_scoring`). Items that pass cannot
score go to a second pass that lets the judge write a few tokens:

* the endpoint returned no logprobs (or rejected the request for them): parse the integer
  or verdict word from the text;
* the tokenizer splits numbers into digits: the first token alone is ambiguous ("8" may be
  8 or 85), so read the greedy number and refine it with the candidates at its last digit.
"""

from __future__ import annotations

from collections.abc import Sequence

from personaspace._util.http import (
    ChatResult,
    EndpointRequestError,
    OpenAICompatClient,
)
from personaspace.errors import JudgeResponseError
from personaspace.judges.base import JudgeItem, Score, judge_prompt, prompt_cache_text
from personaspace.judges.logprob_scoring import (
    DEFAULT_MIN_MASS,
    read_first_token,
    read_greedy_digits,
    read_text,
)

TOP_LOGPROBS = 20
FALLBACK_MAX_TOKENS = 6
METHOD_VERSION = "logprob-v1"


class OpenAIJudge:
    """Scores items with a model behind an OpenAI-compatible chat-completions endpoint."""

    cache_version = METHOD_VERSION

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: OpenAICompatClient | None = None,
        min_mass: float = DEFAULT_MIN_MASS,
        timeout: float = 60.0,
        max_retries: int = 4,
        max_concurrency: int = 8,
    ):
        self.client = client or OpenAICompatClient(
            base_url=base_url,
            api_key=api_key,
            model=model,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
        )
        self.min_mass = float(min_mass)
        self.identity = f"openai:{self.client.model or 'default'}@{self.client.base_url}"
        self._logprobs_supported: bool | None = None  # learnt from the endpoint's first answers

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.identity!r})"

    def probe(self) -> None:
        """Check spec, key and reachability with one 1-token request (done once per judge object)."""
        if not getattr(self, "_probed", False):
            self.client.probe()
            self._probed = True

    def cache_text(self, item: JudgeItem) -> str:
        return prompt_cache_text(item)

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        """Score every item; an unreachable endpoint raises JudgeUnavailableError."""
        conversations = [[{"role": "user", "content": judge_prompt(item)}] for item in items]
        scores: list[Score | None] = [None] * len(items)
        text_pass: list[int] = []
        digit_pass: list[int] = []
        rejected: set[int] = set()

        if self._logprobs_supported is False:
            text_pass = list(range(len(items)))
        elif conversations:
            results = self.client.chat_many(
                conversations,
                temperature=0.0,
                max_tokens=1,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                return_exceptions=True,
            )
            for i, result in enumerate(results):
                if isinstance(result, EndpointRequestError):
                    rejected.add(i)
                    text_pass.append(i)  # perhaps the server rejects logprobs: try plain text
                elif isinstance(result, Exception):
                    scores[i] = self._error(result)
                elif not result.top_logprobs or not result.top_logprobs[0]:
                    self._logprobs_supported = False
                    text_pass.append(i)
                else:
                    self._logprobs_supported = True
                    reading = read_first_token(result.top_logprobs[0], self.min_mass)
                    if reading.split_digits:
                        digit_pass.append(i)
                    else:
                        scores[i] = Score(reading.value, self.identity, reading.detail)

        if text_pass:
            for i, result in zip(text_pass, self._second_pass(conversations, text_pass, False)):
                if isinstance(result, Exception):
                    scores[i] = self._error(result)
                    continue
                if i in rejected:
                    # The same prompt went through without logprobs: the endpoint refuses them.
                    self._logprobs_supported = False
                value, detail = read_text(result.text)
                scores[i] = Score(value, self.identity, detail)
        if digit_pass:
            for i, result in zip(digit_pass, self._second_pass(conversations, digit_pass, True)):
                if isinstance(result, Exception):
                    scores[i] = self._error(result)
                else:
                    value, detail = read_greedy_digits(
                        result.text, result.top_logprobs, self.min_mass
                    )
                    scores[i] = Score(value, self.identity, detail)
        return [
            s if s is not None else Score(None, self.identity, "error: not scored") for s in scores
        ]

    def _second_pass(
        self, conversations: list[list[dict]], indices: list[int], logprobs: bool
    ) -> list[ChatResult | Exception]:
        return self.client.chat_many(
            [conversations[i] for i in indices],
            temperature=0.0,
            max_tokens=FALLBACK_MAX_TOKENS,
            logprobs=logprobs,
            top_logprobs=TOP_LOGPROBS if logprobs else 0,
            return_exceptions=True,
        )

    def _error(self, exc: Exception) -> Score:
        message = exc.message if isinstance(exc, JudgeResponseError) else str(exc)
        return Score(None, self.identity, f"error: {message[:300]}")
