"""The bad-input corpus through ingest (issue 21, items 3 and 4): every bad line is quarantined
with its file, line and reason, every good line is stored (none lost), entries that are not
files are skipped and reported, a BOM costs nothing, and every stored record loads and shows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.review import load_run, render_transcript
from autoretrain.runs.store import RunStore
from autoretrain.runs.validate import judge
from autoretrain_tests.runs.bad_input_corpus import (
    CORPUS,
    DAY,
    NOT_FILES,
    record,
    write_landing_day,
)

REASON_KINDS = (
    "invalid JSON",
    "invalid UTF-8",
    "not an object",
    "missing ",
    "wrong type: ",
    "invalid value: ",
    "nested too deeply",
    "unknown schema_version",
    "empty file",
    "not a file: ",
)
IMPOSSIBLE = [c for c in CORPUS if not c.good]


@pytest.mark.parametrize("case", CORPUS, ids=[c.kind for c in CORPUS])
def test_the_schema_itself_decides_each_case(case):
    """The rules live in runs/schema.py: it refuses every bad case and takes every odd good one."""
    try:
        text = case.text.decode("utf-8")
    except UnicodeDecodeError:
        assert not case.good
        return
    run, why = judge(text)
    assert (run is not None) == case.good, why
    if not case.good:
        assert why and why.startswith(REASON_KINDS), why


@pytest.fixture
def ingested(settings):
    placed = write_landing_day(settings.paths.landing)
    files = RunArchive(settings.paths.landing).files(DAY)
    with RunStore.from_settings(settings) as store:
        report = store.ingest_day(DAY, files)
        quarantine = store.quarantine().to_dicts()
        stored = set(store.runs()["run_id"].to_list())
    return placed, report, quarantine, stored


def test_every_bad_line_is_quarantined_with_file_line_and_reason(ingested):
    placed, report, quarantine, stored = ingested
    where = {(q["file"], q["line"]): q["reason"] for q in quarantine}
    assert len(where) == len(quarantine), "one quarantine row per line"
    for p in placed:
        if p.good:
            assert (p.file, p.line) not in where, (p.kind, where.get((p.file, p.line)))
            continue
        reason = where.get((p.file, p.line))
        assert reason is not None, f"{p.kind}: not quarantined"
        assert reason.startswith(REASON_KINDS), (p.kind, reason)
        assert p.kind not in stored, p.kind
    bad = [p for p in placed if not p.good]
    assert report.quarantined == len(quarantine) == len(bad)


def test_no_good_record_is_lost(ingested):
    placed, report, _, stored = ingested
    good = [p for p in placed if p.good]
    assert {p.run_id for p in good} <= stored
    assert report.inserted == len(good) == len(stored)
    assert report.read == report.inserted + report.quarantined  # nothing unaccounted for


def test_entries_that_are_not_files_are_skipped_and_reported(ingested):
    placed, report, quarantine, stored = ingested
    skipped = {s["file"].split("/")[-1]: s["reason"] for s in report.skipped}
    assert skipped == {
        "part-d-dir.jsonl": "not a file: a directory",
        "part-e-loop.jsonl": "not a file: a symlink loop",
        "part-f-dangling.jsonl": "not a file: a dangling symlink (its target does not exist)",
    }
    assert {"after-bom", "last-file"} <= stored  # the BOM's record, and the file after them all
    assert len(NOT_FILES) == 3


def test_every_stored_record_loads_and_shows(settings, ingested):
    _, _, _, stored = ingested
    with RunStore.from_settings(settings, read_only=True) as store:
        assert {r.run_id for r in store.records()} == stored
        for run_id in stored:
            assert run_id in render_transcript(load_run(store.con, run_id))


def test_impossible_values_never_reach_a_gate(settings, ingested):
    """What is stored has no negative or non-finite latency, cost or tokens, no end before its
    start and no time outside 1970..9999: the columns the gates read are sane."""
    with RunStore.from_settings(settings, read_only=True) as store:
        row = store.con.execute(
            """SELECT count(*) FILTER (latency_s < 0 OR NOT isfinite(latency_s)),
                      count(*) FILTER (cost_usd < 0 OR NOT isfinite(cost_usd)),
                      count(*) FILTER (prompt_tokens < 0 OR completion_tokens < 0),
                      count(*) FILTER (ended_at < started_at),
                      count(*) FILTER (year(started_at) NOT BETWEEN 1970 AND 9999
                                       OR year(ended_at) NOT BETWEEN 1970 AND 9999),
                      count(*) FILTER (year("at") NOT BETWEEN 1970 AND 9999)
               FROM runs LEFT JOIN events USING (run_id)"""
        ).fetchone()
    assert row == (0, 0, 0, 0, 0, 0)


def test_the_cli_reports_skipped_entries_and_review_show_never_crashes(settings):
    from autoretrain.cli import cli as main

    write_landing_day(settings.paths.landing)
    runner = CliRunner()
    out = runner.invoke(main, ["ingest", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    (report,) = json.loads(out.output)
    assert len(report["skipped"]) == 3
    text = runner.invoke(main, ["ingest"], catch_exceptions=False)
    assert "skipped date=2026-03-01/part-d-dir.jsonl: not a file: a directory" in text.output
    for run_id in ("numbers as strings", "150-deep list in an unknown field", "after-bom"):
        shown = runner.invoke(main, ["review", "show", run_id], catch_exceptions=False)
        assert shown.exit_code == 0 and f"run {run_id}" in shown.output, shown.output


def test_review_show_on_a_record_stored_by_an_older_version(settings):
    """A store built before these checks may hold records the schema refuses: `review show`
    says so in one line instead of a traceback."""
    from autoretrain.cli import cli as main

    write_landing_day(settings.paths.landing)
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, RunArchive(settings.paths.landing).files(DAY))
        store.con.execute(
            """UPDATE runs SET record = '{"run_id": "after-bom", "started_at": "infinity"}'
               WHERE run_id = 'after-bom'"""
        )
    shown = CliRunner().invoke(main, ["review", "show", "after-bom"])
    assert shown.exit_code == 1
    assert "Traceback" not in shown.output
    assert "after-bom" in shown.output and "started_at" in shown.output


def test_a_repeated_key_is_the_known_gap_and_stops_nothing(settings, caplog):
    """A JSON object that repeats a key: DuckDB reads the first value, pydantic the last. The
    columns (what the gates read) hold the checked first value; the record, refused by
    pydantic, is skipped by records() with a warning and `review show` explains it."""
    from autoretrain.cli import cli

    text = json.dumps(record("dup-key")).replace(
        '"latency_s": 1.0', '"latency_s": 1.0, "latency_s": -1'
    )
    day = settings.paths.landing_day(DAY)
    day.mkdir(parents=True)
    (day / "part-a.jsonl").write_text(text + "\n" + json.dumps(record("fine")) + "\n")
    with RunStore.from_settings(settings) as store:
        store.ingest_day(DAY, RunArchive(settings.paths.landing).files(DAY))
        assert store.runs().sort("run_id")["latency_s"].to_list() == [1.0, 1.0]
        with caplog.at_level("WARNING"):
            assert [r.run_id for r in store.records()] == ["fine"]
    assert "run dup-key: its stored record does not load" in caplog.text
    shown = CliRunner().invoke(cli, ["review", "show", "dup-key"])
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert "latency_s" in shown.output
