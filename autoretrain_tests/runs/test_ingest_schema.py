"""Ingest against the pydantic model that defines a good record (runs/schema.py).

The store keeps exactly what the schema accepts: the fast path (SQL derived from the schema in
runs/rules.py) confirms only records pydantic accepts, with the same column values as the
schema's own reading, and pydantic judges every other line.
"""

from __future__ import annotations

import copy
import json

from pydantic import ValidationError

from autoretrain.runs.schema import Run
from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.test_ingest_bad_input import DAY, record

VALUES = [5, -3, 1.5, "x", "2026-03-01T00:00:00Z", True, None, [], [1], {}, {"a": 1}, "1", 1e300]
# Every field of Run, and the two of usage, as a dotted name.
FIELDS = [n for n in Run.model_fields if n != "usage"] + [
    "usage.prompt_tokens",
    "usage.completion_tokens",
]
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
    for name in FIELDS:
        for value in VALUES:
            rec = copy.deepcopy(make(f"v{len(out)}"))
            if "." in name:
                top, sub = name.split(".")
                rec[top] = {**rec[top], sub: value}
            else:
                rec[name] = value
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


def test_store_keeps_exactly_what_the_model_accepts(settings):
    recs = variants()
    path = settings.paths.landing_day(DAY) / "part-a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [path])
        stored = set(store.runs()["run_id"].to_list())
        for run in store.records():  # every stored record loads as a Run
            assert isinstance(run, Run)
    accepted = {r["run_id"] for r in recs if pydantic_accepts(r)}
    assert len(accepted) < len(recs), "the variants should include invalid records"
    assert stored == accepted


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
    {"started_at": "2026-03-01T10:00:00.123456-05:30", "ended_at": None},
    {"verifications": [{"verifier": "v", "passed": True, "score": 1}]},  # defaults left out
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
    {"usage": "lots"},
    {"usage": {}},
    {"verifications": [{"verifier": "v", "passed": True, "score": 1, "feedback": None}]},
    {"verifications": [{"verifier": "v", "passed": True, "score": 1, "attempt": -1}]},
    {"messages": ["hello"]},
    {"messages": 5},
    {"events": [{**EVENT, "agent": None}]},
    {"ended_at": "2026-03-01T09:00:00Z"},
    {"started_at": "1970-01-01T00:00:00+01:00", "ended_at": None},
    {"latency_s": -0.5},
]


# Flaws only a text edit can make (json.dumps never writes them): the reader must catch them.
RAW_FLAWS = [
    ('"feedback": ""', '"\\u0066eedback": null'),  # a null for a defaulted key, spelled escaped
    ('"feedback": ""', '"feedback" : null'),
    ('"workflow": "executor"', '"workflow": null'),
    ('"tags": {}', '"tags": {"a": 1, "b": nan}'),
    ('"tags": {}', '"tags": {},'),
    ('"tags": {}', '"tags": {}, "deep": ' + "[" * 250 + "]" * 250),
    ('"latency_s": 1.0', '"latency_s": 1e999'),
    ('"started_at": "2026-03-01T10:00:00Z"', '"started_at": "2026-02-29T10:00:00Z"'),
]


def test_fast_path_confirms_only_what_the_model_accepts():
    """Every line the fast path confirms is one pydantic accepts, and its columns equal those
    read from pydantic's own serialisation of it (the path every other good line takes)."""
    import duckdb
    import pyarrow as pa

    from autoretrain.runs.ingest import _chunk
    from autoretrain.runs.rules import fast_sql

    recs = [complete(f"ok{i}", **extra) for i, extra in enumerate(ODD_BUT_VALID)]
    recs += variants(complete)  # the corrupted variants, on complete records
    recs += [{**complete(f"bad{i}"), **flaw} for i, flaw in enumerate(COMPLETE_BUT_BAD)]
    texts = [json.dumps(r) for r in recs] + [json.dumps(r, ensure_ascii=False) for r in recs]
    texts += [
        json.dumps(complete(f"bad-raw{i}")).replace(*edit) for i, edit in enumerate(RAW_FLAWS)
    ]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def run(texts: list[str], trusted: bool) -> tuple[list[str], list[tuple]]:
        # Cut into lines as ingest's reader does (it marks which lines are plain).
        body = "\n".join(texts).encode()
        lines = _chunk(body, 0, last=True, max_record_bytes=10**9).table
        lines = lines.add_column(0, "file_idx", pa.array([0] * len(lines), pa.int32()))
        con.register("lines", lines)
        cur = con.execute(
            f"SELECT * EXCLUDE (last) FROM ({fast_sql('lines', trusted)}) ORDER BY line"
        )
        names = [d[0] for d in cur.description]
        return names, cur.fetchall()

    names, rows = run(texts, trusted=False)
    problem = names.index("problem")
    confirmed = [(t, row) for t, row in zip(texts, rows, strict=True) if row[problem] is None]
    assert len(confirmed) >= 100  # the ordinary records take the fast path
    models = [Run.model_validate_json(t) for t, _ in confirmed]  # raises if one is refused
    _, typed = run([m.model_dump_json() for m in models], trusted=True)
    for (_, fast), schema_row in zip(confirmed, typed, strict=True):
        fast_cols = dict(zip(names, fast, strict=True))
        schema_cols = dict(zip(names, schema_row, strict=True))
        for name in ("line", "events"):  # line numbers differ; events compared below
            fast_cols.pop(name), schema_cols.pop(name)
        assert fast_cols == schema_cols
    flawed = {f"bad{i}" for i in range(len(COMPLETE_BUT_BAD))}
    assert not [f for f in rows if f[problem] is None and f[names.index("run_id")] in flawed]


def test_rules_refuse_a_schema_they_do_not_understand():
    """A new type or validator in the schema fails loudly until rules.py learns it."""
    import pytest
    from pydantic import BaseModel, field_validator

    from autoretrain.runs.rules import _model, _Namer

    class WithSet(BaseModel):
        run_id: str
        ids: set[int]

    class WithValidator(BaseModel):
        run_id: str

        @field_validator("run_id")
        @classmethod
        def _narrow(cls, v: str) -> str:
            return v

    for model in (WithSet, WithValidator):
        with pytest.raises(TypeError, match="rules.py"):
            _model(model, "r", _Namer())
