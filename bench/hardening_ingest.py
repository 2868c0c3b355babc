"""Bad input and contention against ingest and import (issue 21, items 3, 4, 5 and 7).

    .venv/bin/python bench/hardening_ingest.py

Lays the bad-input corpus (autoretrain_tests/runs/bad_input_corpus.py: impossible values,
out-of-range times, wrong nested types, absurd nesting, JSON that DuckDB's reader takes and
pydantic's refuses, bytes that are not UTF-8, and entries that are not files) out in one landing
day between good records, then:

- ingests it with `RunStore.ingest_day`: a bad kind is handled cleanly when its line is
  quarantined with file, line and a reason, a good kind when it is stored; every stored record
  must load as a `Run` and render as `review show` renders it;
- imports every corpus line (and transcripts that used to crash the importer) with
  `import_file`, then ingests what landed: a bad kind is handled when it is reported with file,
  line and reason, a good kind when it is imported and then stored with nothing quarantined;
- holds the store open for writing in a second process and opens it as a reader and as a second
  writer: handled when each waits its bound and then raises `StoreLocked` naming the holder.

Records lost = good lines (the corpus's odd-but-valid ones and the good records around every bad
line) that did not end up in the store. Writes bench/results/hardening_ingest.json and .md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_facts, table, write_results  # noqa: E402

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


def ingest_side(work: Path) -> dict:
    from autoretrain.runs.archive import RunArchive
    from autoretrain.runs.review import load_run, render_transcript
    from autoretrain.runs.store import RunStore
    from autoretrain_tests.runs.bad_input_corpus import DAY, write_landing_day

    landing = work / "landing"
    placed = write_landing_day(landing)
    t0 = time.perf_counter()
    with RunStore(work / "ingest.duckdb", landing=landing) as store:
        report = store.ingest_day(DAY, RunArchive(landing).files(DAY))
        seconds = time.perf_counter() - t0
        quarantine = {(q["file"], q["line"]): q["reason"] for q in store.quarantine().to_dicts()}
        stored = set(store.runs()["run_id"].to_list())
        loaded = {r.run_id for r in store.records()}
        shown = 0
        for run_id in stored:
            render_transcript(load_run(store.con, run_id))
            shown += 1
    kinds, lost, examples = {}, 0, {}
    for p in placed:
        reason = quarantine.get((p.file, p.line))
        if p.good:
            ok = p.run_id in stored and reason is None
            lost += not ok
        else:
            ok = reason is not None and reason.startswith(REASON_KINDS)
            examples[p.kind] = f"{p.file}:{p.line}: {reason}"
        if p.kind != "good record":
            kinds[p.kind] = ok
    return {
        "kinds_tried": len(kinds),
        "kinds_handled": sum(kinds.values()),
        "not_handled": sorted(k for k, ok in kinds.items() if not ok),
        "lines_and_entries": len(placed),
        "good_lines": sum(p.good for p in placed),
        "records_lost": lost,
        "stored": len(stored),
        "stored_records_that_load": len(loaded),
        "review_show_rendered": shown,
        "quarantined": report.quarantined,
        "skipped": report.skipped,
        "seconds": round(seconds, 2),
        "examples": examples,
    }


def import_side(work: Path) -> dict:
    from autoretrain.runs.archive import RunArchive
    from autoretrain.runs.importer import import_file
    from autoretrain.runs.store import RunStore
    from autoretrain_tests.runs.bad_input_corpus import CORPUS, nested, record

    transcript = {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "created": 1772359200,
    }
    base = json.dumps(transcript)
    cases = [(c.kind, c.text, c.good or c.kind == "run_id missing") for c in CORPUS]
    cases += [
        ("transcript: lone surrogate", base.replace("2+2?", "\\ud800").encode(), False),
        ("transcript: 10,000 deep", (base[:-1] + f', "d": {nested(10_000)}}}').encode(), False),
        ("transcript: created 1e20", json.dumps({**transcript, "created": 1e20}).encode(), False),
        ("transcript: created NaN", base.replace("1772359200", "NaN").encode(), False),
        ("transcript: a message that is a string", b'{"messages": ["hi"]}', False),
        ("transcript: ordinary", base.encode(), True),
    ]
    lines, expect = [], {}
    for i, (kind, text, good) in enumerate(cases):
        lines.append(json.dumps(record(f"good-{i}")).encode())
        lines.append(text)
        expect[len(lines)] = (kind, good)
    src = work / "export.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    archive = RunArchive(work / "import-landing")
    t0 = time.perf_counter()
    report = import_file(src, archive)
    seconds = time.perf_counter() - t0
    errors = {e.line: e.reason for e in report.errors}
    with RunStore(work / "import.duckdb", landing=archive.landing) as store:
        ingested = [store.ingest_day(d, archive.files(d)) for d in archive.days()]
        stored = len(list(store.records()))
    kinds = {}
    for n, (kind, good) in expect.items():
        reason = errors.get(n)
        kinds[kind] = (reason is None) if good else bool(reason and e_file_ok(report, n, src))
    good_lines = len(lines) - sum(not g for _, g in expect.values())
    return {
        "kinds_tried": len(kinds),
        "kinds_handled": sum(kinds.values()),
        "not_handled": sorted(k for k, ok in kinds.items() if not ok),
        "lines": report.lines,
        "imported": report.imported,
        "not_imported": len(report.errors),
        "good_lines": good_lines,
        "quarantined_at_ingest": sum(r.quarantined for r in ingested),
        "stored_after_ingest": stored,
        "records_lost": good_lines - stored,
        "seconds": round(seconds, 2),
    }


def e_file_ok(report, line: int, src: Path) -> bool:
    return any(e.line == line and e.file == str(src) and e.reason for e in report.errors)


HOLD = """
import sys, time
from autoretrain.runs.store import RunStore
store = RunStore(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def contention_side(work: Path) -> dict:
    from autoretrain.runs.store import RunStore, StoreLocked

    db = work / "locked.duckdb"
    RunStore(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert holder.stdout.readline().strip() == "holding"
    out = {}
    try:
        for role, read_only in (("reader", True), ("second writer", False)):
            t0 = time.monotonic()
            try:
                RunStore(db, read_only=read_only, lock_wait_s=1.0).close()
                out[role] = {"handled": False, "message": "opened a held store?"}
            except StoreLocked as exc:
                message = str(exc)
                out[role] = {
                    "handled": f"PID {holder.pid}" in message and "\n" not in message,
                    "waited_s": round(time.monotonic() - t0, 2),
                    "message": message,
                }
    finally:
        holder.kill()
        holder.wait()
    return out


def markdown(r: dict) -> str:
    ing, imp, lock = r["ingest"], r["import"], r["contention"]
    rows = [
        ["ingest", ing["kinds_tried"], ing["kinds_handled"], ing["records_lost"]],
        ["import, then ingest", imp["kinds_tried"], imp["kinds_handled"], imp["records_lost"]],
        [
            "contention (reader, second writer)",
            len(lock),
            sum(v["handled"] for v in lock.values()),
            "-",
        ],
    ]
    out = [
        "# Hardening: bad input and contention against ingest and import",
        "",
        f"`{r['command']}` on {r['date']} ({r['machine']['cores']} cores).",
        "",
        table(
            ["path", "kinds tried (bad, or odd but valid)", "handled cleanly", "records lost"], rows
        ),
        "",
        "Handled cleanly: a bad line quarantined (ingest) or reported (import) with file, line "
        "and reason; an odd but valid line stored; an entry that is not a file skipped and "
        "reported; a held store waited for, then named in one line. Records lost: good lines "
        "(the valid cases and the good record around every bad one) missing from the store.",
        "",
        f"- ingest: {ing['lines_and_entries']} lines and entries ({ing['good_lines']} good), "
        f"{ing['stored']} stored, all {ing['stored_records_that_load']} load as a Run and "
        f"{ing['review_show_rendered']} render as `review show`; {ing['quarantined']} "
        f"quarantined; skipped: {', '.join(s['file'] for s in ing['skipped'])}; "
        f"{ing['seconds']} s.",
        f"- import: {imp['lines']} lines, {imp['imported']} imported, {imp['not_imported']} "
        f"reported; ingest of what landed quarantined {imp['quarantined_at_ingest']} and stored "
        f"{imp['stored_after_ingest']}; {imp['seconds']} s.",
    ]
    for role, v in lock.items():
        out.append(f"- {role}: waited {v.get('waited_s')} s, then: {v['message']}")
    if ing["not_handled"] or imp["not_handled"]:
        out.append(f"- NOT handled: ingest {ing['not_handled']}, import {imp['not_handled']}")
    out += [
        "",
        "Known gap (not in the counts): a JSON object that repeats a key. DuckDB reads the first "
        "value and pydantic the last; the typed columns the gates read hold the checked first "
        "value, and a record pydantic then refuses is skipped by `RunStore.records()` with a "
        "warning and explained by `review show` (autoretrain_tests/runs/test_bad_input_corpus.py).",
        "",
        "Reasons, one per bad kind (ingest):",
        "",
    ]
    out += [f"- {kind}: `{text[:160]}`" for kind, text in r["ingest"]["examples"].items()]
    return "\n".join(out)


def main() -> None:
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "benchmark": "hardening_ingest",
            "date": started.isoformat(timespec="seconds"),
            "command": ".venv/bin/python bench/hardening_ingest.py",
            "machine": machine_facts(),
            "ingest": ingest_side(work),
            "import": import_side(work),
            "contention": contention_side(work),
        }
    for side in ("ingest", "import"):
        s = result[side]
        print(f"{side}: {s['kinds_handled']}/{s['kinds_tried']} kinds handled, "
              f"{s['records_lost']} records lost, not handled: {s['not_handled']}")  # fmt: skip
    print(json.dumps({k: v["handled"] for k, v in result["contention"].items()}))
    write_results("hardening_ingest", result, markdown(result), RESULTS)


if __name__ == "__main__":
    main()
