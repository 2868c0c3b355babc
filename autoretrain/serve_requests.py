"""What `autoretrain serve` accepts as a chat completion request, checked before any model sees it.

Every problem found here is the client's: a `RequestError` with a 4xx status, a message that
names the field (`messages[2].tool_calls[0].function.arguments: ...`) and OpenAI's `param`, so
the official client raises `BadRequestError` (or 413/404) and nothing reaches a model that would
fail on it later with a 500. Fields the server does not use (`user`, `stop`, `metadata`, ...)
are ignored, as most OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autoretrain.providers.base import Messages, Sampling, Tools

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("none", "auto", "required")
DEFAULT_MAX_TOKENS = 512


class RequestError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def bad(where: str, problem: str, code: str | None = None) -> RequestError:
    return RequestError(400, f"{where}: {problem}", code, where)


@dataclass
class ChatRequest:
    model: str
    messages: Messages
    tools: Tools | None
    sampling: Sampling
    stream: bool
    include_usage: bool


def decode_json(raw: bytes) -> Any:
    """The body as JSON, or a 400 saying why not (bad UTF-8, syntax, nesting too deep). JSON
    on the wire is UTF-8 (RFC 8259), so other encodings json.loads would guess are refused; a
    UTF-8 byte order mark is tolerated."""
    try:
        return json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, f"the request body is not JSON: {exc}") from None


def parse_chat_request(
    body: Any, served: list[str], default: str | None, max_message_bytes: int
) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    _no_lone_surrogates(body)
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise bad("model", "must be a string")
    name = name or default
    if name is None:
        raise RequestError(400, f"say which model: one of {served}", param="model")
    if name not in served:
        raise RequestError(
            404, f"model {name!r} is not served; served: {served}", "model_not_found", "model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]", max_message_bytes)
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is not None and choice not in TOOL_CHOICES:
        function = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(
                "tool_choice", f'must be one of {TOOL_CHOICES} or {{"function": {{"name": ...}}}}'
            )
    if choice == "none":
        tools = None
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise bad("n", "only n=1 is supported")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "must be an object")
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise bad("stream_options.include_usage", "must be true or false")
    tokens_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=_number(body, tokens_key, DEFAULT_MAX_TOKENS, 1, 1 << 20, integer=True),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True),
    )
    return ChatRequest(name, messages, tools, sampling, bool(stream), bool(include_usage))


def _number(
    body: dict, key: str, default: Any, low: float, high: float, integer: bool = False
) -> Any:
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise bad(key, f"must be {kind} in [{low}, {high}]")
    return value


def _check_message(message: Any, where: str, max_bytes: int) -> None:
    if not isinstance(message, dict):
        raise bad(where, "must be an object with a role")
    role = message.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role", f"{role!r} is not one of {list(ROLES)}")
    content = message.get("content")
    size = 0
    if content is None:
        if role != "assistant":
            raise bad(f"{where}.content", f"a {role} message needs content")
    elif isinstance(content, str):
        size += _utf8_size(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            size += _check_part(part, f"{where}.content[{j}]")
    else:
        raise bad(f"{where}.content", "must be a string or a list of content parts")
    for key in ("name", "tool_call_id"):
        if key in message and not isinstance(message[key], str):
            raise bad(f"{where}.{key}", "must be a string")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise bad(f"{where}.tool_calls", "only assistant messages carry tool calls")
        if not isinstance(calls, list):
            raise bad(f"{where}.tool_calls", "must be a list")
        for j, call in enumerate(calls):
            size += _check_call(call, f"{where}.tool_calls[{j}]")
    if size > max_bytes:
        raise RequestError(
            413,
            f"{where}: {size} bytes of content, above the server's limit of {max_bytes} per "
            f"message",
            "message_too_large",
            where,
        )


def _check_part(part: Any, where: str) -> int:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad(where, 'must be an object with a "type"')
    if part["type"] != "text":
        return 0  # an image or audio part: these models read text only, and it is left out
    if not isinstance(part.get("text"), str):
        raise bad(f"{where}.text", "must be a string")
    return _utf8_size(part["text"])


def _check_call(call: Any, where: str) -> int:
    if not isinstance(call, dict):
        raise bad(where, "must be an object")
    if "id" in call and not isinstance(call["id"], str):
        raise bad(f"{where}.id", "must be a string")
    if call.get("type", "function") != "function":
        raise bad(f"{where}.type", 'must be "function"')
    function = call.get("function")
    if not isinstance(function, dict):
        raise bad(f"{where}.function", 'must be an object with "name" and "arguments"')
    if not isinstance(function.get("name"), str):
        raise bad(f"{where}.function.name", "must be a string")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        raise bad(f"{where}.function.arguments", "must be a JSON string (as OpenAI sends it)")
    return _utf8_size(arguments) + _utf8_size(function["name"])


def _tools(tools: Any) -> Tools | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad("tools", "must be a list")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise bad(where, 'must be {"type": "function", "function": {...}}')
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}.function", 'must be an object with a string "name"')
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise bad(f"{where}.function.parameters", "must be a JSON Schema object")
        if "description" in function and not isinstance(function["description"], str):
            raise bad(f"{where}.function.description", "must be a string")
    return tools or None


def offered_names(tools: Tools | None) -> set[str]:
    return {tool["function"]["name"] for tool in tools or []}


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _no_lone_surrogates(body: Any) -> None:
    """JSON may escape half a UTF-16 pair (`"\\ud800"`); Python then holds a string no encoder,
    tokenizer or database takes. Walked without recursion: json.loads already bounds the depth,
    but the walk must not add to it."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            _valid_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _valid_text(key, where or "(a key)")
                stack.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _valid_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad(
            where or "body", f"holds a lone surrogate ({text[exc.start]!r}), not valid Unicode"
        ) from None
