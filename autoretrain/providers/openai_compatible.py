"""Chat models behind an OpenAI-compatible endpoint: LM Studio, vLLM, OpenAI, `autoretrain serve`.

The `openai` client does the HTTP; this module owns retries (so each one is recorded on the run,
in `ChatResponse.notes`), turns every failure into a `ProviderError` that says what happened, and
reads tool calls both natively (`tool_calls`) and from text (`<tool_call>{...}</tool_call>` in the
content, for models served without a tool parser).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from autoretrain.providers.base import ChatResponse, Messages, ProviderError, Sampling, Tools
from autoretrain.providers.toolcalls import OPEN_TAG, next_call_index, parse_tool_calls

log = logging.getLogger(__name__)

LM_STUDIO_URL = "http://localhost:1234/v1"
# Local servers (LM Studio, vLLM without --api-key) ignore the key, but the client insists on one.
UNAUTHENTICATED = "unauthenticated"


class OpenAICompatibleChatModel:
    """One model id on one endpoint. `chat_batch` sends the conversations concurrently, so a
    batching server (vLLM, `autoretrain serve`) can share forward passes across them."""

    def __init__(
        self,
        model: str,
        base_url: str = LM_STUDIO_URL,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_concurrency: int = 8,
        name: str | None = None,
    ):
        self.model = model
        self.name = name or model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        return self.base_url

    # -- client ---------------------------------------------------------------------------

    def _make_client(self) -> Any:
        import openai

        key = UNAUTHENTICATED
        if self.api_key_env:
            key = os.environ.get(self.api_key_env) or ""
            if not key:
                raise ProviderError(
                    f"{self.name}: environment variable {self.api_key_env} (the API key for "
                    f"{self.base_url}) is not set; export it or clear api_key_env in the profile"
                )
        # Retries are ours (recorded per run); the client's own would be invisible.
        return openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=0
        )

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    # -- calls ----------------------------------------------------------------------------

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse:
        import openai

        client = self.client()
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        if tools:
            request["tools"] = tools
        notes: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        attempt = 0
        while True:
            try:
                completion = client.chat.completions.create(**request)
                break
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                problem = f"HTTP {exc.status_code}"
                retry_after = _retry_after(exc)
            except openai.APITimeoutError:
                problem = f"timeout after {self.timeout_s:g} s"
                retry_after = None
            except openai.APIConnectionError as exc:
                problem = f"cannot connect: {_root_cause(exc)}"
                retry_after = None
            except openai.APIStatusError as exc:
                raise ProviderError(
                    f"{self.name}: {self.endpoint} answered HTTP {exc.status_code}: "
                    f"{_error_text(exc)}"
                ) from exc
            except (openai.APIResponseValidationError, ValueError) as exc:
                raise ProviderError(
                    f"{self.name}: malformed response from {self.endpoint}: {exc}"
                ) from exc
            if attempt >= self.max_retries:
                raise ProviderError(
                    f"{self.name}: {problem} from {self.endpoint}, "
                    f"after {attempt + 1} attempt(s); check that the server is up and the model "
                    f"{self.model!r} is loaded"
                )
            wait = self._backoff(attempt, retry_after)
            notes.append(
                {"type": "retry", "attempt": attempt + 1, "reason": problem, "wait_s": wait}
            )
            log.warning(
                "%s: %s, retry %d/%d in %.2fs",
                self.name,
                problem,
                attempt + 1,
                self.max_retries,
                wait,
            )
            time.sleep(wait)
            attempt += 1
        response = self._response(completion, messages, notes)
        response.latency_s = time.perf_counter() - t0
        return response

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Tools | None],
        sampling: Sampling = Sampling(),
    ) -> list[ChatResponse]:
        """Concurrent calls, answers in order. The protocol returns replies only, so when a call
        still fails after its retries, the first such ProviderError is raised (once every call
        has finished: nothing is left running in the background)."""
        pairs = list(zip(conversations, tools, strict=True))
        if len(pairs) <= 1:
            return [self.chat(m, t, sampling) for m, t in pairs]
        self.client()  # fail fast on a missing key, once
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(pairs))) as pool:
            futures = [pool.submit(self.chat, m, t, sampling) for m, t in pairs]
            return [f.result() for f in futures]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        # Full jitter keeps a batch of runs from retrying in lockstep.
        ceiling = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return random.uniform(ceiling / 2, ceiling)

    def _response(self, completion: Any, messages: Messages, notes: list) -> ChatResponse:
        try:
            choice = completion.choices[0]
            raw = choice.message
            content = raw.content
            finish_reason = choice.finish_reason or "stop"
            native = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    },
                }
                for call in raw.tool_calls or []
            ]
        except (AttributeError, IndexError, TypeError) as exc:
            raise ProviderError(
                f"{self.name}: malformed response from {self.endpoint}: no choices[0].message "
                f"({type(exc).__name__}: {exc}); body starts {str(completion)[:200]!r}"
            ) from exc
        if content is not None and not isinstance(content, str):
            raise ProviderError(
                f"{self.name}: malformed response from {self.endpoint}: content is "
                f"{type(content).__name__}, not a string"
            )
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if native:
            message["tool_calls"] = native
        elif content and OPEN_TAG in content:
            parsed = parse_tool_calls(content, next_call_index(messages))
            notes.extend(parsed.notes)
            message = parsed.message()
            if parsed.tool_calls:
                notes.append({"type": "tool_calls_from_text", "count": len(parsed.tool_calls)})
                if finish_reason == "stop":
                    finish_reason = "tool_calls"
        usage = getattr(completion, "usage", None)
        return ChatResponse(
            message=message,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            finish_reason=finish_reason,
            model=getattr(completion, "model", None) or self.model,
            notes=notes,
        )


def _retry_after(exc: Any) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]
