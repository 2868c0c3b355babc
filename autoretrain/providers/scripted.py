"""A deterministic chat model that replays scripted replies.

For unit tests of control flow only (the workflow, the verifier's rubric path, the guard's
reviewer): it lets a test say "first reply with this malformed tool call, then with this answer".
Real providers live beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autoretrain.providers.base import ChatResponse, Messages, Sampling, SequentialBatchMixin, Tools

Reply = dict[str, Any] | str | Exception | Callable[[Messages, Tools | None], Any]


class ScriptedModel(SequentialBatchMixin):
    """Replies in order from `script`. A str is an answer; a dict is a whole assistant message;
    an Exception is raised (an endpoint failure); a callable computes the reply from the
    conversation. When the script runs out, `default` is repeated (or ProviderError-like
    IndexError is raised when there is none)."""

    def __init__(self, script: list[Reply], name: str = "scripted", default: Reply | None = None):
        self.name = name
        self.script = list(script)
        self.default = default
        self.calls: list[Messages] = []

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse:
        self.calls.append([dict(m) for m in messages])
        t0 = time.perf_counter()
        if self.script:
            reply = self.script.pop(0)
        elif self.default is not None:
            reply = self.default
        else:
            raise IndexError(f"{self.name}: script exhausted after {len(self.calls) - 1} replies")
        if callable(reply) and not isinstance(reply, Exception):
            reply = reply(messages, tools)
        if isinstance(reply, Exception):
            raise reply
        message = {"role": "assistant", "content": reply} if isinstance(reply, str) else dict(reply)
        message.setdefault("role", "assistant")
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion_tokens = len(str(message.get("content") or "").split()) + 4 * len(
            message.get("tool_calls") or []
        )
        return ChatResponse(
            message=message,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.perf_counter() - t0,
            finish_reason="tool_calls" if message.get("tool_calls") else "stop",
            model=self.name,
        )
