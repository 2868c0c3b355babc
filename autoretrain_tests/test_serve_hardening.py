"""`autoretrain serve` against bad and hostile clients, over real HTTP on 127.0.0.1: tool calls the
official client can always parse, no paths in /v1/models, size limits (413), a 4xx for every
client error, fairness between big and small requests, header and body deadlines."""

import json
import socket
import threading
import time

import httpx
import openai
import psutil
import pytest

from autoretrain.deploy.serving import ServingEntry, write_serving_config
from autoretrain.providers.base import ChatResponse, Sampling
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.serve import ModelPool, ServerThread, create_app, usable_reply
from autoretrain.settings import ServeSettings
from autoretrain_tests.providers.tiny_models import QUESTION, TOOLS, cached_tool_model
from autoretrain_tests.serve_bad_requests import bad_requests

LIMITS = ServeSettings(
    max_body_bytes=256 * 1024,
    max_message_bytes=64 * 1024,
    large_request_bytes=16 * 1024,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
)
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The trained tiny tool-calling model (a real tokenizer and chat template) as `primary`."""
    pool = ModelPool(static={"primary": ServingEntry(cached_tool_model(tmp_path_factory))})
    app = create_app(pool, limits=LIMITS)
    with ServerThread(app, header_timeout_s=LIMITS.header_timeout_s) as server:
        yield server


def client_for(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30)


def base(server) -> str:
    return server.url.removesuffix("/v1")


# -- tool calls a client can use ----------------------------------------------------------------


# The system prompt the chat template writes when the calculator is offered: sent as plain text
# with no `tools`, the trained model still writes its calculator call, to a function the request
# did not offer.
TOOLS_IN_SYSTEM = [
    {
        "role": "system",
        "content": "You are a careful assistant.\n\n# Tools\n<tools>\n"
        "calculator(expression): Evaluate an arithmetic expression.\n</tools>",
    },
    QUESTION[1],
]


def test_call_to_a_function_not_offered_comes_back_as_text(served):
    client = client_for(served)
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        completion = client.chat.completions.create(
            model="primary", messages=TOOLS_IN_SYSTEM, temperature=0, max_tokens=64, **extra
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.tool_calls is None
        assert choice.message.content.startswith("<tool_call>")
        assert '"name": "calculator"' in choice.message.content


def test_call_to_a_function_not_offered_comes_back_as_text_streaming(served):
    stream = client_for(served).chat.completions.create(
        model="primary", messages=TOOLS_IN_SYSTEM, temperature=0, max_tokens=64, stream=True
    )
    content, finish, calls = "", None, []
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "stop" and calls == []
    assert content.startswith("<tool_call>") and "calculator" in content


def test_offered_call_keeps_json_object_arguments(served):
    completion = client_for(served).chat.completions.create(
        model="primary", messages=QUESTION, tools=TOOLS, temperature=0
    )
    [call] = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"expression": "2 + 3"}


def _reply(*calls, content=None, finish="tool_calls"):
    message = {"role": "assistant", "content": content, "tool_calls": list(calls)}
    return ChatResponse(message, finish_reason=finish)


def _call(name, arguments, index=0):
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def test_usable_reply_keeps_only_calls_a_client_can_act_on():
    tools = [TOOLS[0]]
    ok = usable_reply(_reply(_call("calculator", {"expression": "1"})), tools)
    assert ok.message["tool_calls"][0]["function"]["arguments"] == '{"expression": "1"}'
    assert ok.finish_reason == "tool_calls"
    for arguments in ("not json {", "[1, 2]", '"a string"', "12", None):
        reply = usable_reply(_reply(_call("calculator", arguments), content="Let me see."), tools)
        assert reply.finish_reason == "stop" and "tool_calls" not in reply.message
        assert reply.message["content"].startswith("Let me see.\n<tool_call>")
    mixed = usable_reply(
        _reply(_call("calculator", '{"expression": "2"}'), _call("rm_rf", "{}", 1)), tools
    )
    assert [c["function"]["name"] for c in mixed.message["tool_calls"]] == ["calculator"]
    assert mixed.finish_reason == "tool_calls" and "rm_rf" in mixed.message["content"]
    cut = usable_reply(_reply(_call("nope", "{}"), finish="length"), tools)
    assert cut.finish_reason == "length" and "tool_calls" not in cut.message


def test_openai_client_parses_every_broken_call_a_model_can_write():
    broken = [
        {"tool_calls": [_call("calculator", "{not json")]},
        {"tool_calls": [_call("unknown_fn", '{"a": 1}')]},
        {"tool_calls": [_call("", "")]},
        {"content": "text", "tool_calls": [_call("calculator", "[]"), _call("x", "{}", 1)]},
    ]
    scripted = ScriptedModel(broken * 2, name="s")
    with ServerThread(create_app(ModelPool(static={"primary": scripted}))) as server:
        client = client_for(server)
        for stream in (False, True):
            for _ in broken:
                request = {"model": "primary", "messages": HELLO, "tools": TOOLS}
                if not stream:
                    choice = client.chat.completions.create(**request).choices[0]
                    assert choice.finish_reason == "stop" and not choice.message.tool_calls
                    assert "<tool_call>" in choice.message.content
                    continue
                chunks = list(client.chat.completions.create(**request, stream=True))
                finish = [c.choices[0].finish_reason for c in chunks if c.choices]
                assert finish[-1] == "stop"
                assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)


def test_the_projects_own_provider_reads_a_returned_call_back_with_its_note():
    """The text form is the one the model wrote, so autoretrain's own OpenAI-compatible provider
    (self-play and evaluation over HTTP) parses it back as the local provider would have."""
    from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel

    scripted = ScriptedModel([{"tool_calls": [_call("calculator", "{not json")]}], name="s")
    with ServerThread(create_app(ModelPool(static={"primary": scripted}))) as server:
        reply = OpenAICompatibleChatModel("primary", base_url=server.url).chat(HELLO, TOOLS)
    [call] = reply.message["tool_calls"]
    assert call["function"] == {"name": "calculator", "arguments": "{not json"}
    assert "tool_call_arguments_not_json" in [n["type"] for n in reply.notes]


# -- /v1/models -----------------------------------------------------------------------------------


def test_models_show_names_and_versions_never_paths(tmp_path):
    config = tmp_path / "serving.json"
    v3, v4 = tmp_path / "models" / "v3", tmp_path / "models" / "v4"
    write_serving_config(
        config,
        {
            "primary": ServingEntry(v3),
            "v3": ServingEntry(v3),
            "canary": ServingEntry(v3, v4 / "adapter"),
            "v4": ServingEntry(v3, v4 / "adapter"),
        },
    )
    with ServerThread(create_app(ModelPool(config))) as server:
        raw = httpx.get(f"{server.url}/models").text
        models = client_for(server).models.list().data
        config.write_text("{broken")
        health = httpx.get(f"{base(server)}/health").text
    assert str(tmp_path) not in raw and "/" not in raw
    assert {m.id: m.root for m in models} == {
        "canary": "v4",
        "primary": "v3",
        "v3": "v3",
        "v4": "v4",
    }
    assert str(tmp_path) not in health and "serving.json" in health


# -- a 4xx for every client error -----------------------------------------------------------------


CORPUS = bad_requests(LIMITS.max_body_bytes, LIMITS.max_message_bytes)


@pytest.mark.parametrize("kind,method,path,body,status", CORPUS, ids=[case[0] for case in CORPUS])
def test_client_errors_get_a_4xx_with_an_openai_error(served, kind, method, path, body, status):
    response = httpx.request(
        method,
        base(served) + path,
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_server_answers_after_the_corpus(served):
    reply = client_for(served).chat.completions.create(model="primary", messages=QUESTION)
    assert reply.choices[0].finish_reason in ("stop", "tool_calls")


def test_openai_client_sees_clear_errors(served):
    client = client_for(served)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        client.chat.completions.create(
            model="primary", messages=[{"role": "wizard", "content": "x"}]
        )
    with pytest.raises(openai.APIStatusError, match="limit") as caught:
        client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "x" * 70_000}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "message_too_large"
    with pytest.raises(openai.BadRequestError, match="prompt tokens") as caught:
        too_long = [{"role": "user", "content": "word " * 4000}]  # 20 KB, past 1024 tokens
        client.chat.completions.create(model="primary", messages=too_long)
    assert caught.value.body["code"] == "context_length_exceeded"


# -- size limits ---------------------------------------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024):
    piece = b"x" * size
    prefix = b'{"model": "primary", "messages": [{"role": "user", "content": "'
    yield prefix
    sent = len(prefix)
    while sent < total:
        yield piece
        sent += size


def test_body_over_the_limit_is_refused_while_reading_and_memory_stays_flat(served):
    process = psutil.Process()
    url = f"{served.url}/chat/completions"
    first = httpx.post(url, content=_chunks(16 << 20), timeout=30)  # chunked: no length given
    assert first.status_code == 413 and first.json()["error"]["code"] == "request_too_large"
    before = process.memory_info().rss
    for _ in range(10):
        assert httpx.post(url, content=_chunks(16 << 20), timeout=30).status_code == 413
    growth = process.memory_info().rss - before
    assert growth < 32 << 20, f"RSS grew {growth >> 20} MB over 10 requests of 16 MB"


def test_a_body_announced_far_too_big_is_refused_unread(served):
    with socket.create_connection((served.host, served.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer


def test_a_client_expecting_100_continue_is_refused_before_sending(served):
    with socket.create_connection((served.host, served.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMITS.max_body_bytes + 1)
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer


# -- deadlines ---------------------------------------------------------------------------------


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def test_half_sent_headers_are_dropped(served):
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert _read_all(sock) == b""  # closed, with nothing to say
        assert time.monotonic() - t0 < LIMITS.header_timeout_s + 2


def test_half_sent_headers_on_a_kept_alive_connection_are_dropped(served):
    body = json.dumps({"model": "nope", "messages": HELLO}).encode()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 404")
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - t0 < LIMITS.header_timeout_s + 2


def test_headers_over_the_limit_get_431(served):
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Junk: " + b"a" * 100_000)
        answer = _read_all(sock)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    if AutoHTTPProtocol.__name__ == "H11Protocol":  # no httptools: h11 refuses them first
        assert answer.startswith(b"HTTP/1.1 400")
    else:
        assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer


def test_a_header_flood_is_cut_off_and_memory_stays_flat(served):
    process = psutil.Process()
    before = process.memory_info().rss
    line = b"X-Junk: " + b"a" * 8000 + b"\r\n"
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 64 << 20:
                sock.sendall(line * 64)
                sent += len(line) * 64
        except OSError:
            pass  # closed on us, as it should be
    assert sent < 16 << 20, f"{sent >> 20} MB of headers accepted"
    assert process.memory_info().rss - before < 16 << 20


def test_a_slow_body_gets_408_at_its_deadline(served):
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        t0 = time.monotonic()
        # A byte now and then keeps the connection busy, but the deadline is for the whole body.
        for _ in range(8):
            time.sleep(0.2)
            try:
                sock.sendall(b" ")
            except OSError:
                break
        answer = _read_all(sock)
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer and b"connection: close" in answer.lower()
    assert elapsed < LIMITS.body_timeout_s + 2


# -- fairness ----------------------------------------------------------------------------------


class CostsBySize:
    """A model whose answer takes long for a big prompt: 3 s above 16 KB, 10 ms otherwise."""

    name = "sized"

    def chat(self, messages, tools=None, sampling=Sampling()):
        return self.chat_batch([messages], [tools], sampling)[0]

    def chat_batch(self, conversations, tools, sampling=Sampling()):
        size = max(len(json.dumps(c)) for c in conversations)
        time.sleep(3.0 if size > 16 * 1024 else 0.01)
        return [ChatResponse({"role": "assistant", "content": "ok"}) for _ in conversations]


def test_a_big_request_does_not_hold_up_small_ones():
    app = create_app(ModelPool(static={"primary": CostsBySize()}), limits=LIMITS)
    with ServerThread(app) as server:
        client = client_for(server)
        big_messages = [{"role": "user", "content": "x" * 40_000}]
        big = threading.Thread(
            target=client.chat.completions.create,
            kwargs={"model": "primary", "messages": big_messages},
        )
        big.start()
        time.sleep(0.3)  # the big one is being answered
        latencies = []
        for _ in range(3):
            t0 = time.perf_counter()
            client.chat.completions.create(model="primary", messages=HELLO)
            latencies.append(time.perf_counter() - t0)
        big.join()
    # Held behind the big one (one lane), each would wait the ~2.7 s it has left.
    assert max(latencies) < 1.5, latencies


def test_a_prompt_past_the_token_cap_never_reaches_the_model(tmp_path_factory):
    model_dir = cached_tool_model(tmp_path_factory)
    limits = LIMITS.model_copy(update={"max_prompt_tokens": 40})
    pool = ModelPool(static={"primary": ServingEntry(model_dir)})
    with ServerThread(create_app(pool, limits=limits)) as server:
        client = client_for(server)
        with pytest.raises(openai.BadRequestError, match="at most 40 prompt tokens"):
            client.chat.completions.create(model="primary", messages=QUESTION, tools=TOOLS)
        # Four messages near the message limit: only the first ~1.8 KB are tokenized to refuse.
        big = [{"role": "user", "content": "y " * 30_000} for _ in range(4)]
        t0 = time.perf_counter()
        with pytest.raises(openai.BadRequestError, match="more than"):
            client.chat.completions.create(model="primary", messages=big)
        assert time.perf_counter() - t0 < 3.0
        ok = client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "2+3"}], max_tokens=4
        )
        assert ok.usage.prompt_tokens <= 40
