"""A corpus of hostile and careless input for ingest and import (issue 21, items 3-5).

`LINES` are single JSONL lines, each with what must happen to it: "bad" lines are refused by the
schema (and so quarantined by ingest and reported by import), "good" ones are odd but valid and
must be stored. `write_landing_day` lays them out in one landing day together with the entries
that are not files (a directory, a symlink loop, a dangling symlink named part-*.jsonl), a file
that starts with a UTF-8 BOM and an empty file, and says where every line went.
Used by autoretrain_tests/runs/test_bad_input_corpus.py and bench/hardening_ingest.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DAY = "2026-03-01"
AT = f"{DAY}T10:00:00Z"


def record(run_id: str, **fields) -> dict:
    """A complete, valid run as the tracker writes it (every field with a default present, so
    an unflawed record takes ingest's fast path and a flawed one is caught there first)."""
    base = {
        "schema_version": 1,
        "run_id": run_id,
        "workflow": "executor",
        "agent_version": "1.0",
        "provider": "local",
        "scenario_id": "calc-add",
        "category": "arithmetic",
        "model": "tiny",
        "slot": "primary",
        "traffic": "selfplay",
        "status": "succeeded",
        "started_at": AT,
        "ended_at": f"{DAY}T10:00:01Z",
        "messages": [
            {"role": "user", "content": "2+2?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calc", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "calc", "content": "4"},
            {"role": "assistant", "content": "4"},
        ],
        "tools": [{"type": "function", "function": {"name": "calc"}}],
        "events": [{"type": "run_started", "agent": "tracker", "at": AT, "payload": {}}],
        "verifications": [
            {"verifier": "exact", "passed": True, "score": 1.0, "feedback": "", "attempt": 0}
        ],
        "recoveries": [
            {"attempt": 1, "reason": "retry", "action": "retry_with_feedback", "at": AT}
        ],
        "escalations": [{"reason": "stuck", "at": AT}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        "latency_s": 1.0,
        "cost_usd": 0.001,
        "tags": {"seed": "0"},
    }
    base.update(fields)
    return base


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class Line:
    kind: str  # what is wrong with it (or odd about it)
    text: bytes  # the line, without its newline
    good: bool  # must be stored (True) or quarantined with a reason (False)


def _rec(kind: str, good: bool = False, **fields) -> Line:
    return Line(kind, json.dumps(record(kind, **fields)).encode(), good)


def _raw(kind: str, replace: tuple[str, str], good: bool = False, **fields) -> Line:
    """A record whose JSON text is edited after serialising (literals json.dumps never writes)."""
    text = json.dumps(record(kind, **fields))
    assert replace[0] in text, (kind, replace[0])
    return Line(kind, text.replace(replace[0], replace[1], 1).encode(), good)


def _with(path: str, value, base: dict | None = None) -> dict:
    """record fields with one nested value replaced: path like 'messages.3.name'."""
    rec = json.loads(json.dumps(base or record("x")))
    *parents, leaf = path.split(".")
    target = rec
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if isinstance(target, list):
        target[int(leaf)] = value
    else:
        target[leaf] = value
    del rec["run_id"]
    return rec


MESSAGE = record("x")["messages"]

LINES: list[Line] = [
    # -- impossible values (they passed every gate before) --
    _rec("negative latency", latency_s=-1.0),
    _raw("infinite latency", ('"latency_s": 1.0', '"latency_s": Infinity')),
    _raw("negative infinite latency", ('"latency_s": 1.0', '"latency_s": -Infinity')),
    _raw("NaN latency", ('"latency_s": 1.0', '"latency_s": NaN')),
    _raw("overflowing latency 1e999", ('"latency_s": 1.0', '"latency_s": 1e999')),
    _rec("negative cost", cost_usd=-0.5),
    _raw("infinite cost", ('"cost_usd": 0.001', '"cost_usd": Infinity')),
    _rec("negative prompt tokens", usage={"prompt_tokens": -5, "completion_tokens": 2}),
    _rec("negative completion tokens", usage={"prompt_tokens": 5, "completion_tokens": -2}),
    _raw("infinite token count", ('"completion_tokens": 2', '"completion_tokens": Infinity')),
    _rec("end before start", ended_at=f"{DAY}T09:00:00Z"),
    _rec("negative event duration", **_with("events.0.duration_s", -3.0)),
    _raw("NaN verification score", ('"score": 1.0', '"score": NaN')),
    _rec("negative recovery attempt", **_with("recoveries.0.attempt", -1)),
    _rec("negative verification attempt", **_with("verifications.0.attempt", -1)),
    # -- timestamps out of range or not ISO 8601 --
    _rec("started_at infinity", started_at="infinity", ended_at=None),
    _rec("started_at -infinity", started_at="-infinity"),
    _rec("started_at year 0", started_at="0000-01-01T00:00:00Z"),
    _rec("started_at year 10000", started_at="10000-01-01T00:00:00Z", ended_at=None),
    _rec("started_at before 1970", started_at="1969-12-31T23:59:59Z"),
    _rec(
        "started_at at the end of year 9999", started_at="9999-12-31T23:00:00-05:00", ended_at=None
    ),
    _rec("started_at epoch keyword", started_at="epoch"),
    _rec("started_at with a zone name", started_at=f"{DAY} 10:00:00 America/New_York"),
    _rec("started_at hour 24", started_at=f"{DAY}T24:00:00Z", ended_at=None),
    _rec("started_at February 30", started_at="2026-02-30T10:00:00Z"),
    _rec("ended_at infinity", ended_at="infinity"),
    _rec("ended_at year 10000", ended_at="10000-01-01T00:00:00Z"),
    _rec("event at infinity", **_with("events.0.at", "infinity")),
    _rec("event at year 0", **_with("events.0.at", "0000-06-01T00:00:00Z")),
    _rec("recovery at year 10000", **_with("recoveries.0.at", "10000-01-01T00:00:00Z")),
    _rec("escalation at infinity", **_with("escalations.0.at", "infinity")),
    # -- wrong nested types --
    _rec("message name is a number", **_with("messages.2.name", 5)),
    _rec("message tool_call_id is a number", **_with("messages.2.tool_call_id", 5)),
    _rec("message content is an object", **_with("messages.0.content", {"text": "hi"})),
    _rec("message is a string", **_with("messages.0", "hello")),
    _rec("message role unknown", **_with("messages.0.role", "robot")),
    _rec("tool call arguments a number", **_with("messages.1.tool_calls.0.function.arguments", 5)),
    _rec("tool call type not function", **_with("messages.1.tool_calls.0.type", "other")),
    _rec("tool call without function", **_with("messages.1.tool_calls.0.function", None)),
    _rec("tool call id a number", **_with("messages.1.tool_calls.0.id", 7)),
    _rec("tool_calls an object", **_with("messages.1.tool_calls", {"id": "c1"})),
    _rec("event agent a number", **_with("events.0.agent", 5)),
    _rec("event type a number", **_with("events.0.type", 3)),
    _rec("event duration a word", **_with("events.0.duration_s", "slow")),
    _rec("event payload a list", **_with("events.0.payload", [1])),
    _rec("event a number", **_with("events.0", 1)),
    _rec("verification feedback a number", **_with("verifications.0.feedback", 5)),
    _rec("verification passed a word", **_with("verifications.0.passed", "maybe")),
    _rec("recovery action a number", **_with("recoveries.0.action", 5)),
    _rec("escalation reason null", **_with("escalations.0.reason", None)),
    _rec("tag value a number", tags={"seed": 0}),
    _rec("tool not an object", tools=["calc"]),
    _rec("usage a string", usage="lots"),
    _rec("messages a string", messages="hello"),
    _rec("schema_version unknown", schema_version=2),
    _rec("traffic unknown", traffic="batch"),
    _rec("model null", model=None),
    # -- run ids no one can look up --
    Line("run_id empty", json.dumps(record("")).encode(), False),
    Line("run_id blank", json.dumps(record("   ")).encode(), False),
    Line("run_id a no-break space", json.dumps(record("\u00a0")).encode(), False),
    Line("run_id a number", json.dumps({**record("x"), "run_id": 17}).encode(), False),
    Line(
        "run_id missing",
        json.dumps({k: v for k, v in record("x").items() if k != "run_id"}).encode(),
        False,
    ),
    # -- absurd nesting --
    _raw("10,000-deep list in an unknown field", ('"tags"', f'"deep": {nested(10_000)}, "tags"')),
    _raw("10,000-deep payload", ('"payload": {}', f'"payload": {{"x": {nested(10_000)}}}')),
    _raw("250-deep list in a tool", ('"tools": [', f'"tools": [{{"x": {nested(250)}}}, ')),
    _raw(
        "300-deep object in a message",
        ('"content": "2+2?"', '"content": "2+2?", "m": ' + '{"a":' * 300 + "1" + "}" * 300),
    ),
    # -- JSON that DuckDB's reader takes and pydantic's refuses --
    _raw("trailing comma in an object", ('"tags": {"seed": "0"}', '"tags": {"seed": "0",}')),
    _raw("trailing comma in a list", ('"tools": [', '"tools": [{"x": [1, 2,]}, ')),
    _raw("nan literal in an unknown field", ('"tags"', '"ratio": nan, "tags"')),
    _raw("inf literal in a payload", ('"payload": {}', '"payload": {"x": inf}')),
    _raw("lone high surrogate escape", ('"content": "4"}', '"content": "4\\ud800"}')),
    _raw("lone low surrogate escape", ('"content": "4"}', '"content": "\\udc00x"}')),
    Line(
        "bytes that are not UTF-8",
        json.dumps(record("x")).encode().replace(b'"4"', b'"\xff\xfe"', 1),
        False,
    ),
    Line(
        "overlong UTF-8", json.dumps(record("x")).encode().replace(b'"4"', b'"\xc0\xaf"', 1), False
    ),
    Line(
        "encoded lone surrogate",
        json.dumps(record("x")).encode().replace(b'"4"', b'"\xed\xa0\x80"', 1),
        False,
    ),
    Line(
        "a BOM in the middle of a file",
        b"\xef\xbb\xbf" + json.dumps(record("bom-mid")).encode(),
        False,
    ),
    Line("invalid JSON", b'{"run_id": "x", oops}', False),
    Line("a JSON list", b"[1, 2]", False),
    Line("a JSON string", b'"text"', False),
    # -- odd but valid: must be stored --
    _rec(
        "numbers as strings",
        good=True,
        latency_s="1.5",
        usage={"prompt_tokens": "10", "completion_tokens": 2},
    ),
    _rec("naive timestamps", good=True, started_at=f"{DAY} 10:00:00", ended_at=f"{DAY}T10:00:05"),
    _rec(
        "offset timestamps",
        good=True,
        started_at=f"{DAY}T12:00:00+02:00",
        ended_at=f"{DAY}T10:00:01.5Z",
    ),
    _rec(
        "seven fractional digits", good=True, started_at=f"{DAY}T10:00:00.1234567Z", ended_at=None
    ),
    _rec("ended exactly when started", good=True, ended_at=AT),
    _rec(
        "zero latency, cost and tokens",
        good=True,
        latency_s=0,
        cost_usd=0,
        usage={"prompt_tokens": 0, "completion_tokens": 0},
    ),
    _rec(
        "arguments given as an object",
        good=True,
        **_with("messages.1.tool_calls.0.function.arguments", {"a": 1}),
    ),
    _rec(
        "unicode everywhere",
        good=True,
        category="caf\u00e9 \u2615",
        final_answer="\U0001f600 \u2028",
    ),
    _rec("a surrogate pair escape", good=True, final_answer="\U0001f600"),
    _raw(
        "150-deep list in an unknown field", ('"tags"', f'"deep": {nested(150)}, "tags"'), good=True
    ),
    _raw(
        "210 brackets but shallow",
        ('"tags"', '"many": [' + ",".join(["[]"] * 210) + '], "tags"'),
        good=True,
    ),
    _raw(
        "',}' inside a string",
        ('"content": "2+2?"', '"content": "a, } and [1, ] and x: inf]"'),
        good=True,
    ),
    _raw("whitespace around values", ('"latency_s": 1.0', '"latency_s" :  1.0 '), good=True),
    Line(
        "only required fields",
        json.dumps({"run_id": "only required fields", "started_at": AT}).encode(),
        True,
    ),
    _rec("defaults left out", good=True, workflow=None, traffic=None),
    _rec("unknown fields kept", good=True, vendor={"trace": [1, {"x": None}]}),
]


def _lines() -> list[Line]:
    out = []
    for ln in LINES:
        # `defaults left out` means absent, not null
        if ln.kind == "defaults left out":
            rec = json.loads(ln.text)
            rec = {k: v for k, v in rec.items() if v is not None}
            ln = Line(ln.kind, json.dumps(rec).encode(), ln.good)
        out.append(ln)
    return out


CORPUS = _lines()
NOT_FILES = ("a directory", "a symlink loop", "a dangling symlink")


@dataclass
class Placed:
    kind: str
    file: str  # relative to the landing root, as the store names it
    line: int  # 0: the whole entry
    good: bool
    run_id: str | None


def write_landing_day(landing: Path, day: str = DAY) -> list[Placed]:
    """Lay the corpus out under landing/date=<day>/: every bad line between two good ones, the
    entries that are not files, a BOM file and an empty file. Returns where everything is."""
    folder = landing / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    rel = f"date={day}"
    placed: list[Placed] = []
    lines: list[bytes] = []
    for i, case in enumerate(CORPUS):
        good = json.dumps(record(f"good-{i}")).encode()
        lines.append(good)
        placed.append(
            Placed("good record", f"{rel}/part-b-corpus.jsonl", len(lines), True, f"good-{i}")
        )
        lines.append(case.text)
        run_id = case.kind if case.good else None
        if case.kind == "only required fields":
            run_id = "only required fields"
        placed.append(
            Placed(case.kind, f"{rel}/part-b-corpus.jsonl", len(lines), case.good, run_id)
        )
    lines.append(b"")  # CRLF and a final newline: ordinary
    (folder / "part-b-corpus.jsonl").write_bytes(b"\r\n".join(lines[:-1]) + b"\n")
    # A BOM at the start: its first record is good.
    (folder / "part-a-bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(record("after-bom")).encode() + b"\n"
    )
    placed.append(
        Placed(
            "a UTF-8 BOM at the start of a file", f"{rel}/part-a-bom.jsonl", 1, True, "after-bom"
        )
    )
    (folder / "part-c-empty.jsonl").write_bytes(b"")
    placed.append(Placed("an empty file", f"{rel}/part-c-empty.jsonl", 0, False, None))
    (folder / "part-d-dir.jsonl").mkdir(exist_ok=True)
    placed.append(Placed("a directory", f"{rel}/part-d-dir.jsonl", 0, False, None))
    loop = folder / "part-e-loop.jsonl"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)  # points at itself
    placed.append(Placed("a symlink loop", f"{rel}/part-e-loop.jsonl", 0, False, None))
    dangling = folder / "part-f-dangling.jsonl"
    if not dangling.is_symlink():
        os.symlink(folder / "gone.jsonl", dangling)
    placed.append(Placed("a dangling symlink", f"{rel}/part-f-dangling.jsonl", 0, False, None))
    # And a good file after all of them: nothing after a bad entry is lost.
    (folder / "part-g-after.jsonl").write_bytes(json.dumps(record("last-file")).encode() + b"\n")
    placed.append(
        Placed("a file after the bad entries", f"{rel}/part-g-after.jsonl", 1, True, "last-file")
    )
    return placed
