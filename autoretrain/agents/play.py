"""The one play loop: scenario instances → agent runs → finished runs, through any model.

Self-play, the evaluation replay and quick pass-rate looks all play instances the same way:
each instance starts a run on a tracker (which records it, or not), the production workflow
(`agent_run`) plays it, and `run_many` answers the pending model requests of many runs at once.
What differs is only how a model is driven, and that has one rule here:

- A model that shares forward passes across conversations declares `native_batching = True`
  (local models): it gets whole batches.
- Every other model (HTTP providers) is driven through `ConcurrentModel`, a pool of concurrent
  `chat` calls, where a failed request fails its own run only: an HTTP provider's own
  `chat_batch` raises for the whole batch, which would turn one bad request into a batch of
  provider failures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from autoretrain.agents.workflow import WorkflowConfig, agent_run, run_many, start_run
from autoretrain.providers.base import ChatModel, ChatResponse, Messages, Sampling, Tools
from autoretrain.runs.schema import Run
from autoretrain.runs.tracker import RunTracker


class ConcurrentModel:
    """Answers `chat_batch` with concurrent `chat` calls: the batching of HTTP providers."""

    def __init__(self, model: ChatModel, concurrency: int):
        self.model = model
        self.name = model.name
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency))

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse:
        return self.model.chat(messages, tools, sampling)

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Tools | None],
        sampling: Sampling = Sampling(),
    ) -> list[ChatResponse | Exception]:
        futures = [
            self._pool.submit(self.model.chat, m, t, sampling.derived(i))
            for i, (m, t) in enumerate(zip(conversations, tools, strict=True))
        ]
        out: list[ChatResponse | Exception] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as exc:  # one failed request must not fail its neighbours
                out.append(exc)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def batches_natively(model: Any) -> bool:
    """Only a model that declares it shares forward passes gets whole batches."""
    return bool(getattr(model, "native_batching", False))


@contextmanager
def driven(model: ChatModel, concurrency: int) -> Iterator[Any]:
    """The model as `run_many` should call it: itself, or a pool of `concurrency` concurrent
    `chat` calls (closed on leaving)."""
    if batches_natively(model):
        yield model
        return
    pool = ConcurrentModel(model, concurrency)
    try:
        yield pool
    finally:
        pool.close()


class Agent(Protocol):
    """An agent other than the built-in workflow (agents/http_agent.py: a team's `POST /run`).
    It plays instances and yields one finished Run per instance, never raising for its own
    faults (those are runs recorded as `error`)."""

    def play(
        self,
        instances: Iterable[Any],
        *,
        tracker: RunTracker,
        verifier: Any,
        slot: str | None,
        tags: Callable[[Any], dict[str, str]] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Run]: ...


def agent_from_settings(settings: Any) -> Agent | None:
    """The agent the settings' `agent` block names: None for the built-in workflow."""
    block = getattr(settings, "agent", None)
    if block is None or block.kind == "builtin":
        return None
    from autoretrain.agents.http_agent import HttpAgent

    return HttpAgent.from_settings(block)


def play(
    instances: Iterable[Any],
    model: ChatModel,
    *,
    tracker: RunTracker,
    tools: Any,
    verifier: Any,
    workflow: WorkflowConfig,
    batch_size: int,
    tags: Callable[[Any], dict[str, str]] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    seed_per_call: bool = False,
    agent: Agent | None = None,
    slot: str | None = None,
) -> Iterator[Run]:
    """Play every instance through the workflow on `model`, yielding each run as it finishes.

    `tags(instance)` adds tags to each run; `should_stop` stops starting new runs (those in
    flight finish); `seed_per_call` gives every call a seed of its own (self-play), otherwise
    every call uses the workflow's seed (the replay: one seed per sample, for both models).

    `agent`: another implementation of the agent (an HttpAgent: the team's own `/run`), which
    plays each instance itself against `slot` through the gateway; the tracker, verifier, tags
    and `should_stop` mean the same, and a run is yielded per instance either way. None: the
    built-in workflow on `model`, as below."""
    if agent is not None:
        yield from agent.play(
            instances,
            tracker=tracker,
            verifier=verifier,
            slot=slot,
            tags=tags,
            should_stop=should_stop,
        )
        return
    agents = (
        agent_run(
            instance,
            start_run(tracker, instance, **({"tags": tags(instance)} if tags else {})),
            tools,
            verifier,
            workflow,
        )
        for instance in instances
    )
    with driven(model, batch_size) as batched:
        yield from run_many(
            agents,
            batched,
            workflow.sampling,
            batch_size=batch_size,
            should_stop=should_stop,
            seed_per_call=seed_per_call,
        )
