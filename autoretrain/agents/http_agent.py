"""A team's own agent behind `POST /run`: the second implementation of the play loop's agent.

For each scenario instance autoretrain calls the agent's `/run` with

    {"prompt": <the user's prompt>, "messages": <system + user messages>, "scenario_id": ...,
     "instance_hash": ..., "run_id": ..., "slot": "primary" | "canary" | <version id>,
     "gateway_url": <the gateway's base URL, when configured>}

and the agent does its own work (its prompts, its tools, its language) through the capture
gateway, sending `X-Autoretrain-Run: <run_id>` and `model: <slot>`, then answers
`{"final_answer": "...", "events": [...]}`. autoretrain verifies the final answer against the
scenario's `expected` (the same verifier as the built-in workflow) and attaches to the run the
gateway captured (its run API): the scenario's identity, the traffic, the tags, the agent's own
verification/recovery/escalation events, its verification last (so the run's verdict is
autoretrain's), the final answer, and the close.

Every fault of the agent (a timeout, an HTTP error, a body that is not the answer, nothing
listening) becomes a run recorded as `error` with the reason, and is counted; none reaches the
caller as an exception, so self-play and the replay go on. Without a gateway (`gateway_url`
unset), or when the gateway cannot take the events, autoretrain records the run itself through
the caller's tracker, so no run is ever lost.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from autoretrain.runs.schema import EventType, Run, Usage, Verification
from autoretrain.runs.tracker import RunTracker

log = logging.getLogger(__name__)

# The harness counts a run whose error starts with the workflow's "model call failed" as a
# provider failure (evaluation/harness.py): an agent that never answered is exactly that kind
# of trouble for a replay (it must never help the candidate), so its reason is worded the same.
AGENT_FAILED = "model call failed: the agent"
AGENT_EVENT_TYPES = ("verification", "recovery", "escalation")


@dataclass(frozen=True)
class Outcome:
    """What one /run call gave: the final answer and the agent's events, or the fault."""

    final_answer: str | None = None
    events: tuple[dict[str, Any], ...] = ()
    fault: str | None = None  # timeout | http_error | garbage | unreachable
    reason: str | None = None


class AgentSlot:
    """The model a run uses when the agent does the work: only a slot name, which the agent
    passes to the gateway as `model`. Self-play and the replay name their targets by it; it is
    never called from here (the agent calls the gateway)."""

    native_batching = False

    def __init__(self, name: str):
        self.name = name

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"slot {self.name!r} is served to the HTTP agent through the gateway; "
            "autoretrain does not call it directly"
        )


class HttpAgent:
    """Plays instances by calling a team's `POST /run`, `concurrency` calls at a time."""

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        auth_header: str = "Authorization",
        auth_env: str | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 8,
        gateway_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = url
        self.auth_header = auth_header
        self.auth_env = auth_env
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self._transport = transport
        self.faults: Counter = Counter()  # fault kind -> runs, over this agent's life
        self.gateway_failures = 0  # runs the gateway could not take (recorded here instead)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> HttpAgent:
        """From the settings' `agent` block (AgentSettings)."""
        return cls(
            settings.url,
            auth_header=settings.auth_header,
            auth_env=settings.auth_env,
            timeout_s=settings.timeout_s,
            concurrency=settings.concurrency,
            gateway_url=settings.gateway_url,
        )

    # -- the play loop ----------------------------------------------------------------------

    def play(
        self,
        instances: Iterable[Any],
        *,
        tracker: RunTracker,
        verifier: Any,
        slot: str | None,
        tags: Callable[[Any], dict[str, str]] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Run]:
        """Play every instance through the agent, yielding each run as it finishes (at most
        `concurrency` in flight; `should_stop` stops starting new ones)."""
        headers = self._headers()
        faults: Counter = Counter()  # this play's faults, by kind
        limits = httpx.Limits(max_connections=self.concurrency + 2)
        with (
            httpx.Client(timeout=self.timeout_s, limits=limits, transport=self._transport) as http,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="http-agent") as pool,
        ):
            pending: set[Future] = set()
            source = iter(instances)
            exhausted = False
            while True:
                while not exhausted and len(pending) < self.concurrency and not should_stop():
                    instance = next(source, None)
                    if instance is None:
                        exhausted = True
                        break
                    extra = tags(instance) if tags else {}
                    pending.add(
                        pool.submit(
                            self._one, http, headers, instance, tracker, verifier, slot, extra
                        )
                    )
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = future.result()
                    if "agent_fault" in run.tags:
                        faults[run.tags["agent_fault"]] += 1
                    yield run
        if faults:
            # Each is a recorded run already; one line says how many, of which kind.
            log.warning(
                "agent %s: %d run(s) failed at the agent (%s)",
                self.url,
                sum(faults.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(faults.items())),
                extra={"agent_faults": dict(faults)},
            )

    def _headers(self) -> dict[str, str]:
        if not self.auth_env:
            return {}
        value = os.environ.get(self.auth_env)
        if not value:
            raise RuntimeError(
                f"agent.auth_env names ${self.auth_env}, which is not set: the agent's "
                "credential comes from it"
            )
        if self.auth_header.lower() == "authorization" and " " not in value.strip():
            value = f"Bearer {value.strip()}"
        return {self.auth_header: value}

    def _one(
        self,
        http: httpx.Client,
        headers: dict[str, str],
        instance: Any,
        tracker: RunTracker,
        verifier: Any,
        slot: str | None,
        extra_tags: dict[str, str],
    ) -> Run:
        """One instance: the /run call, the verdict, the run attached (or recorded here)."""
        run_id = uuid.uuid4().hex
        traffic = tracker.defaults["traffic"]
        tags = {"agent": "http", **extra_tags}
        fields = dict(
            scenario_id=instance.scenario_id,
            category=instance.category,
            instance_hash=instance.instance_hash,
            instance_seed=instance.seed,
            tags=tags,
        )
        if slot is not None:
            fields["slot"] = slot
        # The local record: what the caller counts and tabulates. Written to the tracker's
        # sink only when the gateway does not hold the run (its copy has the model calls).
        local = RunTracker(None, tracker.prices, **tracker.defaults)
        active = local.start(run_id=run_id, **fields)
        for message in instance.initial_messages():
            active.message(message)
        outcome = self.call(http, headers, instance, run_id, slot)
        if outcome.fault:
            with self._lock:
                self.faults[outcome.fault] += 1
            active.error(f"{AGENT_FAILED} {outcome.reason}", agent="http_agent")
            active.run.tags["agent_fault"] = outcome.fault
            verification = None
        else:
            for event in outcome.events:
                _merge_event(active, event)
            attempt = len(active.run.verifications)
            verification = verifier.verify(instance, outcome.final_answer, attempt=attempt)
            active.verification(verification)
            if outcome.final_answer:
                active.message({"role": "assistant", "content": outcome.final_answer})
        status = _status(active.run, verification, outcome)
        run = active.finish(status, final_answer=outcome.final_answer)
        # The agent's model calls are not seen here: their usage and cost come from the
        # gateway's answer to the close (`_attach`); without it unknown, not $0, so the
        # replay's cost gate says it cannot judge.
        run.cost_usd = None
        attached = self._attach(http, run, traffic, outcome, verification)
        if not attached and tracker.sink is not None:
            tracker.sink.append(run)
        return run

    def call(
        self,
        http: httpx.Client,
        headers: dict[str, str],
        instance: Any,
        run_id: str,
        slot: str | None,
    ) -> Outcome:
        """The agent's answer to one /run, or the fault, never an exception."""
        body: dict[str, Any] = {
            "prompt": instance.user_prompt,
            "messages": instance.initial_messages(),
            "scenario_id": instance.scenario_id,
            "instance_hash": instance.instance_hash,
            "run_id": run_id,
            "slot": slot or "primary",
        }
        if self.gateway_url:
            body["gateway_url"] = self.gateway_url
        try:
            response = http.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            return Outcome(
                fault="timeout", reason=f"at {self.url} timed out after {self.timeout_s:g} s"
            )
        except httpx.HTTPError as exc:
            return Outcome(fault="unreachable", reason=f"at {self.url} is unreachable: {exc}")
        except Exception as exc:  # a malformed URL, a body it cannot send: still one run's fault
            return Outcome(
                fault="unreachable",
                reason=f"at {self.url} cannot be called: {type(exc).__name__}: {exc}",
            )
        text = response.text
        if response.status_code >= 400:
            return Outcome(
                fault="http_error",
                reason=f"at {self.url} answered HTTP {response.status_code}: {text[:300]}",
            )
        try:
            data = response.json()
        except ValueError:
            return Outcome(
                fault="garbage", reason=f"at {self.url} answered a body that is not JSON: "
                f"{text[:200]!r}",
            )  # fmt: skip
        answer = data.get("final_answer") if isinstance(data, dict) else None
        if answer is not None and not isinstance(answer, str):
            answer = None
        if (
            not isinstance(data, dict)
            or "final_answer" not in data
            or (data["final_answer"] is not None and answer is None)
        ):
            return Outcome(
                fault="garbage",
                reason=f"at {self.url} answered no final_answer string: {text[:200]!r}",
            )
        events = data.get("events") or []
        kept = tuple(
            e for e in events if isinstance(e, dict) and e.get("type") in AGENT_EVENT_TYPES
        ) if isinstance(events, list) else ()  # fmt: skip
        return Outcome(final_answer=answer, events=kept)

    # -- the gateway's run API ----------------------------------------------------------------

    def _attach(
        self,
        http: httpx.Client,
        run: Run,
        traffic: str,
        outcome: Outcome,
        verification: Verification | None,
    ) -> bool:
        """Send the run's identity, events, verdict and close to the gateway. True when the
        gateway took every event (it holds the run now); False when there is no gateway or it
        refused any, and the caller records the run itself."""
        if not self.gateway_url:
            return False
        rid = run.run_id
        batch: list[dict[str, Any]] = [
            {
                "type": "scenario",
                "scenario_id": run.scenario_id,
                "instance_hash": run.instance_hash,
                "category": run.category,
                "instance_seed": run.instance_seed,
                "traffic": traffic,
                "tags": dict(run.tags),
            }
        ]
        for event in outcome.events:
            batch.append({k: v for k, v in event.items() if k not in ("event_id", "id")})
        if outcome.fault:
            batch.append(
                {
                    "type": "error",
                    "agent": "http_agent",
                    "error": f"{AGENT_FAILED} {outcome.reason}",
                    "reason": outcome.fault,
                }
            )
        if verification is not None:
            batch.append({"type": "verification", **verification.model_dump(mode="json")})
        if outcome.final_answer is not None:
            batch.append({"type": "final_answer", "final_answer": outcome.final_answer})
        batch.append({"type": "close", "status": run.status})
        # Event ids make a retried batch harmless (the gateway answers duplicates 200).
        for i, event in enumerate(batch):
            event["run_id"] = rid
            event["event_id"] = f"{rid}:{i}"
        try:
            response = http.post(
                f"{self.gateway_url}/runs/events", json={"batch": batch}, timeout=30.0
            )
            result = response.json() if response.status_code == 207 else None
        except (httpx.HTTPError, ValueError) as exc:
            result, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = f"HTTP {response.status_code}" if result is None else None
        if result is not None:
            errors = result.get("errors") or []
            if errors:
                # One bad event of the agent's own (a verification without `passed`) is named,
                # and the rest of the run stands.
                log.warning("run %s: the gateway refused events: %s", rid, errors)
            closed = f"{rid}:{len(batch) - 1}"
            for ok in result.get("successes") or []:
                if isinstance(ok, dict) and ok.get("id") == closed:
                    _take_totals(run, ok.get("run"))
                    return True
            why = f"refused the close: {errors}"
        with self._lock:
            self.gateway_failures += 1
        log.warning("run %s: the gateway did not take its events (%s); recording it here", rid, why)
        run.tags["gateway"] = "not_attached"
        return False


def _take_totals(run: Run, totals: Any) -> None:
    """The gateway's totals for the run (its answer to the close): the agent's model calls'
    tokens and cost, which only the gateway saw. A gateway that sends none leaves the cost
    unknown, never $0."""
    if not isinstance(totals, dict) or not totals.get("calls"):
        return
    try:
        usage = Usage.model_validate(totals.get("usage") or {})
    except ValueError:
        return
    cost = totals.get("cost_usd")
    run.usage = usage
    run.cost_usd = float(cost) if isinstance(cost, int | float) and cost >= 0 else None


def _merge_event(active: Any, event: dict[str, Any]) -> None:
    """One of the agent's own events on the local record (the gateway gets it as sent)."""
    from pydantic import ValidationError

    kind = event.get("type")
    try:
        if kind == "verification":
            active.verification(
                Verification(
                    verifier=str(event.get("verifier") or "agent"),
                    passed=bool(event.get("passed")),
                    score=event.get("score", 1.0 if event.get("passed") else 0.0),
                    feedback=str(event.get("feedback") or ""),
                    attempt=event.get("attempt", len(active.run.verifications)),
                )
            )
        elif kind == "recovery":
            active.recovery(
                int(event.get("attempt", len(active.run.recoveries) + 1)),
                str(event.get("reason") or ""),
                str(event.get("action") or "retry_with_feedback"),
            )
        elif kind == "escalation":
            active.escalate(str(event.get("reason") or ""))
    except (ValidationError, TypeError, ValueError) as exc:
        active.event(EventType.ERROR, agent="http_agent", error=f"unusable agent event: {exc}")


def _status(run: Run, verification: Verification | None, outcome: Outcome) -> str:
    if outcome.fault:
        return "error"
    if run.escalations:
        return "escalated"
    return "succeeded" if verification is not None and verification.passed else "failed"
