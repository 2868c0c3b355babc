"""Speed never changes results (issue 23, item 1): a fixed scenario of ingests gives exactly the
tables, quarantine rows and reports captured from the ingest before it was made faster.

The scenario: the bad-input corpus (malformed lines, bad types, nulls, missing optional fields,
entries that are not files, a BOM, an empty file) plus a file of duplicates within one file and
across files, blank lines and a truncated last line; then the same day again (a no-op), a second
day that re-records some run_ids, and the first day again with one more file. It runs once with
tiny batches and commits (many batches, copies of a run_id in different batches) and once with
the defaults (one batch); both must give the one captured snapshot.

The snapshot (`golden/ingest_golden.json`) keeps every column of `runs`, `events` and
`quarantine` except the wall-clock stamps (`ingested_at` becomes which ingest wrote the row;
`quarantined_at` is dropped), long text as its SHA-256, and each ingest's report (less its
seconds). To capture it again after a change that is *meant* to change results:
`AUTORETRAIN_WRITE_GOLDEN=1 pytest autoretrain_tests/runs/test_ingest_golden.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date, datetime
from pathlib import Path

import pytest

from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.bad_input_corpus import DAY, record, write_landing_day

GOLDEN = Path(__file__).parent / "golden" / "ingest_golden.json"
DAY2 = "2026-03-02"
TINY = {"chunk_bytes": 4096, "merge_bytes": 8192, "commit_bytes": 24576}


def _line(run_id: str, **fields) -> bytes:
    return json.dumps(record(run_id, **fields)).encode()


def _dups_file() -> bytes:
    t = f"{DAY}T10:00:"
    lines = [
        _line("dup-older-first", ended_at=t + "01Z"),
        b"",
        _line("dup-newer-first", ended_at=t + "09Z", final_answer="newer"),
        b"   \t",
        _line("dup-older-first", ended_at=t + "05Z", final_answer="newer"),
        _line("dup-newer-first", ended_at=t + "02Z", final_answer="older"),
        _line("dup-tie", final_answer="first"),
        _line("dup-tie", final_answer="second"),  # same time: the later line wins
        _line("good-3", ended_at=t + "30Z", final_answer="re-recorded"),  # beats part-b's copy
        _line("good-5", ended_at=f"{DAY}T09:59:59Z", started_at=f"{DAY}T09:00:00Z"),  # loses
        _line(
            "nulls",
            scenario_id=None,
            ended_at=None,
            latency_s=None,
            cost_usd=None,
            slot=None,
            final_answer=None,
            category=None,
        ),
        json.dumps({"run_id": "bare", "started_at": f"{DAY}T11:00:00Z"}).encode(),
        _line("no-events", events=[], verifications=[], recoveries=[], escalations=[]),
        _line("bad-type", latency_s=[1]),
        _line("dup-older-first", ended_at=t + "03Z"),  # a third copy, between the two
        _line("cut")[:300],  # truncated last line, no newline at the end of the file
    ]
    return b"\n".join(lines)


def _day2_file() -> bytes:
    return (
        b"\n".join(
            [
                _line("dup-older-first", started_at=f"{DAY2}T08:00:00Z", ended_at=None),  # newer
                _line(
                    "good-7", started_at=f"{DAY}T01:00:00Z", ended_at=f"{DAY}T01:00:01Z"
                ),  # older
                _line("day2-new", started_at=f"{DAY2}T08:00:00Z", ended_at=f"{DAY2}T08:00:02Z"),
                b"{not json",
            ]
        )
        + b"\n"
    )


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:20]


def _plain(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _snapshot(store: RunStore) -> dict:
    con = store.con
    stamps = [
        r[0] for r in con.execute("SELECT DISTINCT ingested_at FROM runs ORDER BY 1").fetchall()
    ]

    def rows(sql: str) -> list[dict]:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, (_plain(v) for v in r), strict=True)) for r in cur.fetchall()]

    runs = rows("SELECT * EXCLUDE (record, ingested_at), record::VARCHAR AS record, "
                "ingested_at FROM runs ORDER BY run_id")  # fmt: skip
    for r in runs:
        r["record"] = _digest(r["record"])
        r["ingested_at"] = stamps.index(datetime.fromisoformat(r["ingested_at"]))
    events = rows(
        "SELECT * EXCLUDE (payload), payload::VARCHAR AS payload FROM events ORDER BY run_id, seq"
    )
    quarantine = rows(
        "SELECT * EXCLUDE (quarantined_at, raw), raw FROM quarantine "
        "ORDER BY day, file, line, reason, raw"
    )
    for q in quarantine:
        q["raw"] = _digest(q["raw"])
    return {"runs": runs, "events": events, "quarantine": quarantine}


def _report(report) -> dict:
    out = report.to_dict()
    out.pop("seconds")
    # JSON keys are strings
    out["schema_versions"] = {str(k): v for k, v in out["schema_versions"].items()}
    out["unknown_schema_versions"] = {str(k): v for k, v in out["unknown_schema_versions"].items()}
    return out


def _scenario(tmp_path: Path, **sizes) -> list[dict]:
    landing = tmp_path / "landing"
    write_landing_day(landing)
    day1 = landing / f"date={DAY}"
    (day1 / "part-h-dups.jsonl").write_bytes(_dups_file())
    (landing / f"date={DAY2}").mkdir()
    (landing / f"date={DAY2}" / "part-a.jsonl").write_bytes(_day2_file())

    def files(day: str) -> list[Path]:
        return sorted((landing / f"date={day}").glob("part-*.jsonl"))

    steps = []
    with RunStore(tmp_path / "runs.duckdb", landing=landing, **sizes) as store:
        for day in (DAY, DAY, DAY2):
            steps.append({"report": _report(store.ingest_day(day, files(day)))})
            steps[-1].update(_snapshot(store))
        (day1 / "part-i-late.jsonl").write_bytes(
            _line("good-9", ended_at=f"{DAY}T12:00:00Z") + b"\n"
        )
        steps.append({"report": _report(store.ingest_day(DAY, files(DAY)))})
        steps[-1].update(_snapshot(store))
    return json.loads(json.dumps(steps, sort_keys=True))


SIZES = {"defaults": {}, "tiny-batches": TINY}


def _compact(steps: list[dict], full: bool) -> list[dict]:
    """Each step's report in full and its tables as row count and SHA-256 (the file stays
    small); with `full`, the last step's tables in full too, to read when a digest differs."""
    out = []
    for i, step in enumerate(steps):
        tables = {k: v for k, v in step.items() if k != "report"}
        entry = {"report": step["report"]}
        for name, rows in tables.items():
            text = json.dumps(rows, sort_keys=True)
            entry[name] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
            if full and i == len(steps) - 1:
                entry[name]["full"] = rows
        out.append(entry)
    return out


# Batches never change results either: the tiny batches must give the very capture the
# defaults (one batch) give. (They did not before the ingest remembered, for the rest of a day,
# each file's copy that lost to another file's: a third copy of a run_id in one file, when a
# newer copy from another day was stored, was quarantined as a duplicate when it shared a batch
# with the file's newest copy and counted unchanged when it did not.)
@pytest.mark.parametrize("config", list(SIZES))
def test_ingest_gives_the_captured_tables_and_quarantine(tmp_path, config):
    got = _compact(_scenario(tmp_path, **SIZES[config]), full=True)
    if os.environ.get("AUTORETRAIN_WRITE_GOLDEN") and config == "defaults":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"defaults": got}, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())["defaults"]
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g["report"] == w["report"], f"ingest {step + 1}: the report differs"
        for part in ("runs", "events", "quarantine"):
            if "full" in w[part]:
                assert g[part]["full"] == w[part]["full"], f"ingest {step + 1}: {part} differs"
            assert g[part] == w[part], f"ingest {step + 1}: {part} differs"
