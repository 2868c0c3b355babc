"""RunTracker: the API an agent application uses to record a run.

    tracker = RunTracker(archive=RunArchive(paths.landing), prices=PriceTable.from_settings(s),
                         agent_version="1.4.0", provider="azure", model="gpt-4o-mini")
    with tracker.start(scenario_id="calc-add", category="arithmetic") as run:
        run.message({"role": "user", "content": "What is 2+2?"})
        run.model_call(response_message, prompt_tokens=20, completion_tokens=5, latency_s=0.3)
        run.tool_call(...); run.tool_result(...)
        run.verification(Verification(...))
        run.finish("succeeded", final_answer="4")

Latency is wall time from start to finish; cost is summed per model call from the price table,
so a run that mixes models (a planner on one, an executor on another) is priced correctly.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import (
    Escalation,
    EventType,
    Message,
    RecoveryAction,
    Run,
    RunStatus,
    Traffic,
    Usage,
    Verification,
    WorkflowEvent,
)


class RunSink(Protocol):
    def append(self, run: Run) -> None: ...


class _WriteOne:
    """Adapts a RunArchive (batch writer) to the one-run sink the tracker hands runs to."""

    def __init__(self, archive: Any):
        self.archive = archive

    def append(self, run: Run) -> None:
        self.archive.write([run])


class RunTracker:
    def __init__(
        self,
        sink: RunSink | Any | None,
        prices: PriceTable | None = None,
        *,
        agent_version: str = "unknown",
        provider: str = "unknown",
        model: str = "unknown",
        slot: str | None = None,
        traffic: Traffic = "production",
        workflow: str = "executor",
    ):
        # A RunArchive has write(); a BufferedArchive or a list-like collector has append().
        self.sink = _WriteOne(sink) if sink is not None and not hasattr(sink, "append") else sink
        self.prices = prices or PriceTable(prices={})
        self.defaults = dict(
            agent_version=agent_version,
            provider=provider,
            model=model,
            slot=slot,
            traffic=traffic,
            workflow=workflow,
        )

    def start(self, run_id: str | None = None, **fields: Any) -> ActiveRun:
        run = Run(run_id=run_id or uuid.uuid4().hex, **{**self.defaults, **fields})
        active = ActiveRun(run, self)
        active.event(EventType.RUN_STARTED, agent="tracker")
        return active


class ActiveRun:
    """A run being recorded. Every method appends to the transcript in call order."""

    def __init__(self, run: Run, tracker: RunTracker):
        self.run = run
        self.tracker = tracker
        self._t0 = time.perf_counter()
        self._cost: float | None = 0.0
        self.finished = False

    # -- transcript -------------------------------------------------------------------------
    def event(
        self,
        type: str,
        agent: str = "executor",
        duration_s: float | None = None,
        **payload: Any,
    ) -> WorkflowEvent:
        ev = WorkflowEvent(type=str(type), agent=agent, duration_s=duration_s, payload=payload)
        self.run.events.append(ev)
        return ev

    def message(self, message: dict[str, Any] | Message) -> Message:
        msg = message if isinstance(message, Message) else Message.model_validate(message)
        self.run.messages.append(msg)
        return msg

    def model_call(
        self,
        message: dict[str, Any] | None,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        model: str | None = None,
        agent: str = "executor",
        record_message: bool = True,
        **payload: Any,
    ) -> None:
        """One call to a chat model: usage, cost and (by default) the reply in the transcript."""
        model = model or self.run.model
        self.run.usage.add(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        cost = self.tracker.prices.cost(model, prompt_tokens, completion_tokens)
        self._cost = None if cost is None or self._cost is None else self._cost + cost
        self.event(
            EventType.MODEL_CALL,
            agent=agent,
            duration_s=latency_s,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            **payload,
        )
        if message is not None and record_message:
            self.message(message)

    def tool_call(self, call_id: str, name: str, arguments: str, agent: str = "executor") -> None:
        self.event(
            EventType.TOOL_CALL, agent=agent, call_id=call_id, name=name, arguments=arguments
        )

    def tool_result(
        self, call_id: str, name: str, content: str, ok: bool, duration_s: float | None = None
    ) -> None:
        self.event(
            EventType.TOOL_RESULT,
            agent="tools",
            duration_s=duration_s,
            call_id=call_id,
            name=name,
            ok=ok,
            content=content,
        )
        self.message({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})

    def verification(self, result: Verification) -> None:
        self.run.verifications.append(result)
        self.event(EventType.VERIFICATION, agent=result.verifier, **result.model_dump(mode="json"))

    def recovery(self, attempt: int, reason: str, action: str = "retry_with_feedback") -> None:
        rec = RecoveryAction(attempt=attempt, reason=reason, action=action)
        self.run.recoveries.append(rec)
        self.event(
            EventType.RECOVERY, agent="workflow", attempt=attempt, reason=reason, action=action
        )

    def escalate(self, reason: str) -> None:
        self.run.escalations.append(Escalation(reason=reason))
        self.event(EventType.ESCALATION, agent="workflow", reason=reason)

    def error(self, what: str, **payload: Any) -> None:
        self.event(EventType.ERROR, agent=payload.pop("agent", "workflow"), error=what, **payload)

    # -- end --------------------------------------------------------------------------------
    def finish(self, status: RunStatus, final_answer: str | None = None) -> Run:
        if self.finished:
            return self.run
        self.finished = True
        run = self.run
        run.status = status
        run.final_answer = final_answer
        run.ended_at = datetime.now(UTC)
        run.latency_s = round(time.perf_counter() - self._t0, 6)
        run.cost_usd = self._cost
        if self._cost is None:
            run.tags["cost"] = "unpriced_model"
        self.event(EventType.RUN_FINISHED, agent="tracker", status=status)
        if self.tracker.sink is not None:
            self.tracker.sink.append(run)
        return run

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        # A crash inside the app still leaves a record of what happened before it.
        if not self.finished:
            if exc is not None:
                self.error(f"{exc_type.__name__ if exc_type else 'Error'}: {exc}")
                self.finish("error")
            else:
                self.finish("failed" if not self.run.verified else "succeeded")
