"""A tiny deterministic OpenAI-compatible upstream for the gateway's tests and benchmark.

`POST /v1/chat/completions`, streaming or not:
- tools offered and the last message from the user: one tool call to the first tool, with
  `{"text": <the user's message>}` as arguments;
- otherwise the answer `<model>: <the last message's content>`;
- usage: characters / 4 (at least 1) for the prompt and the reply.

It is told to fail by the model name: `fail-500` answers 500 with an OpenAI error body,
`fail-html` answers 503 with a body that is not JSON, `die-mid-stream` sends two chunks of a
stream and then drops the connection. `delay_s` makes every answer that late (a model's time).
Every request body and its headers are kept in `requests` (until `keep_requests` is off).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def answer(body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """The reply's content and tool calls for a request body."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    tools = body.get("tools") or []
    if tools and last.get("role") == "user":
        name = tools[0]["function"]["name"]
        # Unique, as OpenAI's are: two conversations differ from their first tool call on.
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        arguments = json.dumps({"text": content})
        return None, [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
    return f"{body.get('model')}: {content}", []


class Upstream:
    def __init__(self, delay_s: float = 0.0, keep_requests: bool = True):
        self.delay_s = delay_s
        self.keep_requests = keep_requests
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.keep_requests:
            with self._lock:
                self.requests.append({"body": body, "headers": dict(request.headers)})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        model = body.get("model")
        if model == "fail-500":
            error = {"message": "the model crashed", "type": "server_error", "code": "boom"}
            return JSONResponse({"error": error}, status_code=500)
        if model == "fail-html":
            return Response("<html>bad gateway</html>", status_code=503, media_type="text/html")
        content, calls = answer(body)
        prompt = _tokens(json.dumps(body.get("messages")))
        completion = _tokens(content or json.dumps(calls))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        finish = "tool_calls" if calls else "stop"
        base = {"id": "chatcmpl-test", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        include_usage = (body.get("stream_options") or {}).get("include_usage")

        def event(delta: dict | None, finish_reason: str | None = None, **extra: Any) -> bytes:
            choices = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            )
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        async def events():
            yield event({"role": "assistant", "content": ""})
            words = (content or "").split(" ")
            for i, word in enumerate(words if content else []):
                yield event({"content": word if i == 0 else " " + word})
                if model == "die-mid-stream" and i == 1:
                    raise ConnectionError("the upstream died mid-stream")
            for index, call in enumerate(calls):
                head = {"index": index, "id": call["id"], "type": "function"}
                yield event(
                    {
                        "tool_calls": [
                            {
                                **head,
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                for part in (arguments[:half], arguments[half:]):
                    yield event({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            yield event({}, finish)
            if include_usage:
                yield event(None, usage=usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
