"""The SQL checks in ingest.py against the pydantic model they mirror.

Every record the store accepts must load as a `Run` (so `records()` never fails), and every
record pydantic rejects must be quarantined. The SQL is deliberately stricter than pydantic's
lax mode in a few places (a number given as a string, "1" for an integer): those land in
quarantine rather than being silently coerced.
"""

from __future__ import annotations

import copy
import json

from pydantic import ValidationError

from autoretrain.runs.ingest import FIELDS
from autoretrain.runs.schema import Run
from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.test_ingest_bad_input import DAY, record

VALUES = [5, -3, 1.5, "x", "2026-03-01T00:00:00Z", True, None, [], [1], {}, {"a": 1}]
NESTED = [
    ("messages", [{"role": "user"}]),
    ("messages", [{"role": "user", "content": 5}]),
    ("messages", [{"content": "no role"}]),
    ("messages", ["not an object"]),
    ("messages", [{"role": "assistant", "tool_calls": "x"}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"id": "a", "function": {}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": None, "content": None}]),
    ("events", [{"type": 3}]),
    ("events", [{"type": "x", "payload": []}]),
    ("events", [{"type": "x", "at": "soon"}]),
    ("events", [{"type": "x", "at": "2026-03-01T00:00:00Z", "payload": {}, "extra": 1}]),
    ("verifications", [{"verifier": "v", "passed": True, "score": 1.5}]),
    ("verifications", [{"verifier": "v", "passed": True, "score": 0}]),
    ("verifications", [{"verifier": "v", "score": 1}]),
    ("recoveries", [{"attempt": "one", "reason": "r"}]),
    ("recoveries", [{"attempt": 1, "reason": "r"}]),
    ("escalations", [{"reason": None}]),
    ("escalations", [{"reason": "help"}]),
    ("tags", {"k": "v"}),
]


def variants(make=record) -> list[dict]:
    out = []
    for field in FIELDS:
        for value in VALUES:
            rec = copy.deepcopy(make(f"v{len(out)}"))
            if "." in field.name:
                top, sub = field.name.split(".")
                rec[top] = {**rec[top], sub: value}
            else:
                rec[field.name] = value
            out.append(rec)
    for name, value in NESTED:
        out.append({**make(f"v{len(out)}"), name: value})
    missing = make(f"v{len(out)}")
    del missing["started_at"]
    return [*out, missing]


def pydantic_accepts(rec: dict) -> bool:
    try:
        Run.model_validate_json(json.dumps(rec))
    except ValidationError:
        return False
    return True


def test_store_verdicts_agree_with_the_model(settings):
    recs = variants()
    path = settings.paths.landing_day(DAY) / "part-a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [path])
        stored = set(store.runs()["run_id"].to_list())
        for run in store.records():  # every stored record loads as a Run
            assert isinstance(run, Run)
    rejected_by_model = [r for r in recs if not pydantic_accepts(r)]
    assert rejected_by_model, "the variants should include invalid records"
    leaked = [
        r["run_id"]
        for r in rejected_by_model
        if isinstance(r.get("run_id"), str) and r["run_id"] in stored
    ]
    assert leaked == []
    # The stricter-than-lax cases stay few: most valid variants are stored.
    accepted = [r for r in recs if pydantic_accepts(r) and isinstance(r.get("run_id"), str)]
    assert len([r for r in accepted if r["run_id"] in stored]) >= 0.6 * len(accepted)


def complete(run_id: str, **fields) -> dict:
    """A record as the tracker writes it: every field with a default is present."""
    return json.loads(Run.model_validate(record(run_id, **fields)).to_json())


ODD_BUT_VALID = [
    {"category": "caf\u00e9 \u2615", "final_answer": 'quote " and \\ backslash'},
    {"scenario_id": "\\u00e9 escaped", "model": "m\u0301odel"},
    {"tags": {}, "slot": None, "ended_at": None, "latency_s": 3, "cost_usd": 1e-9},
    {"events": [], "verifications": [], "messages": []},
    {"schema_version": 1, "usage": {"prompt_tokens": 0, "completion_tokens": 123456789012}},
    {"recoveries": [{"attempt": 2, "reason": "retry", "at": "2026-03-01T10:00:00+01:00"}]},
    {"escalations": [{"reason": "stuck", "at": "2026-03-01 10:00:00"}]},
    {"started_at": "2026-03-01T10:00:00.123456-05:30"},
]


AT = "2026-03-01T10:00:00Z"
EVENT = {"type": "x", "agent": "a", "at": AT, "payload": {}}
# Nested elements complete but for one flaw: the fast path must not confirm them.
COMPLETE_BUT_BAD = [
    {"events": [EVENT, {**EVENT, "type": 3}]},
    {"events": [{**EVENT, "at": "soon"}]},
    {"events": [{**EVENT, "at": None}]},
    {"events": [{**EVENT, "payload": [1]}]},
    {"events": [{**EVENT, "payload": None}]},
    {"events": ["not an object"]},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"role": None, "content": "x"}]},
    {"messages": [{"role": "user", "content": {"text": "x"}}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": 2}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": {"id": "a"}}]},
    {"tools": [{"type": "function"}, "calc"]},
    {"verifications": [{"verifier": "v", "passed": 1, "score": 1}]},
    {"verifications": [{"verifier": "v", "passed": True, "score": "1"}]},
    {"verifications": [{"verifier": None, "passed": True, "score": 0.5}]},
    {"recoveries": [{"attempt": "1", "reason": "r"}]},
    {"recoveries": [{"attempt": 1, "reason": 5}]},
    {"recoveries": [{"attempt": 10**20, "reason": "r"}]},
    {"escalations": [{"reason": ["r"]}]},
    {"tags": {"k": 1}},
    {"tags": {"k": None}},
    {"run_id": "   "},
    {"usage": {"prompt_tokens": 10**19, "completion_tokens": 1}},
]


def test_fast_path_agrees_with_the_full_checks():
    """Every line the fast path confirms is one the full checks accept, with equal columns."""
    import duckdb
    import pyarrow as pa

    from autoretrain.runs.ingest import MACROS, checked_sql, fast_sql

    recs = [complete(f"ok{i}", **extra) for i, extra in enumerate(ODD_BUT_VALID)]
    recs += variants(complete)  # the corrupted variants, on complete records
    recs += [{**complete(f"bad{i}"), **flaw} for i, flaw in enumerate(COMPLETE_BUT_BAD)]
    texts = [json.dumps(r) for r in recs] + [json.dumps(r, ensure_ascii=False) for r in recs]
    lines = pa.table(
        {
            "file_idx": [0] * len(texts),
            "line": list(range(1, len(texts) + 1)),
            "text": texts,
            "last": [False] * len(texts),
        }
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(MACROS)
    con.register("lines", lines)
    fast = con.execute(f"SELECT * EXCLUDE (last) FROM ({fast_sql('lines')}) ORDER BY line")
    names = [d[0] for d in fast.description]
    fast_rows = fast.fetchall()
    full_rows = con.execute(
        f"SELECT * EXCLUDE (last) FROM ({checked_sql('lines')}) ORDER BY line"
    ).fetchall()
    problem = names.index("problem")
    confirmed = [(f, c) for f, c in zip(fast_rows, full_rows, strict=True) if f[problem] is None]
    assert len(confirmed) >= 100  # the ordinary records take the fast path
    for f, c in confirmed:
        assert dict(zip(names, f, strict=True)) == dict(zip(names, c, strict=True))
    flawed = {f"bad{i}" for i in range(len(COMPLETE_BUT_BAD))}
    assert not [f for f in fast_rows if f[problem] is None and f[names.index("run_id")] in flawed]
