"""Calls -> runs: which run a chat completion belongs to, and the run record it builds.

A call joins a run by, in order:

1. the `X-Autoretrain-Run` header: its value is the run id;
2. the W3C `traceparent` header: the trace id is the run id (an OpenTelemetry-instrumented
   agent needs no change);
3. stitching: its messages extend an earlier call's messages *including that call's reply*
   (same system prompt, same user turn, the assistant turn the gateway answered, then more).
   Every call leaves two keys, a hash of its request's messages (once they hold an assistant
   turn) and a hash of request + reply; a new call looks up the hashes of its own prefixes,
   longest first. The keys live in a bounded LRU.
4. otherwise a new run.

A prefix without an assistant turn never stitches: two users who send the same first message
would otherwise share a run. Hence the limits: an agent that retries its very first call gets
two runs; two conversations identical up to a reply and branching after it join the newer one.
The header removes every ambiguity.

The book is used from the event loop only (no lock): every method is synchronous and short.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from autoretrain.runs.schema import RunStatus, Traffic

RUN_HEADER = "x-autoretrain-run"
ROLES = {"system", "user", "assistant", "tool"}
# What a run can be (the schema's Traffic, production first: what a run is unless it says):
# the `scenario` event may say which.
TRAFFIC = ("production", *(t for t in get_args(Traffic) if t != "production"))
# Statuses an agent may close a run with (the schema's, less "running").
CLOSING_STATUSES = set(get_args(RunStatus)) - {"running"}
EVENT_TYPES = (
    "verification",
    "recovery",
    "escalation",
    "final_answer",
    "scenario",
    "task",
    "metadata",
    "error",
    "close",
)


# -- messages ---------------------------------------------------------------------------------


def text_of(content: Any) -> str | None:
    """A message's content as the run schema holds it: text. Content parts (the newer OpenAI
    shape) are joined; a part that is not text (an image) is named, not dropped silently."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                text = part.get("text")
                pieces.append(text if isinstance(text, str) else f"[{kind or 'part'}]")
            elif isinstance(part, str):
                pieces.append(part)
        return "".join(pieces)
    return json.dumps(content, ensure_ascii=False)


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def record_message(message: Any, index: int = 0) -> dict[str, Any] | None:
    """One OpenAI chat message as the run schema's Message (a plain dict), or None when it is
    not one (decoded JSON: plain dicts, checked as such, which is cheaper than Mapping). `developer` is the newer name of `system`; `function` the old shape of `tool`."""
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    role = {"developer": "system", "function": "tool"}.get(role, role)
    if role not in ROLES:
        return None
    out: dict[str, Any] = {"role": role, "content": text_of(message.get("content"))}
    calls = []
    for i, call in enumerate(message.get("tool_calls") or []):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        calls.append(
            {
                "id": str(call.get("id") or f"call_{index}_{i}"),
                "type": "function",
                "function": {
                    "name": str(function.get("name") or ""),
                    "arguments": _arguments(function.get("arguments")),
                },
            }
        )
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        call_id = message.get("tool_call_id") or message.get("name")
        if call_id is not None:
            out["tool_call_id"] = str(call_id)
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def _canonical(message: Mapping[str, Any]) -> bytes:
    """What makes two messages the same for stitching: role, text, tool calls (arguments as
    parsed JSON, so a client that re-serialises them still matches) and the tool call id. A
    client that echoes the reply with `content: null` or `""`, extra null fields, or another key
    order still matches. Fields are joined by control characters (cheaper than JSON on every
    call's every message; a separator inside a text can only merge two fields of one message,
    which the length prefix rules out)."""
    parts = [message["role"], message.get("content") or "", message.get("tool_call_id") or ""]
    for call in message.get("tool_calls") or ():
        args = call["function"]["arguments"]
        with contextlib.suppress(ValueError, RecursionError):
            args = json.dumps(json.loads(args), sort_keys=True)
        parts += [call["id"], call["function"]["name"], args]
    return "\x1f".join(f"{len(p)}:{p}" for p in parts).encode("utf-8", "surrogatepass")


def prefix_hashes(messages: list[dict[str, Any]]) -> tuple[list[bytes], Any]:
    """The hash of every prefix (entry i covers messages[0..i]) and the hasher after the last,
    to extend with a reply. Chained, so all of them cost one pass over the conversation."""
    out = []
    h = hashlib.blake2b(digest_size=16)
    for message in messages:
        h.update(_canonical(message))
        h.update(b"\x00")
        out.append(h.digest())
    return out, h


def extend_hash(chain: Any, more: dict[str, Any]) -> bytes:
    """The hash of a conversation (given by its hasher) with one more message."""
    h = chain.copy()
    h.update(_canonical(more))
    h.update(b"\x00")
    return h.digest()


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`), None if invalid."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    tid = parts[1].lower()
    try:
        int(tid, 16)
    except ValueError:
        return None
    return None if tid == "0" * 32 else tid


def bucket(run_id: str) -> float:
    """A run's fixed place in [0, 1): the canary share routes the runs below it, so a run (and
    every later call with the same header or trace) always lands on the same slot."""
    digest = hashlib.blake2b(run_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# -- the book of open runs ----------------------------------------------------------------------


@dataclass
class Call:
    """One chat completion in flight: its run and what the gateway knows of the request."""

    run_id: str
    grouped_by: str  # header | traceparent | stitched | new
    messages: list[dict[str, Any]]
    hashes: list[bytes]
    chain: Any  # the hasher after the request's messages
    tools: list[dict[str, Any]]
    started_at: datetime
    requested: str  # the model the agent asked for


@dataclass
class OpenRun:
    run_id: str
    grouped_by: str
    created: datetime
    last_seen: float  # monotonic
    slot: str | None = None
    model: str | None = None
    provider: str | None = None
    started_at: datetime | None = None
    last_end: datetime | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    transcript_hash: bytes | None = None
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    failed_calls: int = 0
    last_call_failed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    verifications: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    final_answer: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # scenario_id, instance_hash, category
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None  # as the agent closed it
    closed: bool = False
    dirty: bool = True  # changed since it was last written
    written_end: datetime | None = None  # ended_at of the last copy written


class RunBook:
    """Open runs, the stitching index and the event ids seen, each bounded (LRU)."""

    def __init__(
        self,
        *,
        max_open_runs: int = 10000,
        agent_version: str = "unknown",
        workflow: str = "gateway",
        clock: Any = None,
    ):
        import time

        self.max_open_runs = max_open_runs
        self.agent_version = agent_version
        self.workflow = workflow
        self.clock = clock or time.monotonic
        self.runs: OrderedDict[str, OpenRun] = OrderedDict()
        self.index: OrderedDict[bytes, str] = OrderedDict()  # prefix hash -> run id
        self.events_seen: OrderedDict[str, None] = OrderedDict()
        # Runs written and then forgotten: a later call or event under their id must not write
        # a partial copy that ingest would take for the newer version of the whole run.
        self.forgotten: OrderedDict[str, None] = OrderedDict()
        self.evicted: list[dict[str, Any]] = []  # records pushed out by the size bound
        # Run ids: a random prefix per process and a counter (uuid4 per call costs a read of
        # the system's entropy on every new run).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    # -- calls --------------------------------------------------------------------------------

    def start(
        self, headers: Mapping[str, str], raw_messages: Any, tools: Any, requested: str
    ) -> Call:
        listed = raw_messages if isinstance(raw_messages, list) else []
        converted = (record_message(m, i) for i, m in enumerate(listed))
        messages = [m for m in converted if m is not None]
        hashes, chain = prefix_hashes(messages)
        run_id, how = None, "new"
        explicit = (headers.get(RUN_HEADER) or "").strip()
        if explicit:
            run_id, how = explicit[:200], "header"
        elif tid := trace_id(headers.get("traceparent")):
            run_id, how = tid, "traceparent"
        else:
            first_assistant = next(
                (i for i, m in enumerate(messages) if m["role"] == "assistant"), None
            )
            if first_assistant is not None:
                for i in range(len(hashes) - 1, first_assistant - 1, -1):
                    found = self.index.get(hashes[i])
                    if found is not None and found in self.runs:
                        run_id, how = found, "stitched"
                        break
        if run_id is not None and run_id in self.forgotten and run_id not in self.runs:
            # Its earlier part is written and no longer in memory: continue under a new id.
            run_id, how = f"{run_id}~{self._new_id()[-8:]}", how
        specs = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
        return Call(
            run_id or self._new_id(),
            how,
            messages,
            hashes,
            chain,
            specs,
            datetime.now(UTC),
            requested,
        )

    def slot_of(self, run_id: str) -> str | None:
        run = self.runs.get(run_id)
        return run.slot if run is not None else None

    def finish(
        self,
        call: Call,
        *,
        reply: dict[str, Any] | None,
        slot: str,
        model: str,
        provider: str,
        upstream_model: str,
        latency_s: float,
        http_status: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float | None = None,
        error: str | None = None,
        stream: bool = False,
        finish_reason: str | None = None,
    ) -> OpenRun:
        """Add a finished (or failed) call to its run."""
        run = self._open(call.run_id, call.grouped_by)
        now = self.clock()
        run.last_seen = now
        run.dirty = True
        run.calls += 1
        ended = call.started_at + timedelta(seconds=latency_s)
        if run.started_at is None or call.started_at < run.started_at:
            run.started_at = call.started_at
        run.last_end = max(run.last_end or ended, ended)
        if run.slot is None:
            run.slot, run.model, run.provider = slot, model, provider
        failed = error is not None or http_status >= 400
        run.failed_calls += failed
        run.last_call_failed = failed
        run.prompt_tokens += prompt_tokens
        run.completion_tokens += completion_tokens
        run.cost = None if cost is None or run.cost is None else run.cost + cost
        _add_tools(run, call.tools)
        reply_message = record_message(reply, len(call.messages)) if reply else None
        payload: dict[str, Any] = {
            "model": model,
            "upstream_model": upstream_model,
            "slot": slot,
            "provider": provider,
            "requested": call.requested,
            "http_status": http_status,
            "status": "failed" if failed else "succeeded",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "stream": stream,
            "grouped_by": call.grouped_by,
        }
        if finish_reason:
            payload["finish_reason"] = finish_reason
        if error:
            payload["error"] = error[:2000]
        # The transcript follows the calls that extend it; a call that does not (another
        # sub-agent's conversation under the same header or trace) keeps its messages in its
        # own event, so nothing is lost and the transcript stays one conversation.
        reply_key = extend_hash(call.chain, reply_message) if reply_message is not None else None
        n = len(run.messages)
        extends = n == 0 or (len(call.hashes) >= n and call.hashes[n - 1] == run.transcript_hash)
        if extends:
            run.messages = list(call.messages)
            run.transcript_hash = call.hashes[-1] if call.hashes else None
            if reply_message is not None:
                run.transcript_hash = reply_key
                run.messages.append(reply_message)
        else:
            payload["messages"] = call.messages + ([reply_message] if reply_message else [])
        run.events.append(_event("model_call", "gateway", call.started_at, latency_s, payload))
        # Stitching keys: the request (once it holds an assistant turn: a retry of this very
        # call continues the run) and the request with its reply (the next turn).
        if any(m["role"] == "assistant" for m in call.messages) and call.hashes:
            self._index(call.hashes[-1], run.run_id)
        if reply_key is not None:
            self._index(reply_key, run.run_id)
        return run

    def _index(self, key: bytes, run_id: str) -> None:
        self.index[key] = run_id
        self.index.move_to_end(key)
        while len(self.index) > 4 * self.max_open_runs:
            self.index.popitem(last=False)

    def _open(self, run_id: str, how: str) -> OpenRun:
        run = self.runs.get(run_id)
        if run is None:
            now = self.clock()
            run = OpenRun(run_id, how, datetime.now(UTC), now)
            self.runs[run_id] = run
            while len(self.runs) > self.max_open_runs:
                _, old = self.runs.popitem(last=False)
                self._forget(old.run_id)
                if old.dirty:
                    self.evicted.append(self._record(old))
        else:
            self.runs.move_to_end(run_id)
        return run

    def _forget(self, run_id: str) -> None:
        self.forgotten[run_id] = None
        while len(self.forgotten) > 10 * self.max_open_runs:
            self.forgotten.popitem(last=False)

    # -- the run API ----------------------------------------------------------------------------

    def apply(self, run_id: str, event: Any) -> tuple[int, str]:
        """Apply one run-API event. Returns (HTTP status, message): 201 applied, 200 a
        duplicate event id (nothing changes), 400 a bad event, 409 a run written and forgotten."""
        from pydantic import ValidationError

        refused = self._refusal(run_id, event)
        if refused is not None:
            return refused
        kind = event.get("type")
        event_id = event.get("event_id", event.get("id"))
        at = datetime.now(UTC)
        try:
            parsed = _parse_event(kind, event, self.runs.get(run_id))
        except _BadEvent as exc:
            return 400, str(exc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or kind
            return 400, f"{kind}: {where}: {first['msg']}"
        run = self._open(run_id, "header")
        run.last_seen = self.clock()
        run.dirty = True
        _apply_event(run, kind, event, parsed, at)
        if event_id is not None:
            self.events_seen[event_id] = None
            while len(self.events_seen) > 10 * self.max_open_runs:
                self.events_seen.popitem(last=False)
        return 201, "applied"

    def _refusal(self, run_id: str, event: Any) -> tuple[int, str] | None:
        """What every event must be, whatever its type: (status, message) when it is not."""
        if not isinstance(event, Mapping):
            return 400, "an event is a JSON object"
        if not isinstance(run_id, str) or not run_id.strip():
            return 400, "run_id: a non-empty string"
        kind = event.get("type")
        if kind not in EVENT_TYPES:
            return 400, f"type: one of {', '.join(EVENT_TYPES)}, not {kind!r}"
        event_id = event.get("event_id", event.get("id"))
        if event_id is not None and not isinstance(event_id, str):
            return 400, "event_id: a string"
        if event_id is not None and event_id in self.events_seen:
            return 200, "duplicate event_id: already applied"
        if run_id in self.forgotten and run_id not in self.runs:
            return 409, (
                f"run {run_id!r} was written and is no longer held in memory (run_idle_s, "
                "max_open_runs): an event now would replace it with a partial record"
            )
        return None

    # -- writing --------------------------------------------------------------------------------

    def totals(self, run_id: str) -> dict[str, Any] | None:
        """What the run's calls so far add up to (calls, usage, cost as `_record` writes them),
        or None for a run not held. The run API answers a `close` with it, so an agent's driver
        (HttpAgent) knows its run's tokens and cost without reading the landing zone."""
        run = self.runs.get(run_id)
        if run is None:
            return None
        return {
            "calls": run.calls,
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
            },
            "cost_usd": run.cost if run.calls else None,
        }

    def due(self, idle_s: float, everything: bool = False) -> list[dict[str, Any]]:
        """Records of the runs to write now: closed, idle for `idle_s`, pushed out by the size
        bound, or (`everything`, at shutdown) every run with unwritten changes. A written run
        stays in memory (until the size bound pushes it out), so a late event rewrites it whole."""
        now = self.clock()
        out, self.evicted = self.evicted, []
        for run in list(self.runs.values()):
            if run.dirty:
                if everything or run.closed or now - run.last_seen >= idle_s:
                    out.append(self._record(run))
            elif now - run.last_seen >= 2 * idle_s:
                # Written and quiet for another idle period: let it go (late events get 409).
                del self.runs[run.run_id]
                self._forget(run.run_id)
        return out

    def _record(self, run: OpenRun) -> dict[str, Any]:
        """The run as a Run-shaped dict (validated by the recorder, off the event loop)."""
        run.dirty = False
        now = datetime.now(UTC)
        started = run.started_at or run.created
        # A run of events only (no call yet) ends when it is written.
        ended = max(run.last_end or now, started)
        if run.written_end is not None and ended <= run.written_end:
            # Ingest keeps the copy with the later ended_at: a rewrite must be later.
            ended = run.written_end + timedelta(microseconds=1)
        run.written_end = ended
        final_answer = run.final_answer
        last = run.messages[-1] if run.messages else None
        if (
            final_answer is None
            and last
            and last["role"] == "assistant"
            and not last.get("tool_calls")
        ):
            final_answer = last.get("content")
        if run.status:
            status = run.status
        elif run.escalations:
            status = "escalated"
        elif run.verifications:
            status = "succeeded" if run.verifications[-1]["passed"] else "failed"
        elif run.last_call_failed:
            status = "failed"
        else:
            status = "succeeded"
        tags = {"grouped_by": run.grouped_by, **run.tags}
        if run.failed_calls:
            tags["failed_calls"] = str(run.failed_calls)
        if run.cost is None:
            tags["cost"] = "unpriced_model"
        record: dict[str, Any] = {
            "run_id": run.run_id,
            "workflow": self.workflow,
            "agent_version": self.agent_version,
            "provider": run.provider or "unknown",
            "model": run.model or "unknown",
            "slot": run.slot,
            "traffic": "production",
            "status": status,
            "started_at": started.isoformat(),
            "ended_at": ended.isoformat(),
            # Copies: the recorder reads them in its thread while later calls grow the run.
            "messages": list(run.messages),
            "tools": list(run.tools.values()),
            "events": list(run.events),
            "verifications": list(run.verifications),
            "recoveries": list(run.recoveries),
            "escalations": list(run.escalations),
            "final_answer": final_answer,
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
            },
            "latency_s": (
                round((run.last_end - run.started_at).total_seconds(), 6)
                if run.last_end and run.started_at
                else None
            ),
            "cost_usd": run.cost if run.calls else None,
            "tags": tags,
            **run.fields,
        }
        return record


def _event(
    kind: str, agent: str, at: datetime, duration_s: float | None, payload: dict[str, Any]
) -> dict[str, Any]:
    event = {"type": kind, "agent": agent, "at": at.isoformat(), "payload": payload}
    if duration_s is not None:
        event["duration_s"] = round(max(duration_s, 0.0), 6)
    return event


class _BadEvent(ValueError):
    """A run-API event whose fields are wrong: the message names the field (a 400)."""


def _parse_event(kind: str, event: Mapping[str, Any], existing: OpenRun | None) -> dict[str, Any]:
    """The checked values of one event of type `kind` (raises _BadEvent or pydantic's
    ValidationError when a field is wrong); nothing is changed yet."""
    from autoretrain.runs.schema import Escalation, RecoveryAction, Verification

    if kind == "verification":
        count = len(existing.verifications) if existing else 0
        item = Verification(
            verifier=str(event.get("verifier") or "agent"),
            passed=event.get("passed"),
            score=event.get("score", 1.0 if event.get("passed") else 0.0),
            feedback=str(event.get("feedback") or ""),
            attempt=event.get("attempt", count),
        ).model_dump(mode="json")
        return {"item": item}
    if kind == "recovery":
        count = len(existing.recoveries) if existing else 0
        item = RecoveryAction(
            attempt=event.get("attempt", count + 1),
            reason=event.get("reason"),
            action=str(event.get("action") or "retry_with_feedback"),
        ).model_dump(mode="json")
        return {"item": item}
    if kind == "escalation":
        return {"item": Escalation(reason=event.get("reason")).model_dump(mode="json")}
    if kind == "final_answer":
        answer = event.get("final_answer", event.get("content"))
        if not isinstance(answer, str):
            raise _BadEvent("final_answer: a string")
        return {"answer": answer}
    if kind in ("scenario", "task"):
        return _parse_scenario(event)
    if kind == "metadata":
        metadata = event.get("metadata")
        if not isinstance(metadata, Mapping):
            raise _BadEvent("metadata: a JSON object")
        return {"metadata": metadata}
    if kind == "error":
        what = event.get("error", event.get("message"))
        if not isinstance(what, str) or not what:
            raise _BadEvent("error: a non-empty string")
        return {"what": what}
    if kind == "close":
        status = event.get("status")
        if status is not None and status not in CLOSING_STATUSES:
            raise _BadEvent(f"status: one of {sorted(CLOSING_STATUSES)}, not {status!r}")
        return {"status": status}
    return {}


def _parse_scenario(event: Mapping[str, Any]) -> dict[str, Any]:
    scenario = event.get("scenario_id", event.get("task"))
    if not isinstance(scenario, str) or not scenario:
        raise _BadEvent("scenario_id (or task): a non-empty string")
    for key in ("instance_hash", "category"):
        if event.get(key) is not None and not isinstance(event.get(key), str):
            raise _BadEvent(f"{key}: a string")
    seed = event.get("instance_seed", event.get("seed"))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _BadEvent("instance_seed: an integer")
    traffic = event.get("traffic")
    if traffic is not None and traffic not in TRAFFIC:
        raise _BadEvent(f"traffic: one of {', '.join(TRAFFIC)}, not {traffic!r}")
    tags = event.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise _BadEvent("tags: a JSON object")
    return {"scenario": scenario, "seed": seed, "traffic": traffic, "tags": tags}


def _apply_event(
    run: OpenRun, kind: str, event: Mapping[str, Any], parsed: dict[str, Any], at: datetime
) -> None:
    """Change the open run by one checked event."""
    if kind == "verification":
        item = parsed["item"]
        run.verifications.append(item)
        run.events.append(_event("verification", item["verifier"], at, None, item))
    elif kind == "recovery":
        run.recoveries.append(parsed["item"])
        run.events.append(_event("recovery", "agent", at, None, dict(parsed["item"])))
    elif kind == "escalation":
        run.escalations.append(parsed["item"])
        run.events.append(_event("escalation", "agent", at, None, dict(parsed["item"])))
    elif kind == "final_answer":
        run.final_answer = parsed["answer"]
    elif kind in ("scenario", "task"):
        run.fields["scenario_id"] = parsed["scenario"]
        for key in ("instance_hash", "category"):
            if event.get(key) is not None:
                run.fields[key] = event[key]
        if parsed["seed"] is not None:
            run.fields["instance_seed"] = parsed["seed"]
        if parsed["traffic"] is not None:
            # Self-play and the replay through an agent's /run say what the run is; a
            # run without it stays production traffic.
            run.fields["traffic"] = parsed["traffic"]
        for key, value in (parsed["tags"] or {}).items():
            run.tags[str(key)] = value if isinstance(value, str) else json.dumps(value)
    elif kind == "metadata":
        for key, value in parsed["metadata"].items():
            run.tags[str(key)] = value if isinstance(value, str) else json.dumps(value)
    elif kind == "error":
        # What went wrong outside the model calls (an agent that timed out or answered
        # garbage), as the schema's error event, so the replay can count it.
        payload = {"error": parsed["what"][:2000]}
        if isinstance(event.get("reason"), str):
            payload["reason"] = event["reason"][:200]
        run.events.append(_event("error", str(event.get("agent") or "agent"), at, None, payload))
    elif kind == "close":
        run.closed = True
        run.status = parsed["status"]


def _add_tools(run: OpenRun, specs: list[dict[str, Any]]) -> None:
    """The tools a call offered, by function name (the first spec of a name stays)."""
    for spec in specs:
        name = (
            (spec.get("function") or {}).get("name")
            if isinstance(spec.get("function"), dict)
            else None
        )
        run.tools.setdefault(str(name or len(run.tools)), dict(spec))
