"""The real `openai` client over real HTTP on 127.0.0.1, against a scripted server: every fault
returns or raises ProviderError, and nothing hangs."""

import json
import socket
import time

import pytest

from autoretrain.providers.base import ProviderError, Sampling
from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel
from autoretrain_tests.providers.scripted_http import ScriptedServer, completion

HELLO = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]


def model_for(server: ScriptedServer, **kwargs) -> OpenAICompatibleChatModel:
    kwargs.setdefault("timeout_s", 5)
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatibleChatModel("test-model", base_url=server.url + "/v1", **kwargs)


def test_request_carries_sampling_and_tools_and_native_tool_calls_come_back():
    call = {
        "id": "abc",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'},
    }
    with ScriptedServer([(200, {}, completion(None, [call], "tool_calls"))]) as server:
        reply = model_for(server).chat(
            HELLO, TOOLS, Sampling(temperature=0.5, top_p=0.9, max_tokens=7, seed=3)
        )
        sent = json.loads(server.requests[0]["body"])
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert sent["model"] == "test-model"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) == (
        0.5,
        0.9,
        7,
        3,
    )
    assert sent["tools"] == TOOLS
    assert reply.message["tool_calls"] == [call]
    assert reply.finish_reason == "tool_calls"
    assert (reply.prompt_tokens, reply.completion_tokens) == (7, 3)
    assert reply.latency_s > 0


def test_text_tool_calls_in_content_are_parsed():
    content = 'ok <tool_call>{"name": "calculator", "arguments": {"expression": "2"}}</tool_call>'
    history = [
        *HELLO,
        {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function"}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "2"},
    ]
    with ScriptedServer([(200, {}, completion(content))]) as server:
        reply = model_for(server).chat(history, TOOLS)
    assert reply.message["content"] == "ok"
    assert reply.message["tool_calls"][0]["id"] == "call_1"
    assert reply.message["tool_calls"][0]["function"]["arguments"] == '{"expression": "2"}'
    assert reply.finish_reason == "tool_calls"
    assert {"type": "tool_calls_from_text", "count": 1} in reply.notes


def test_garbage_instead_of_tool_calls_is_plain_content():
    with ScriptedServer([(200, {}, completion("}}{{ calc 2+ <tool"))]) as server:
        reply = model_for(server).chat(HELLO, TOOLS)
    assert reply.message == {"role": "assistant", "content": "}}{{ calc 2+ <tool"}
    assert reply.finish_reason == "stop"


def test_429_then_success_records_the_retry():
    replies = [
        (429, {"retry-after": "0.05"}, b'{"error": {"message": "slow down"}}'),
        (200, {}, completion("fine")),
    ]
    with ScriptedServer(replies) as server:
        reply = model_for(server).chat(HELLO)
    assert reply.message["content"] == "fine"
    assert reply.notes == [{"type": "retry", "attempt": 1, "reason": "HTTP 429", "wait_s": 0.05}]
    assert len(server.requests) == 2


def test_5xx_until_retries_run_out_raises_with_what_happened():
    replies = [(503, {}, b'{"error": {"message": "overloaded"}}')] * 3
    with ScriptedServer(replies) as server:
        with pytest.raises(ProviderError, match=r"HTTP 503 .* after 3 attempt"):
            model_for(server, max_retries=2).chat(HELLO)
        assert len(server.requests) == 3


def test_4xx_is_not_retried_and_says_why():
    with ScriptedServer([(400, {}, b'{"error": {"message": "bad tools"}}')]) as server:
        with pytest.raises(ProviderError, match="HTTP 400: bad tools"):
            model_for(server).chat(HELLO)
        assert len(server.requests) == 1


def test_endpoint_down_raises_after_retries():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAICompatibleChatModel(
        "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01
    )
    with pytest.raises(ProviderError, match="cannot connect") as info:
        model.chat(HELLO)
    assert "after 2 attempt(s)" in str(info.value)


def test_timeout_raises_instead_of_hanging():
    with ScriptedServer([("sleep", 3), ("sleep", 3)]) as server:
        t0 = time.perf_counter()
        with pytest.raises(ProviderError, match="timeout after 0.3 s"):
            model_for(server, timeout_s=0.3, max_retries=1).chat(HELLO)
        assert time.perf_counter() - t0 < 2.5


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"id": "x"}', b'{"choices": [{"index": 0}]}', b"[1, 2]"],
    ids=["not-json", "no-choices", "no-message", "not-an-object"],
)
def test_malformed_body_raises_provider_error(body):
    with (
        ScriptedServer([(200, {}, body)]) as server,
        pytest.raises(ProviderError, match="malformed"),
    ):
        model_for(server).chat(HELLO)


def test_length_finish_reason_is_passed_through():
    with ScriptedServer([(200, {}, completion("and on and on", finish_reason="length"))]) as s:
        reply = model_for(s).chat(HELLO, sampling=Sampling(max_tokens=4))
    assert reply.finish_reason == "length"


def test_chat_batch_runs_concurrently_and_keeps_order():
    def echo(path, headers, body):
        time.sleep(0.2)
        return (200, {}, completion(json.loads(body)["messages"][0]["content"]))

    with ScriptedServer([echo] * 4) as server:
        t0 = time.perf_counter()
        replies = model_for(server).chat_batch(
            [[{"role": "user", "content": str(i)}] for i in range(4)], [None] * 4
        )
        elapsed = time.perf_counter() - t0
    assert [r.message["content"] for r in replies] == ["0", "1", "2", "3"]
    assert elapsed < 0.7  # four 0.2 s calls overlapped


def test_missing_api_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    model = OpenAICompatibleChatModel(
        "m", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR"
    )
    with pytest.raises(ProviderError, match="NO_SUCH_KEY_VAR"):
        model.chat(HELLO)
