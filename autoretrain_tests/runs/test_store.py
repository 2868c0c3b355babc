"""RunStore: idempotent ingest on run_id, newest wins, queries, records, export, summary."""

from __future__ import annotations

import json

import polars as pl
import pytest

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Run
from autoretrain.runs.store import RunStore, StoreNotFound
from autoretrain_tests.runs.test_ingest_bad_input import DAY, line, record


def make_lines(n: int, start: int = 0, **fields) -> bytes:
    cats = ["arithmetic", "units"]
    return b"".join(
        line(f"r{i}", category=cats[i % 2], model=f"m{i % 3}", **fields)
        for i in range(start, start + n)
    )


@pytest.fixture
def landing(settings):
    day = settings.paths.landing_day(DAY)
    day.mkdir(parents=True)
    return day


def test_ingest_is_idempotent(settings, landing):
    (landing / "part-a.jsonl").write_bytes(make_lines(30) + b"not json\n")
    files = RunArchive(settings.paths.landing).files(DAY)
    with RunStore.from_settings(settings) as store:
        first = store.ingest_day(DAY, files)
        second = store.ingest_day(DAY, files)
        assert (first.inserted, first.quarantined) == (30, 1)
        assert (second.inserted, second.replaced, second.unchanged, second.quarantined) == (
            0,
            0,
            30,
            1,
        )
        assert store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0] == 30
        assert store.quarantine().height == 1  # not doubled by the second ingest
        assert store.con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 30
        assert first.quarantine_rate == pytest.approx(1 / 31)
        assert first.schema_versions == {1: 30}


def test_newer_record_replaces_older_across_files_and_days(settings, landing):
    (landing / "part-a.jsonl").write_bytes(
        line("x", ended_at=f"{DAY}T10:00:09Z", final_answer="newest")
    )
    (landing / "part-b.jsonl").write_bytes(
        line("x", ended_at=f"{DAY}T10:00:02Z", final_answer="older")
    )
    files = sorted(landing.glob("part-*.jsonl"))
    with RunStore.from_settings(settings) as store:
        report = store.ingest_day(DAY, files)
        assert (report.inserted, report.superseded, report.quarantined) == (1, 1, 0)
        assert [r.final_answer for r in store.records(["x"])] == ["newest"]
        # A later day brings a newer copy: it replaces; an older copy does not.
        later = settings.paths.landing_day("2026-03-02")
        later.mkdir()
        (later / "part-c.jsonl").write_bytes(
            line(
                "x",
                started_at="2026-03-02T00:00:00Z",
                ended_at="2026-03-02T00:00:01Z",
                final_answer="next day",
            )
        )
        assert store.ingest_day("2026-03-02", [later / "part-c.jsonl"]).replaced == 1
        again = store.ingest_day(DAY, files)  # both older than the stored copy now
        assert (again.read, again.unchanged, again.superseded) == (2, 2, 0)
        assert [r.final_answer for r in store.records(["x"])] == ["next day"]
        assert store.runs()["day"].to_list()[0].isoformat() == "2026-03-02"


def test_tie_broken_by_file_order(settings, landing):
    (landing / "part-a.jsonl").write_bytes(line("x", final_answer="first file"))
    (landing / "part-b.jsonl").write_bytes(line("x", final_answer="second file"))
    files = sorted(landing.glob("part-*.jsonl"))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, files[1:])
        store.ingest_day(DAY, files[:1])  # the earlier file arrives later: it still loses
        assert [r.final_answer for r in store.records(["x"])] == ["second file"]


def test_queries_and_filters(settings, landing):
    (landing / "part-a.jsonl").write_bytes(
        make_lines(12) + line("ev", traffic="evaluation", slot="canary", scenario_id="held-out")
    )
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, sorted(landing.glob("part-*")))
        frame = store.runs(DAY, DAY)
        assert isinstance(frame, pl.DataFrame) and frame.height == 13
        assert "record" not in frame.columns
        assert store.runs(category="units").height == 6
        assert store.runs(model=["m0", "m1"], category="arithmetic").height == 4
        assert store.runs(traffic="evaluation", slot="canary", scenario="held-out")[
            "run_id"
        ].to_list() == ["ev"]
        assert store.runs("2026-03-02").height == 0
        row = store.runs(run_ids=["r1"], with_record=True).to_dicts()[0]
        assert row["verified"] is True and row["score"] == 1.0
        assert row["n_messages"] == 4 and row["prompt_tokens"] == 10
        assert json.loads(row["record"])["run_id"] == "r1"
        with pytest.raises(TypeError, match="unknown run filter"):
            store.runs(colour="red")


def test_records_keep_unknown_fields(settings, landing):
    (landing / "part-a.jsonl").write_bytes(line("x", app_specific={"trace": [1, 2]}))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [landing / "part-a.jsonl"])
        (run,) = list(store.records())
    assert isinstance(run, Run)
    assert run.model_extra["app_specific"] == {"trace": [1, 2]}
    assert run.messages[1].tool_calls[0].function.name == "calc"


def test_export_jsonl_and_parquet(settings, landing, tmp_path):
    (landing / "part-a.jsonl").write_bytes(make_lines(10))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [landing / "part-a.jsonl"])
        assert store.export(tmp_path / "out.jsonl", "jsonl", category="units") == 5
        assert store.export(tmp_path / "out.parquet", "parquet") == 10
        with pytest.raises(ValueError, match="export format"):
            store.export(tmp_path / "out.csv", "csv")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["run_id"] for r in rows) == ["r1", "r3", "r5", "r7", "r9"]
    assert rows[0] == record(rows[0]["run_id"], category="units", model=rows[0]["model"])
    parquet = pl.read_parquet(tmp_path / "out.parquet")
    assert parquet.height == 10 and "record" in parquet.columns
    assert not list(tmp_path.glob(".*.tmp"))


def test_events_table(settings, landing):
    events = [
        {"type": "run_started", "agent": "tracker", "at": f"{DAY}T10:00:00Z"},
        {"type": "model_call", "duration_s": 0.5, "payload": {"model": "m"}},
    ]
    (landing / "part-a.jsonl").write_bytes(line("x", events=events))
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [landing / "part-a.jsonl"])
        rows = store.con.execute(
            'SELECT seq, type, agent, "at" IS NOT NULL, duration_s, payload FROM events ORDER BY seq'
        ).fetchall()
    # An event without `at` is read as the schema reads it (its default: the time it is read).
    assert rows == [
        (0, "run_started", "tracker", True, None, "{}"),
        (1, "model_call", "executor", True, 0.5, '{"model":"m"}'),
    ]


def test_summary_and_read_only(settings, landing):
    with pytest.raises(StoreNotFound, match="autoretrain ingest"):
        RunStore.from_settings(settings, read_only=True)
    (landing / "part-a.jsonl").write_bytes(make_lines(4) + b"{bad\n[]\n{bad\n")
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, [landing / "part-a.jsonl"])
    with RunStore.from_settings(settings, read_only=True) as store:
        summary = store.summary()
        with pytest.raises(Exception, match="read-only"):
            store.ingest_day(DAY, [landing / "part-a.jsonl"])
    assert summary["runs"] == 4
    assert summary["by_day"] == {DAY: 4}
    assert summary["by_category"] == {"arithmetic": 2, "units": 2}
    assert summary["by_slot"] == {"primary": 4}
    assert summary["quarantined"] == 3
    assert summary["top_quarantine_reasons"][0] == {"reason": "invalid JSON", "count": 2}


def test_chunk_boundaries_do_not_change_the_result(settings, landing):
    data = make_lines(40) + b"oops\n" + make_lines(5, start=40)
    (landing / "part-a.jsonl").write_bytes(data)
    with RunStore(
        settings.paths.database, chunk_bytes=3000, landing=settings.paths.landing
    ) as store:
        report = store.ingest_day(DAY, [landing / "part-a.jsonl"])
        assert (report.inserted, report.quarantined, report.bytes) == (45, 1, len(data))
        assert store.quarantine()["line"].to_list() == [41]
        lines = store.con.execute("SELECT source_line FROM runs ORDER BY source_line").fetchall()
    assert [x for (x,) in lines] == [*range(1, 41), *range(42, 47)]


def balanced(r) -> bool:
    return r.read == r.inserted + r.replaced + r.unchanged + r.superseded + r.quarantined


def test_duplicate_in_one_file_across_chunks(settings, landing):
    older = line("dup", ended_at=f"{DAY}T10:00:01Z", final_answer="old")
    newer = line("dup", ended_at=f"{DAY}T10:00:05Z", final_answer="new")
    (landing / "part-a.jsonl").write_bytes(older + make_lines(6) + newer)
    path = landing / "part-a.jsonl"
    with RunStore(
        settings.paths.database, chunk_bytes=2000, landing=settings.paths.landing
    ) as store:
        first = store.ingest_day(DAY, [path])
        second = store.ingest_day(DAY, [path])
        assert [r.final_answer for r in store.records(["dup"])] == ["new"]
        q = store.quarantine().to_dicts()
    assert [(r["line"], r["reason"].split(" appears")[0]) for r in q] == [
        (1, "duplicate run_id: dup")
    ]
    assert (first.inserted, first.quarantined) == (7, 1) and balanced(first)
    assert (second.unchanged, second.quarantined) == (7, 1) and balanced(second)


def test_batch_size_does_not_change_the_result(settings, landing, tmp_path):
    """Merging chunk by chunk or the whole day at once: same store, quarantine and counts."""
    x = {f"x{t}": line("x", ended_at=f"{DAY}T10:00:0{t}Z", final_answer=str(t)) for t in (1, 5, 9)}
    (landing / "part-a.jsonl").write_bytes(
        x["x1"] + make_lines(6) + x["x5"] + line("y", ended_at=f"{DAY}T10:00:03Z")
    )
    (landing / "part-b.jsonl").write_bytes(x["x9"] + line("y", ended_at=f"{DAY}T10:00:01Z"))
    files = sorted(landing.glob("part-*.jsonl"))
    outcomes = []
    for name, sizes in (
        ("small.duckdb", {"chunk_bytes": 2000, "merge_bytes": 1}),
        ("big.duckdb", {}),
    ):
        with RunStore(tmp_path / name, landing=settings.paths.landing, **sizes) as store:
            report = store.ingest_day(DAY, files)
            assert balanced(report)
            rows = store.con.execute(
                "SELECT run_id, source_file, source_line FROM runs ORDER BY run_id"
            ).fetchall()
            q = store.quarantine().select("file", "line", "reason").rows()
            events = store.con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        counts = (report.inserted, report.replaced, report.unchanged, report.superseded)
        outcomes.append((rows, q, events, counts))
    assert outcomes[0] == outcomes[1]
    rows, q, events, counts = outcomes[0]
    assert ("x", f"date={DAY}/part-b.jsonl", 1) in rows and len(rows) == 8
    assert [(f.split("/")[-1], n) for f, n, _ in q] == [("part-a.jsonl", 1)]
    assert counts == (8, 0, 0, 2) and events == 8
