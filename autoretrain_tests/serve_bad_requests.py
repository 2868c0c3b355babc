"""Malformed chat completion requests, each a client error `autoretrain serve` must answer with a
4xx and an OpenAI-shaped error body (never a 5xx): used by test_serve_hardening and by
bench/hardening_serve.py, which counts the 5xx answers over the same corpus.

Each case is (kind, method, path, body bytes, expected status). The bodies are written as raw
JSON text where Python's json could not produce them (lone surrogates, NaN, broken syntax).
"""

from __future__ import annotations

import json
from typing import Any

HELLO = [{"role": "user", "content": "What is 2 + 3?"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
CHAT = "/v1/chat/completions"


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "primary", "messages": HELLO, **fields}).encode()


def _messages(*messages: Any) -> bytes:
    return _body(messages=list(messages))


def _assistant_calls(calls: Any) -> bytes:
    return _messages(HELLO[0], {"role": "assistant", "content": None, "tool_calls": calls})


def _raw_content(json_text: str) -> bytes:
    """A user message whose content is the given raw JSON text."""
    head = '{"model": "primary", "messages": [{"role": "user", "content": '
    return (head + json_text + "}]}").encode()


def bad_requests(
    max_body_bytes: int, max_message_bytes: int
) -> list[tuple[str, str, str, bytes, int]]:
    """The corpus, for a server with these limits (its model `primary` is served)."""
    cases: list[tuple[str, bytes, int]] = [
        # -- not JSON, or not an object
        ("empty body", b"", 400),
        ("broken JSON", b"{nope", 400),
        ("truncated JSON", b'{"model": "primary", "messages": [', 400),
        ("invalid UTF-8", b'{"model": "\xff\xfe"}', 400),
        ("UTF-16 body", json.dumps({"messages": HELLO}).encode("utf-16"), 400),
        ("JSON array", b"[]", 400),
        ("JSON null", b"null", 400),
        ("JSON number", b"42", 400),
        ("JSON string", b'"hello"', 400),
        ("nesting 100k deep", b"[" * 100_000 + b"]" * 100_000, 400),
        ("nesting 100k deep in content", _raw_content("[" * 100_000 + "]" * 100_000), 400),
        ("integer of 5000 digits", _raw_content("1" * 5000), 400),
        # -- model
        ("model a number", _body(model=5), 400),
        ("model a list", _body(model=["primary"]), 400),
        ("model not served", _body(model="gpt-99"), 404),
        # -- messages
        ("messages missing", json.dumps({"model": "primary"}).encode(), 400),
        ("messages empty", _body(messages=[]), 400),
        ("messages a string", _body(messages="hi"), 400),
        ("messages an object", _body(messages={"role": "user", "content": "hi"}), 400),
        ("message a number", _messages(1), 400),
        ("message null", _messages(None), 400),
        ("message without role", _messages({"content": "hi"}), 400),
        ("role a number", _messages({"role": 5, "content": "hi"}), 400),
        ("role unknown", _messages({"role": "wizard", "content": "hi"}), 400),
        ("role function (legacy)", _messages({"role": "function", "content": "hi"}), 400),
        ("role empty", _messages({"role": "", "content": "hi"}), 400),
        ("user message without content", _messages({"role": "user"}), 400),
        ("content an int", _messages({"role": "user", "content": 5}), 400),
        ("content a float", _messages({"role": "user", "content": 2.5}), 400),
        ("content a dict", _messages({"role": "user", "content": {"text": "hi"}}), 400),
        ("content true", _messages({"role": "user", "content": True}), 400),
        ("content part a number", _messages({"role": "user", "content": [1]}), 400),
        ("content part without type", _messages({"role": "user", "content": [{"text": "x"}]}), 400),
        ("text part without text", _messages({"role": "user", "content": [{"type": "text"}]}), 400),
        (
            "text part text an int",
            _messages({"role": "user", "content": [{"type": "text", "text": 5}]}),
            400,
        ),
        ("system content a list of ints", _messages({"role": "system", "content": [1, 2]}), 400),
        ("tool message without content", _messages(HELLO[0], {"role": "tool"}), 400),
        (
            "tool_call_id a number",
            _messages(HELLO[0], {"role": "tool", "tool_call_id": 5, "content": "5"}),
            400,
        ),
        ("name a number", _messages({"role": "user", "content": "hi", "name": 7}), 400),
        # -- lone surrogates (valid JSON escapes, not valid Unicode)
        ("lone high surrogate in content", _raw_content('"abc \\ud800 def"'), 400),
        ("lone low surrogate in content", _raw_content('"\\udfff"'), 400),
        ("surrogate at the end of content", _raw_content('"abc\\ud83d"'), 400),
        ("surrogate in a text part", _raw_content('[{"type": "text", "text": "\\ud800"}]'), 400),
        (
            "surrogate in the role",
            b'{"model": "primary", "messages": [{"role": "us\\ud800er", "content": "x"}]}',
            400,
        ),
        ("surrogate in a key", b'{"model": "primary", "\\ud800": 1, "messages": []}', 400),
        ("surrogate in the model", b'{"model": "\\ud800", "messages": []}', 400),
        (
            "surrogate in a tool name",
            b'{"model": "primary", "messages": [{"role": "user", "content": "x"}], '
            b'"tools": [{"type": "function", "function": {"name": "\\udc00"}}]}',
            400,
        ),
        # -- tool calls in the history
        ("tool_calls a string", _assistant_calls("garbage"), 400),
        ("tool_calls an object", _assistant_calls({"id": "call_0"}), 400),
        ("tool call a number", _assistant_calls([1]), 400),
        ("tool call without function", _assistant_calls([{"id": "call_0"}]), 400),
        ("tool call function a string", _assistant_calls([{"function": "calculator"}]), 400),
        ("tool call name a number", _assistant_calls([{"function": {"name": 5}}]), 400),
        (
            "tool call arguments an object",
            _assistant_calls([{"function": {"name": "calculator", "arguments": {"a": 1}}}]),
            400,
        ),
        (
            "tool call arguments missing",
            _assistant_calls([{"id": "call_0", "function": {"name": "calculator"}}]),
            400,
        ),
        (
            "tool call type not function",
            _assistant_calls(
                [{"type": "code", "function": {"name": "calculator", "arguments": "{}"}}]
            ),
            400,
        ),
        (
            "tool call id a number",
            _assistant_calls([{"id": 3, "function": {"name": "calculator", "arguments": "{}"}}]),
            400,
        ),
        (
            "tool calls on a user message",
            _messages({"role": "user", "content": "x", "tool_calls": []}),
            400,
        ),
        # -- tools and tool_choice
        ("tools a string", _body(tools="calculator"), 400),
        ("tools an object", _body(tools=TOOL), 400),
        ("tool a number", _body(tools=[1]), 400),
        ("tool without function", _body(tools=[{"type": "function"}]), 400),
        ("tool name a number", _body(tools=[{"type": "function", "function": {"name": 3}}]), 400),
        (
            "tool parameters a string",
            _body(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
            400,
        ),
        ("tool type not function", _body(tools=[{**TOOL, "type": "retrieval"}]), 400),
        ("tool_choice a number", _body(tools=[TOOL], tool_choice=5), 400),
        ("tool_choice unknown", _body(tools=[TOOL], tool_choice="sometimes"), 400),
        ("tool_choice function a string", _body(tools=[TOOL], tool_choice={"function": "f"}), 400),
        # -- sampling and options of the wrong type or range
        ("temperature a string", _body(temperature="hot"), 400),
        ("temperature 9", _body(temperature=9), 400),
        ("temperature negative", _body(temperature=-1), 400),
        ("temperature true", _body(temperature=True), 400),
        ("temperature NaN", b'{"model": "primary", "messages": [], "temperature": NaN}', 400),
        ("top_p 2", _body(top_p=2), 400),
        ("top_p Infinity", _body(top_p=float("inf")), 400),
        ("max_tokens 0", _body(max_tokens=0), 400),
        ("max_tokens negative", _body(max_tokens=-5), 400),
        ("max_tokens a float", _body(max_tokens=1.5), 400),
        ("max_tokens a string", _body(max_tokens="10"), 400),
        ("max_tokens 10**30", _body(max_tokens=10**30), 400),
        ("max_completion_tokens a list", _body(max_completion_tokens=[1]), 400),
        ("seed a string", _body(seed="x"), 400),
        ("seed a float", _body(seed=1.5), 400),
        ("seed 2**70", _body(seed=2**70), 400),
        ("n 2", _body(n=2), 400),
        ("n a string", _body(n="1"), 400),
        ("stream a string", _body(stream="yes"), 400),
        ("stream_options a string", _body(stream=True, stream_options="x"), 400),
        (
            "include_usage a string",
            _body(stream=True, stream_options={"include_usage": "yes"}),
            400,
        ),
        # -- sizes
        ("body over the limit", _body(padding="x" * (max_body_bytes + 1)), 413),
        (
            "message over the limit",
            _messages({"role": "user", "content": "x" * (max_message_bytes + 1)}),
            413,
        ),
        (
            "tool arguments over the message limit",
            _assistant_calls(
                [{"function": {"name": "f", "arguments": '"' + "x" * max_message_bytes + '"'}}]
            ),
            413,
        ),
    ]
    out = [(kind, "POST", CHAT, body, status) for kind, body, status in cases]
    out += [
        ("GET on chat completions", "GET", CHAT, b"", 405),
        ("POST on models", "POST", "/v1/models", b"{}", 405),
        ("unknown path", "POST", "/v1/completions", _body(), 404),
    ]
    return out
