"""The one protocol every chat model speaks to the workflow.

`chat(messages, tools, sampling)` takes OpenAI-shaped messages (plain dicts) and returns one
assistant message (content and/or OpenAI-shaped `tool_calls`) with its usage and latency.
`chat_batch` lets a provider share forward passes across many conversations (local models);
the default loops over `chat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]]


class ProviderError(RuntimeError):
    """A model call failed after its retries: endpoint down, timeout, malformed response."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None

    def derived(self, *salt: int) -> Sampling:
        """The same settings with a seed of its own for `salt` (a call, a row): seeded callers
        give each call and each conversation an independent, reproducible stream."""
        return self if self.seed is None else replace(self, seed=derive_seed(self.seed, *salt))


def derive_seed(seed: int, *salt: int) -> int:
    # Tuples of ints hash the same in every process (PYTHONHASHSEED only salts str and bytes).
    return hash((seed, *salt)) & (2**63 - 1)


@dataclass
class ChatResponse:
    message: dict[str, Any]  # {"role": "assistant", "content": ..., "tool_calls": [...]?}
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"  # stop | tool_calls | length | error
    model: str = ""
    # Retries, parse problems and other facts the run record should keep.
    notes: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class ChatModel(Protocol):
    name: str  # the model id recorded on runs

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse: ...

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Tools | None],
        sampling: Sampling = Sampling(),
    ) -> list[ChatResponse]: ...


class SequentialBatchMixin:
    """`chat_batch` as a loop over `chat`, for providers with no batching of their own."""

    def chat_batch(self, conversations, tools, sampling=Sampling()):  # type: ignore[no-untyped-def]
        return [self.chat(m, t, sampling) for m, t in zip(conversations, tools, strict=True)]
