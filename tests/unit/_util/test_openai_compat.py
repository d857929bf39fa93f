"""The OpenAI-compatible client against a real HTTP server on loopback."""

from __future__ import annotations

import json
import math
import time

import pytest
from chat_server import ChatServer, free_port

from personaspace._util.http import (
    ChatResult,
    EndpointRequestError,
    OpenAICompatClient,
    is_loopback_url,
    parse_chat_response,
)
from personaspace.errors import JudgeResponseError, JudgeUnavailableError

CASES = {
    "hello": {"": {"Hello": 0.7, "Hi": 0.3}, "Hello": {" there": 0.9, "!": 0.1}},
    "score": {"": {"85": 0.6, "90": 0.3, "80": 0.1}},
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def fast_client(url: str, **kwargs) -> OpenAICompatClient:
    kwargs.setdefault("max_retries", 3)
    return OpenAICompatClient(
        base_url=url, model="test-model", backoff_base=0.01, backoff_max=0.05, **kwargs
    )


def test_chat_returns_text_and_per_token_top_logprobs():
    with ChatServer(CASES) as server, fast_client(server.base_url) as client:
        result = client.chat(user("case=hello"), max_tokens=5, logprobs=True, top_logprobs=2)
        assert result.text == "Hello there"
        assert result.top_logprobs is not None and len(result.top_logprobs) == 2
        assert result.top_logprobs[0] == pytest.approx(
            {"Hello": math.log(0.7), "Hi": math.log(0.3)}
        )
        sent = server.requests[0]
        assert sent["model"] == "test-model" and sent["temperature"] == 0.0
        assert sent["max_tokens"] == 5 and sent["logprobs"] is True and sent["top_logprobs"] == 2
        plain = client.chat(user("case=hello"), max_tokens=1)
        assert plain == ChatResult(text="Hello", top_logprobs=None)
        assert "logprobs" not in server.requests[1]


def test_environment_supplies_defaults_and_no_key_is_needed_on_loopback(monkeypatch):
    for name in (
        "PERSONASPACE_LLM_BASE_URL",
        "OPENAI_BASE_URL",
        "PERSONASPACE_LLM_API_KEY",
        "OPENAI_API_KEY",
        "PERSONASPACE_LLM_MODEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("PERSONASPACE_LLM_MODEL", "env-model")
    client = OpenAICompatClient()
    assert client.base_url == "http://127.0.0.1:9/v1" and client.model == "env-model"
    assert client.api_key is None and client.is_local
    monkeypatch.setenv("PERSONASPACE_LLM_BASE_URL", "http://localhost:8000/v1")
    assert OpenAICompatClient().base_url == "http://localhost:8000/v1"
    with ChatServer(CASES) as server:
        monkeypatch.setenv("PERSONASPACE_LLM_BASE_URL", server.base_url)
        with OpenAICompatClient() as client:
            assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        assert "authorization" not in server.headers[0]


def test_api_key_is_sent_and_a_wrong_key_fails_at_once_with_advice():
    with ChatServer(CASES, require_key="sk-right") as server:
        with fast_client(server.base_url, api_key="sk-right") as client:
            assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        with fast_client(server.base_url, api_key="sk-wrong") as client:
            with pytest.raises(
                JudgeUnavailableError, match="HTTP 401.*Incorrect API key.*OPENAI_API_KEY"
            ):
                client.chat(user("case=hello"))
        assert len(server.requests) == 2  # 401 is not retried
        assert "sk-wrong" not in repr(client)


def test_remote_endpoint_without_key_fails_before_any_request(monkeypatch):
    for name in ("PERSONASPACE_LLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    client = OpenAICompatClient(
        base_url="https://api.example.invalid/v1", model="m"
    )  # no error yet
    assert not client.is_local
    with pytest.raises(JudgeUnavailableError, match="no API key.*PERSONASPACE_LLM_API_KEY"):
        client.chat(user("hi"))


def test_loopback_detection():
    assert is_loopback_url("http://127.0.0.1:8000/v1")
    assert is_loopback_url("http://127.3.4.5/v1")
    assert is_loopback_url("http://localhost:11434/v1")
    assert is_loopback_url("http://[::1]:8000/v1")
    assert not is_loopback_url("https://api.openai.com/v1")
    assert not is_loopback_url("http://10.0.0.5:8000/v1")


def test_server_errors_are_retried_until_success():
    with ChatServer(CASES) as server, fast_client(server.base_url) as client:
        server.fail_next((500, "upstream crashed"), (503, json.dumps({"error": "overloaded"})))
        assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        assert len(server.requests) == 3


def test_rate_limit_honours_retry_after():
    with ChatServer(CASES) as server, fast_client(server.base_url) as client:
        server.fail_next(
            (429, json.dumps({"error": {"message": "slow down"}}), {"Retry-After": "0.3"})
        )
        start = time.monotonic()
        assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        assert time.monotonic() - start >= 0.05  # waited (capped by backoff_max=0.05)
        assert len(server.requests) == 2


def test_persistent_server_errors_end_in_one_clear_error():
    with ChatServer(CASES) as server, fast_client(server.base_url, max_retries=2) as client:
        server.fail_next(*[(502, "bad gateway")] * 3)
        with pytest.raises(JudgeUnavailableError) as info:
            client.chat(user("case=hello"))
        assert len(server.requests) == 3
        message = str(info.value)
        assert (
            server.base_url in message
            and "HTTP 502" in message
            and "(details: personaspace explain judge-unavailable)" in message
        )


def test_client_errors_are_not_retried_and_carry_the_server_message():
    with ChatServer(CASES) as server, fast_client(server.base_url) as client:
        server.fail_next((400, json.dumps({"error": {"message": "messages must not be empty"}})))
        with pytest.raises(EndpointRequestError) as info:
            client.chat(user("case=hello"))
        assert isinstance(info.value, JudgeResponseError)
        assert info.value.status_code == 400 and "messages must not be empty" in str(info.value)
        assert len(server.requests) == 1


def test_wrong_path_gives_advice_about_the_base_url():
    with ChatServer(CASES) as server:
        with fast_client(server.base_url.removesuffix("/v1")) as client:
            with pytest.raises(JudgeUnavailableError, match="HTTP 404.*ends in /v1"):
                client.chat(user("case=hello"))


def test_server_down_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with fast_client(url, max_retries=1) as client:
        with pytest.raises(JudgeUnavailableError) as info:
            client.chat(user("hi"))
    assert url in str(info.value) and "connection failed" in str(info.value)


def test_timeout_is_retried_then_reported():
    with (
        ChatServer(CASES, delay=0.5) as server,
        fast_client(server.base_url, timeout=0.1, max_retries=1) as client,
    ):
        with pytest.raises(JudgeUnavailableError, match="timed out after 0.1 s"):
            client.chat(user("case=hello"))
        assert len(server.requests) == 2


def test_max_completion_tokens_is_used_when_the_server_asks_for_it():
    with ChatServer(CASES) as server, fast_client(server.base_url) as client:
        server.reject = lambda body: (
            (400, "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead.")
            if "max_tokens" in body
            else None
        )
        assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        assert client.chat(user("case=hello"), max_tokens=1).text == "Hello"
        assert [("max_tokens" in r, "max_completion_tokens" in r) for r in server.requests] == [
            (True, False),
            (False, True),
            (False, True),
        ]


def test_chat_many_keeps_order_and_bounds_concurrency():
    cases = {f"c{i}": {"": {f"answer{i}": 1.0}} for i in range(12)}
    with (
        ChatServer(cases, delay=0.1) as server,
        fast_client(server.base_url, max_concurrency=3) as client,
    ):
        results = client.chat_many([user(f"case=c{i}") for i in range(12)], max_tokens=1)
        assert [r.text for r in results] == [f"answer{i}" for i in range(12)]
        assert 2 <= server.max_in_flight <= 3


def test_chat_many_can_return_per_request_errors():
    with ChatServer(CASES) as server, fast_client(server.base_url, max_concurrency=1) as client:
        server.fail_next((422, json.dumps({"detail": "prompt too long"})))
        results = client.chat_many(
            [user("case=hello"), user("case=score")], max_tokens=1, return_exceptions=True
        )
        assert isinstance(results[0], EndpointRequestError) and "prompt too long" in str(results[0])
        assert results[1].text == "85"
        server.fail_next((422, json.dumps({"detail": "prompt too long"})))
        with pytest.raises(EndpointRequestError):
            client.chat_many([user("case=hello")], max_tokens=1)
        with pytest.raises(TypeError, match="tempreature"):
            client.chat_many([user("x")], tempreature=0.5)


def test_chat_many_stops_early_when_the_endpoint_is_down():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = OpenAICompatClient(
        base_url=url, model="m", max_retries=3, backoff_base=0.2, backoff_max=0.2, max_concurrency=2
    )
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="connection failed"):
        client.chat_many([user("hi")] * 20)
    assert time.monotonic() - start < 5.0  # 20 x 4 attempts x 0.2 s would take far longer


def test_parse_chat_response_shapes():
    body = {
        "choices": [
            {
                "message": {"content": None},
                "logprobs": {
                    "content": [
                        {
                            "token": "8",
                            "logprob": -0.1,
                            "top_logprobs": [
                                {"token": "8", "logprob": -0.1},
                                {"token": " 8", "logprob": -3.0},
                                {"token": "8", "logprob": -2.0},
                            ],
                        },
                        {"token": "5", "logprob": -0.2, "top_logprobs": []},
                    ]
                },
            }
        ]
    }
    result = parse_chat_response(body)
    assert result.text == ""
    assert result.top_logprobs[0]["8"] == pytest.approx(math.log(math.exp(-0.1) + math.exp(-2.0)))
    assert result.top_logprobs[1] == {"5": -0.2}  # no alternatives: the chosen token alone
    assert parse_chat_response({"choices": [{"text": "42"}]}).text == "42"
    with pytest.raises(JudgeResponseError, match="no choices"):
        parse_chat_response({"error": "oops"})
