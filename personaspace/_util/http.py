"""A small client for OpenAI-compatible chat-completions endpoints (hosted APIs, vLLM, llama.cpp, Ollama).

It exists so that judging and bulk sampling survive real networks: bounded concurrency, retries
with exponential backoff and jitter on transient failures, clear errors for the permanent ones,
and no API key needed (or asked for at import time) when the server runs on this machine.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from personaspace.errors import JudgeResponseError, JudgeUnavailableError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ENV_BASE_URL = ("PERSONASPACE_LLM_BASE_URL", "OPENAI_BASE_URL")
ENV_API_KEY = ("PERSONASPACE_LLM_API_KEY", "OPENAI_API_KEY")
ENV_MODEL = ("PERSONASPACE_LLM_MODEL",)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


@dataclass
class ChatResult:
    """One completion: its text and, when asked for, the top candidates of every generated token."""

    text: str
    top_logprobs: list[dict[str, float]] | None  # per generated token: candidate token -> logprob


class EndpointRequestError(JudgeResponseError):
    """The endpoint refused one request for good (a 4xx other than auth / not found / rate limit)."""

    def __init__(self, message: str, status_code: int, server_message: str):
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message


def _first_env(names: Sequence[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def is_loopback_url(url: str) -> bool:
    """True for URLs whose host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_message(response: httpx.Response) -> str:
    """The error text a server put in its body, in any of the common shapes."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or error
        if error is not None:
            return str(error)[:500]
    return str(body)[:500]


def _merge_logprob(table: dict[str, float], token: str, logprob: float) -> None:
    """Add a candidate; two token ids that decode to the same text share their probability."""
    if token in table:
        high, low = max(table[token], logprob), min(table[token], logprob)
        table[token] = float(high + math.log1p(math.exp(low - high)))
    else:
        table[token] = float(logprob)


def parse_chat_response(body: Any) -> ChatResult:
    """Turn a chat-completions JSON body into a :class:`ChatResult`; JudgeResponseError if malformed."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise JudgeResponseError(f"the response has no choices: {str(body)[:300]}") from None
    message = choice.get("message") or {}
    text = message.get("content")
    if text is None:
        text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    per_token: list[dict[str, float]] | None = None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(content, list) and content:
        per_token = []
        for entry in content:
            table: dict[str, float] = {}
            candidates = entry.get("top_logprobs") or []
            for cand in candidates:
                if isinstance(cand, dict) and "token" in cand and cand.get("logprob") is not None:
                    _merge_logprob(table, str(cand["token"]), float(cand["logprob"]))
            if not table and entry.get("token") is not None and entry.get("logprob") is not None:
                table[str(entry["token"])] = float(entry["logprob"])
            per_token.append(table)
    return ChatResult(text=str(text), top_logprobs=per_token)


class OpenAICompatClient:
    """Chat completions against any OpenAI-compatible server, with retries and bounded concurrency."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        max_concurrency: int = 8,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ):
        self.base_url = (base_url or _first_env(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or _first_env(ENV_API_KEY)
        self.model = model or _first_env(ENV_MODEL)
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_concurrency = max(1, int(max_concurrency))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.is_local = is_loopback_url(self.base_url)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._token_limit_field = "max_tokens"
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=self.max_concurrency,
                max_keepalive_connections=self.max_concurrency,
            ),
            trust_env=not self.is_local,  # never send loopback traffic through a proxy
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatClient(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAICompatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public calls -------------------------------------------------------------------------

    def chat(
        self,
        messages: list[dict],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> ChatResult:
        """One chat completion; retries transient failures, raises one clear error otherwise."""
        return self._chat(messages, temperature, max_tokens, logprobs, top_logprobs, None)

    def chat_many(
        self,
        conversations: list[list[dict]],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[ChatResult]:
        """Many completions at once, at most ``max_concurrency`` in flight, results in input order.

        With ``return_exceptions=True`` a request that fails for good yields its exception in
        its slot instead of raising. An unreachable endpoint stops the remaining requests early
        and is always raised, because no further request can succeed.
        """
        if not conversations:
            return []
        params = {
            "temperature": kwargs.pop("temperature", 0.0),
            "max_tokens": kwargs.pop("max_tokens", 512),
            "logprobs": kwargs.pop("logprobs", False),
            "top_logprobs": kwargs.pop("top_logprobs", 0),
        }
        if kwargs:
            raise TypeError(f"chat_many() got unexpected arguments: {', '.join(sorted(kwargs))}")
        abort = threading.Event()

        def run(messages: list[dict]) -> ChatResult | Exception:
            try:
                return self._chat(
                    messages,
                    params["temperature"],
                    params["max_tokens"],
                    params["logprobs"],
                    params["top_logprobs"],
                    abort,
                )
            except JudgeUnavailableError as exc:
                abort.set()
                return exc
            except JudgeResponseError as exc:
                return exc

        workers = min(self.max_concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="personaspace-llm") as pool:
            outcomes = list(pool.map(run, conversations))
        unavailable = [o for o in outcomes if isinstance(o, JudgeUnavailableError)]
        if unavailable:
            root = [o for o in unavailable if not getattr(o, "aborted", False)]
            raise (root or unavailable)[0]
        if not return_exceptions:
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        return outcomes  # type: ignore[return-value]

    def probe(self, timeout: float = 15.0) -> None:
        """One tiny request (a 1-token completion, no retries) to prove the endpoint, key and model work.

        Raises JudgeUnavailableError, in one line, when the configuration is incomplete, the server
        cannot be reached, or it refuses the key, the URL or the model. A server that answers but is
        busy (429, 5xx) or rejects this request's parameters counts as reachable: the real requests
        retry and adapt on their own.
        """
        self._check_configuration()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        payload = self._payload([{"role": "user", "content": "Reply with the number 0."}], 0.0, 1, False, 0)
        wait = min(self.timeout, float(timeout))
        try:
            response = self._http.post(self.endpoint, json=payload, headers=headers, timeout=wait)
        except httpx.TimeoutException:
            raise JudgeUnavailableError(
                f"the judge endpoint {self.endpoint} did not answer a 1-token test request within {wait:g} s; "
                "check that the server is running (PERSONASPACE_LLM_BASE_URL), or use --judge offline"
            ) from None
        except httpx.TransportError as exc:
            raise JudgeUnavailableError(
                f"cannot reach the judge endpoint {self.endpoint} ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                "check that the server is running and the URL ends in /v1 (PERSONASPACE_LLM_BASE_URL), or use --judge offline"
            ) from None
        status = response.status_code
        if status in (401, 403, 404):
            raise self._permanent_error(status, " ".join(_server_message(response).split()))

    # -- internals ----------------------------------------------------------------------------

    def _payload(
        self, messages: list[dict], temperature: float, max_tokens: int, logprobs: bool, top: int
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"messages": messages, "temperature": temperature}
        payload[self._token_limit_field] = int(max_tokens)
        if self.model:
            payload["model"] = self.model
        if logprobs:
            payload["logprobs"] = True
            if top:
                payload["top_logprobs"] = int(top)
        return payload

    def _check_configuration(self) -> None:
        if not self.is_local and not self.api_key:
            raise JudgeUnavailableError(
                f"no API key for {self.base_url}: set PERSONASPACE_LLM_API_KEY (or OPENAI_API_KEY), "
                "or point PERSONASPACE_LLM_BASE_URL at a local server such as "
                "http://127.0.0.1:8000/v1, or use the offline judge (--judge offline)"
            )
        if not self.is_local and not self.model:
            raise JudgeUnavailableError(
                f"no model name for {self.base_url}: pass one (e.g. --judge openai:gpt-4.1-mini) "
                "or set PERSONASPACE_LLM_MODEL"
            )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with 'equal jitter'; a server's Retry-After is honoured (capped)."""
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _chat(
        self,
        messages: list[dict],
        temperature: float,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        abort: threading.Event | None,
    ) -> ChatResult:
        self._check_configuration()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last_problem = "no attempt made"
        switched_token_field = False
        attempt = 0
        while attempt <= self.max_retries:
            if abort is not None and abort.is_set():
                exc = JudgeUnavailableError(
                    f"{self.endpoint}: stopped after another request failed"
                )
                exc.aborted = True  # type: ignore[attr-defined]
                raise exc
            payload = self._payload(messages, temperature, max_tokens, logprobs, top_logprobs)
            retry_after: float | None = None
            try:
                with self._slots:
                    response = self._http.post(self.endpoint, json=payload, headers=headers)
            except httpx.TimeoutException:
                last_problem = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last_problem = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                status = response.status_code
                if status < 300:
                    try:
                        body = response.json()
                    except ValueError:
                        last_problem = (
                            f"HTTP {status} with a body that is not JSON: {response.text[:200]!r}"
                        )
                    else:
                        return parse_chat_response(body)
                elif status in RETRYABLE_STATUS or status >= 500:
                    last_problem = f"HTTP {status}: {_server_message(response)}"
                    retry_after = _retry_after_seconds(response)
                else:
                    message = _server_message(response)
                    if (
                        status == 400
                        and not switched_token_field
                        and "max_completion_tokens" in message
                        and self._token_limit_field == "max_tokens"
                    ):
                        # Newer hosted models reject max_tokens; resend once with the new field.
                        self._token_limit_field = "max_completion_tokens"
                        switched_token_field = True
                        continue
                    raise self._permanent_error(status, message)
            if attempt == self.max_retries:
                break
            delay = self._backoff(attempt, retry_after)
            if abort is not None:
                abort.wait(delay)
            else:
                threading.Event().wait(delay)
            attempt += 1
        raise JudgeUnavailableError(
            f"the judge endpoint {self.endpoint} failed {self.max_retries + 1} times; last: "
            f"{last_problem}. Check that the server is running and the URL ends in /v1 "
            "(PERSONASPACE_LLM_BASE_URL), raise --timeout for slow models, or use --judge offline"
        )

    def _permanent_error(self, status: int, message: str) -> Exception:
        if status in (401, 403):
            return JudgeUnavailableError(
                f"{self.endpoint} refused the request (HTTP {status}): {message}. "
                "Check the API key in PERSONASPACE_LLM_API_KEY or OPENAI_API_KEY"
            )
        if status == 404:
            return JudgeUnavailableError(
                f"{self.endpoint} answered HTTP 404: {message}. Check the base URL (it usually "
                f"ends in /v1) and the model name ({self.model or 'none given'})"
            )
        return EndpointRequestError(
            f"{self.endpoint} rejected the request (HTTP {status}): {message}", status, message
        )


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
