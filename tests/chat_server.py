"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions JSON, for tests.

It plays a tiny scripted language model: a "case" named in the prompt (``case=NAME``) selects a
table ``prefix -> {token: probability}``; the server generates greedily up to ``max_tokens``
and reports ``logprobs.content[i].top_logprobs`` like the real API. Failures can be injected
per request (status codes, non-JSON bodies, delays) and every request is recorded.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

END = "<|end|>"
_CASE = re.compile(r"case=(\w+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChatServer:
    """Start with ``with ChatServer(cases) as server: ... server.base_url ...``."""

    def __init__(
        self,
        cases: dict[str, dict[str, dict[str, float]]],
        *,
        logprobs_supported: bool = True,
        delay: float = 0.0,
        require_key: str | None = None,
    ):
        self.cases = cases
        self.logprobs_supported = logprobs_supported
        self.delay = delay
        self.require_key = require_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures: list[Callable[[dict], tuple[int, str, dict] | None] | tuple] = []
        self.reject: Callable[[dict], tuple[int, str] | None] | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- behaviour --------------------------------------------------------------------------
    def fail_next(self, *responses: tuple[int, str] | tuple[int, str, dict]) -> None:
        """Answer the next requests with these (status, body[, headers]) before behaving."""
        with self._lock:
            self.failures.extend(responses)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failure = self.failures.pop(0) if self.failures else None
        try:
            reply = self._reply(handler, body, failure)
        finally:
            # Count the request as finished before the client can read the reply and send the next
            # one, so max_in_flight measures the client's concurrency, not this server's timing.
            with self._lock:
                self.in_flight -= 1
        self._send(handler, *reply)

    def _reply(self, handler: BaseHTTPRequestHandler, body: dict, failure) -> tuple[int, str, dict]:
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            status, text, *extra = failure
            return status, text, extra[0] if extra else {}
        if self.require_key and handler.headers.get("Authorization") != f"Bearer {self.require_key}":
            return 401, json.dumps({"error": {"message": "Incorrect API key provided"}}), {}
        if handler.path != "/v1/chat/completions":
            return 404, json.dumps({"error": {"message": f"no route {handler.path}"}}), {}
        if self.reject is not None:
            rejected = self.reject(body)
            if rejected is not None:
                return rejected[0], json.dumps({"error": {"message": rejected[1]}}), {}
        return 200, json.dumps(self.complete(body)), {}

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, text: str, headers: dict | None = None
    ) -> None:
        data = text.encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def complete(self, body: dict) -> dict:
        """Greedy generation from the scripted case, formatted as a chat completion."""
        prompt = body["messages"][-1]["content"]
        found = _CASE.search(prompt)
        table = self.cases[found.group(1)] if found else {}
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        text, content = "", []
        for _ in range(limit):
            dist = table.get(text, {END: 1.0})
            ranked = sorted(dist.items(), key=lambda kv: -kv[1])
            token = ranked[0][0]
            if token == END:
                break
            n_top = int(body.get("top_logprobs") or 0)
            content.append(
                {
                    "token": token,
                    "logprob": math.log(ranked[0][1]),
                    "top_logprobs": [
                        {"token": t, "logprob": math.log(p)} for t, p in ranked[:n_top] if t != END
                    ],
                }
            )
            text += token
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and self.logprobs_supported:
            choice["logprobs"] = {"content": content}
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [choice],
        }
