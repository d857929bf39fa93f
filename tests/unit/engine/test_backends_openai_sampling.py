"""Bulk sampling through a real loopback OpenAI-compatible server, activations captured afterwards."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import make_tiny_llama
from reference import reference_reductions, rel_err

from personaspace._util.http import OpenAICompatClient
from personaspace.engine import Add, PersonaModel
from personaspace.engine.context import REDUCTIONS
from personaspace.engine.openai_sampling import OpenAISampler, chat_messages
from personaspace.errors import BackendError


class CannedServer:
    """``/v1/chat/completions`` answering each user message with a fixed reply (sample index appended)."""

    def __init__(self, replies: dict[str, str]):
        self.replies = replies
        self.requests: list[dict] = []
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> CannedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with server._lock:
                    server.requests.append(body)
                    k = server._count[user] = server._count.get(user, -1) + 1
                reply = f"{server.replies[user]} (take {k})"
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


REPLIES = {
    "Name a colour.": "Blue, like the sea on a calm and sunny morning",
    "Say hi.": "Hi!",
    "What is two plus two?": "Two plus two is four.",
}


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    return PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer, seed=5), tiny_tokenizer, name="tiny")


def test_sampling_in_batches_then_capture(tiny):
    prompts = list(REPLIES)
    with CannedServer(REPLIES) as server, OpenAICompatClient(server.base_url, model="served-model", max_concurrency=3) as client:
        sampler = OpenAISampler(tiny, client, request_batch=4)  # 9 rows -> batches of 4, 4, 1
        out = sampler.sample(prompts, system="Be brief.", samples_per_prompt=3, temperature=1.0, max_new_tokens=40, capture_layers=[0, 3], reductions=REDUCTIONS)
    assert len(out) == 9 and len(server.requests) == 9
    assert {r["temperature"] for r in server.requests} == {1.0} and {r["max_tokens"] for r in server.requests} == {40}
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in server.requests)
    # Prompt-major order: each prompt's samples together, in request order within a prompt.
    takes = sorted(out.texts[0:3]) == [f"{REPLIES[prompts[0]]} (take {k})" for k in range(3)]
    assert takes and all(t.startswith(REPLIES[prompts[1]]) for t in out.texts[3:6])
    assert all(g.finished for g in out)
    # Activations line up with the texts across request batches: compare with plain HF forwards.
    ref = reference_reductions(tiny.hf_model, [g.prompt_ids for g in out], [g.response_ids for g in out], [0, 3])
    for r in REDUCTIONS:
        assert rel_err(out.activations[r], ref[r]) < 1e-5, r
    assert out.generations[0].prompt_ids == tiny.prompt_ids(prompts[0], system="Be brief.")


def test_sampling_without_capture_and_truncation_flag(tiny):
    with CannedServer(REPLIES) as server, OpenAICompatClient(server.base_url, model="m") as client:
        out = OpenAISampler(tiny, client).sample(["Name a colour."], max_new_tokens=4)
    assert out.activations is None
    assert not out.generations[0].finished  # longer than max_new_tokens: the server cut it


def test_sampling_refuses_active_steering_and_token_prompts(tiny):
    with CannedServer(REPLIES) as server, OpenAICompatClient(server.base_url, model="m") as client:
        sampler = OpenAISampler(tiny, client)
        with tiny.intervene(Add(torch.ones(tiny.d_model), coef=1.0)):
            with pytest.raises(BackendError, match="unsteered"):
                sampler.sample(["Say hi."])
        assert server.requests == []
    with pytest.raises(BackendError, match="token ids"):
        chat_messages([1, 2, 3])
