"""Every kind of bad input from issue 2: quarantined with file, line and reason; the good
records of the same file are still ingested; nothing fails the day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoretrain.runs.store import RunStore

DAY = "2026-03-01"


def record(run_id: str, **fields) -> dict:
    base = {
        "schema_version": 1,
        "run_id": run_id,
        "scenario_id": "calc-add",
        "category": "arithmetic",
        "model": "tiny",
        "slot": "primary",
        "traffic": "selfplay",
        "status": "succeeded",
        "started_at": f"{DAY}T10:00:00Z",
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
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
            {"role": "assistant", "content": "4"},
        ],
        "events": [{"type": "run_started", "agent": "tracker", "at": f"{DAY}T10:00:00Z"}],
        "verifications": [{"verifier": "exact", "passed": True, "score": 1.0}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        "latency_s": 1.0,
    }
    base.update(fields)
    return base


def line(run_id: str, **fields) -> bytes:
    return json.dumps(record(run_id, **fields)).encode() + b"\n"


@pytest.fixture
def store(settings):
    with RunStore.from_settings(settings) as s:
        yield s


def write(settings, name: str, data: bytes) -> Path:
    path = settings.paths.landing_day(DAY) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ingest_one(store, settings, data: bytes, name: str = "part-a.jsonl"):
    path = write(settings, name, data)
    report = store.ingest_day(DAY, [path])
    q = store.quarantine().to_dicts()
    return report, q


def only_reason(q, line_no: int) -> str:
    rows = [r for r in q if r["line"] == line_no]
    assert len(rows) == 1, q
    assert rows[0]["file"] == f"date={DAY}/part-a.jsonl"
    return rows[0]["reason"]


def test_invalid_json(store, settings):
    report, q = ingest_one(
        store, settings, line("good1") + b'{"run_id": "x", oops}\n' + line("good2")
    )
    assert only_reason(q, 2).startswith("invalid JSON: ")
    assert report.inserted == 2 and report.quarantined == 1


def test_truncated_last_line(store, settings):
    report, q = ingest_one(store, settings, line("good1") + line("cut")[:40])
    assert "truncated last line" in only_reason(q, 2)
    assert report.inserted == 1


def test_empty_lines_are_skipped_and_numbering_holds(store, settings):
    report, q = ingest_one(store, settings, b"\n" + line("good1") + b"  \r\n\n" + b"[1]\n")
    assert report.blank_lines == 3
    assert only_reason(q, 5).startswith("not an object")
    assert report.inserted == 1


def test_empty_file(store, settings):
    empty = write(settings, "part-a.jsonl", b"")
    good = write(settings, "part-b.jsonl", line("good1"))
    report = store.ingest_day(DAY, [empty, good])
    q = store.quarantine().to_dicts()
    assert [(r["file"], r["line"]) for r in q] == [(f"date={DAY}/part-a.jsonl", 0)]
    assert q[0]["reason"].startswith("empty file")
    assert report.inserted == 1


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_value_not_an_object(store, settings, value):
    report, q = ingest_one(store, settings, value + b"\n" + line("good1"))
    assert only_reason(q, 1).startswith("not an object")
    assert report.inserted == 1


def test_missing_or_non_string_run_id(store, settings):
    no_id = record("x")
    del no_id["run_id"]
    data = json.dumps(no_id).encode() + b"\n" + line("good1").replace(b'"good1"', b"17") + line("")
    report, q = ingest_one(store, settings, data + line("good2"))
    assert only_reason(q, 1) == "missing run_id"
    assert only_reason(q, 2).startswith("wrong type: run_id is integer, expected string")
    assert only_reason(q, 3) == "invalid value: run_id is empty or blank"
    assert report.inserted == 1


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"latency_s": "fast"}, "wrong type: latency_s is string, expected number"),
        ({"messages": "hello"}, "wrong type: messages is string, expected array"),
        ({"usage": {"prompt_tokens": 1.5}}, "wrong type: usage.prompt_tokens is number"),
        ({"started_at": "yesterday"}, "invalid value: started_at 'yesterday' is not a timestamp"),
        ({"traffic": "batch"}, "invalid value: traffic: Input should be"),
        ({"model": None}, "wrong type: model is null, expected string"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid value: messages[0].role"),
        ({"messages": [{"role": "user", "content": [1]}]}, "wrong type: messages[0].content"),
        (
            {"verifications": [{"verifier": "v", "passed": "maybe", "score": 1}]},
            "wrong type: verifications[0].passed is string, expected boolean",
        ),
        (
            {"verifications": [{"verifier": "v", "passed": True, "score": 2}]},
            "invalid value: verifications[0].score: Input should be less than or equal to 1",
        ),
        ({"events": [{"agent": "x"}]}, "missing events[0].type"),
    ],
)
def test_wrong_types(store, settings, fields, expected):
    report, q = ingest_one(store, settings, line("bad", **fields) + line("good1"))
    assert only_reason(q, 1).startswith(expected)
    assert report.inserted == 1


def test_unknown_schema_version(store, settings):
    report, q = ingest_one(store, settings, line("future", schema_version=99) + line("good1"))
    assert only_reason(q, 1).startswith("unknown schema_version: 99")
    assert report.unknown_schema_versions == {99: 1}
    assert report.schema_versions == {1: 1}


def test_duplicate_run_ids_inside_one_file(store, settings):
    older = line("dup", ended_at=f"{DAY}T10:00:01Z", final_answer="old")
    newer = line("dup", ended_at=f"{DAY}T10:00:05Z", final_answer="new")
    report, q = ingest_one(store, settings, newer + older + line("good1"))
    assert only_reason(q, 2).startswith("duplicate run_id: dup appears again at line 1")
    assert [r.final_answer for r in store.records(["dup"])] == ["new"]
    assert report.inserted == 2 and report.quarantined == 1


def test_bytes_that_are_not_utf8(store, settings):
    report, q = ingest_one(
        store, settings, line("good1") + b'{"run_id": "\xff\xfe"}\n' + line("good2")
    )
    assert only_reason(q, 2).startswith("invalid UTF-8: byte 0xff")
    assert report.inserted == 2


def test_record_over_max_record_bytes(settings, tmp_path):
    big = line("big", final_answer="x" * 5000)
    with RunStore(
        settings.paths.database, max_record_bytes=4096, landing=settings.paths.landing
    ) as s:
        report, q = ingest_one(s, settings, line("good1") + big + line("good2"))
    assert only_reason(q, 2).startswith("record too large")
    assert report.inserted == 2


def test_line_longer_than_a_read_chunk_is_skipped_while_streaming(settings):
    big = line("big", final_answer="x" * 50_000)
    with RunStore(
        settings.paths.database,
        max_record_bytes=4096,
        chunk_bytes=1024,
        landing=settings.paths.landing,
    ) as s:
        report, q = ingest_one(s, settings, line("good1") + big + line("good2") + line("good3"))
    assert only_reason(q, 2).startswith("record too large")
    assert len(q[0]["raw"]) == 1000
    assert report.inserted == 3
    assert [r["run_id"] for r in s_rows(settings)] == ["good1", "good2", "good3"]


def s_rows(settings):
    with RunStore.from_settings(settings, read_only=True) as s:
        return s.runs().sort("started_at").select("run_id").to_dicts()
