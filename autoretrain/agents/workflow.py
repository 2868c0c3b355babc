"""The agent workflow: plan (optional) → execute with tools → verify → recover or escalate.

The workflow is written as a generator that *yields* each model request and receives the reply,
instead of calling the model itself. One run at a time, `run_one` drives it; `run_many` drives
hundreds of runs together and answers their pending requests with one batched `chat_batch`
call, so a local model shares forward passes across runs (the self-play speed-up). The control
flow is identical either way, which is what makes evaluation and self-play comparable.

Every step goes through the run's tracker, so the stored record holds the whole story: failed
attempts, the verifier's feedback, recovery actions, escalations and errors, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from autoretrain.providers.base import ChatModel, ChatResponse, Sampling
from autoretrain.runs.schema import EventType, Run
from autoretrain.runs.tracker import ActiveRun, RunTracker

AGENT_VERSION = "executor-1.0"

PLANNER_PROMPT = (
    "Before acting, write a short numbered plan (at most three steps) for answering the "
    "request. Do not call tools yet."
)
FEEDBACK_PREFIX = "Verification failed:"


@dataclass(frozen=True)
class WorkflowConfig:
    max_recoveries: int = 1
    planner: bool = False  # on for every scenario; a scenario can also switch it on itself
    sampling: Sampling = field(default_factory=Sampling)
    tool_timeout_s: float = 5.0
    timeout_s: float | None = (
        None  # caps every scenario's own time budget (self-play per-run timeout)
    )


@dataclass
class ModelRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    agent: str = "executor"


AgentRun = Generator[ModelRequest, "ChatResponse | Exception", Run]


class _BudgetExceeded(Exception):
    pass


def agent_run(
    instance: Any,
    run: ActiveRun,
    tools: Any,
    verifier: Any,
    config: WorkflowConfig = WorkflowConfig(),
) -> AgentRun:
    """One agent run over a ScenarioInstance. Yields ModelRequests; returns the finished Run."""
    talk = _Conversation(instance, run, config)
    messages = talk.messages
    try:
        if config.planner or instance.planner:
            plan = yield from talk.ask(
                "planner", [*messages, {"role": "user", "content": PLANNER_PROMPT}], False
            )
            if plan is None:
                run.escalate("planner model call failed")
                return run.finish("error")
            messages.append(plan)

        turns = 0
        for attempt in range(config.max_recoveries + 1):
            answer: str | None = None
            while True:
                talk.check_budgets(turns)
                message = yield from talk.ask("executor", messages, True)
                turns += 1
                if message is None:
                    run.escalate("executor model call failed")
                    return run.finish("error")
                messages.append(message)
                calls = message.get("tool_calls") or []
                if not calls:
                    answer = message.get("content")
                    break
                talk.answer_tool_calls(calls, tools)

            verification = verifier.verify(instance, answer, attempt=attempt)
            run.verification(verification)
            if verification.passed:
                return run.finish("succeeded", final_answer=answer)
            if attempt < config.max_recoveries:
                run.recovery(attempt + 1, reason=verification.feedback or "verification failed")
                feedback = {
                    "role": "user",
                    "content": f"{FEEDBACK_PREFIX} {verification.feedback} Please try again.",
                }
                messages.append(feedback)
                run.message(feedback)
        run.escalate(
            f"verification still failing after {config.max_recoveries} recovery attempt(s)"
        )
        return run.finish("escalated", final_answer=answer)
    except _BudgetExceeded as exc:
        run.escalate(str(exc))
        return run.finish("escalated")


class _Conversation:
    """What one agent run carries from turn to turn: the messages so far, the budgets and the
    clock, the tool-call ids already seen, and the recorded run."""

    def __init__(self, instance: Any, run: ActiveRun, config: WorkflowConfig):
        self.instance, self.run, self.config = instance, run, config
        self.budgets = instance.budgets
        self.max_seconds = min(self.budgets.max_seconds, config.timeout_s or float("inf"))
        self.started = time.monotonic()
        self.messages: list[dict[str, Any]] = []
        for message in instance.initial_messages():
            self.messages.append(message)
            run.message(message)
        self.seen_call_ids: set[str] = set()

    def check_budgets(self, turns: int) -> None:
        budgets, usage = self.budgets, self.run.run.usage
        if turns >= budgets.max_turns:
            raise _BudgetExceeded(f"turn budget exhausted ({budgets.max_turns} model turns)")
        if time.monotonic() - self.started > self.max_seconds:
            raise _BudgetExceeded(f"time budget exhausted ({self.max_seconds:g} s)")
        if usage.total_tokens > budgets.max_tokens:
            raise _BudgetExceeded(
                f"token budget exhausted ({usage.total_tokens} > {budgets.max_tokens})"
            )

    def ask(self, agent: str, convo: list[dict[str, Any]], with_tools: bool) -> Generator:
        """Yield one model request; return the reply message, or None after a provider error."""
        run = self.run
        run.event(EventType.STEP_STARTED, agent=agent)
        reply = yield ModelRequest(
            messages=[dict(m) for m in convo],
            tools=self.instance.tools if with_tools else None,
            agent=agent,
        )
        if isinstance(reply, Exception):
            run.error(f"model call failed: {reply}", agent=agent)
            return None
        message = _normalise_reply(reply.message, self.seen_call_ids, run)
        run.model_call(
            message,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            latency_s=reply.latency_s,
            model=reply.model or None,
            agent=agent,
            finish_reason=reply.finish_reason,
            **({"notes": reply.notes} if reply.notes else {}),
        )
        run.event(EventType.STEP_FINISHED, agent=agent)
        return message

    def answer_tool_calls(self, calls: list[dict[str, Any]], tools: Any) -> None:
        """Run each call the model made and add its result to the conversation."""
        for call in calls:
            fn = call["function"]
            self.run.tool_call(call["id"], fn["name"], fn["arguments"])
            ok, content, duration = _execute(tools, self.instance, fn, self.config.tool_timeout_s)
            self.run.tool_result(call["id"], fn["name"], content, ok, duration)
            self.messages.append(
                {"role": "tool", "tool_call_id": call["id"], "name": fn["name"], "content": content}
            )


def _execute(
    tools: Any, instance: Any, fn: dict[str, str], timeout_s: float
) -> tuple[bool, str, float]:
    """Run one tool call; a tool the scenario does not allow is an error the model reads."""
    allowed = [spec["function"]["name"] for spec in instance.tools]
    if fn["name"] not in allowed:
        return (
            False,
            f"Error: tool '{fn['name']}' is not available here. Available: {', '.join(allowed) or 'none'}.",
            0.0,
        )
    result = tools.execute(fn["name"], fn["arguments"], timeout_s=timeout_s)
    return result.ok, result.content, result.duration_s


def _normalise_reply(message: dict[str, Any], seen_ids: set[str], run: ActiveRun) -> dict[str, Any]:
    """Make a model's reply safe to store and replay: an assistant message whose tool calls
    each have a unique id, a function name and a *string* of arguments. What had to be fixed
    is recorded as an error event, so the transcript says what the model really sent."""
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if out["content"] is not None and not isinstance(out["content"], str):
        out["content"] = json.dumps(out["content"])
    calls = []
    for index, raw in enumerate(message.get("tool_calls") or []):
        fn = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            run.error("malformed tool call: no function name", tool_call=repr(raw)[:500])
            fn = {"name": "<missing>", "arguments": "{}"}
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        call_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(call_id, str) or not call_id or call_id in seen_ids:
            new_id = f"call_{len(seen_ids)}_{index}"
            run.error(
                "tool call id missing or repeated; assigned a new one", old=call_id, new=new_id
            )
            call_id = new_id
        seen_ids.add(call_id)
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": fn["name"], "arguments": arguments},
            }
        )
    if calls:
        out["tool_calls"] = calls
    return out


# -- drivers ----------------------------------------------------------------------------------


def run_one(agent: AgentRun, model: ChatModel, sampling: Sampling = Sampling()) -> Run:
    """Drive one agent run to the end, one model call at a time."""
    try:
        request = next(agent)
        while True:
            try:
                reply: ChatResponse | Exception = model.chat(
                    request.messages, request.tools, sampling
                )
            except Exception as exc:  # a provider failure is recorded in the run, not raised
                reply = exc
            request = agent.send(reply)
    except StopIteration as done:
        return done.value


def run_many(
    agents: Iterable[AgentRun],
    model: ChatModel,
    sampling: Sampling = Sampling(),
    batch_size: int = 64,
    on_done: Callable[[Run], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    seed_per_call: bool = False,
) -> Iterator[Run]:
    """Drive many agent runs, answering up to `batch_size` pending requests per batched call.

    Yields runs as they finish. New runs start as others finish, so the batch stays full.
    `should_stop` is polled between batches (Ctrl-C handling in self-play): no new runs start,
    and runs in flight are finished. With `seed_per_call`, a seeded `sampling` gets a seed of
    its own for every call (self-play: independent streams, still reproducible); without it,
    every call gets the caller's seed (evaluation: one seed per sample, for both models).
    """
    source = iter(agents)
    active: list[tuple[AgentRun, ModelRequest]] = []

    def start_more() -> Iterator[Run]:
        while len(active) < batch_size and not should_stop():
            agent = next(source, None)
            if agent is None:
                return
            try:
                active.append((agent, next(agent)))
            except StopIteration as done:
                yield _finished(done.value, on_done)

    yield from start_more()
    calls = 0
    while active:
        calls += 1
        try:
            replies: list[ChatResponse | Exception] = list(
                model.chat_batch(
                    [req.messages for _, req in active],
                    [req.tools for _, req in active],
                    sampling.derived(calls) if seed_per_call else sampling,
                )
            )
        except Exception as exc:
            replies = [exc] * len(active)
        still: list[tuple[AgentRun, ModelRequest]] = []
        for (agent, _), reply in zip(active, replies, strict=True):
            try:
                still.append((agent, agent.send(reply)))
            except StopIteration as done:
                yield _finished(done.value, on_done)
        active[:] = still
        yield from start_more()


def _finished(run: Run, on_done: Callable[[Run], None] | None) -> Run:
    if on_done is not None:
        on_done(run)
    return run


def start_run(tracker: RunTracker, instance: Any, **fields: Any) -> ActiveRun:
    """Open a tracked run for a scenario instance, with the scenario's identity on the record."""
    return tracker.start(
        scenario_id=instance.scenario_id,
        instance_hash=instance.instance_hash,
        instance_seed=instance.seed,
        category=instance.category,
        tools=instance.tools,
        **fields,
    )
