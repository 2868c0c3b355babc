"""How lines fall into batches never changes an ingest's result.

Random landing days full of copies of a few run_ids (within one file and across files, ties
included, some run_ids already stored from another day) are ingested once in one batch and once
in batches of a line or a few lines; the runs, events, quarantine rows (with their reasons) and
each report must be the same. The ingest keeps, for the rest of a day, each file's copy that
lost to another file's, so a later batch's copy from that file ranks against it as it would in
one batch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.bad_input_corpus import DAY, record

OTHER_DAY = "2026-02-28"
BATCHES = {
    "one line": {"chunk_bytes": 1, "merge_bytes": 1, "commit_bytes": 1},
    "a few lines": {"chunk_bytes": 2048, "merge_bytes": 4096, "commit_bytes": 16384},
}


def _line(run_id: str, second: int, tag: str) -> str:
    return json.dumps(record(run_id, ended_at=f"{DAY}T10:00:{second:02d}Z", final_answer=tag))


def _write_day(folder: Path, rng: random.Random) -> None:
    folder.mkdir(parents=True)
    run_ids = [f"run-{i}" for i in range(rng.randint(2, 5))]
    for f in range(rng.randint(2, 4)):
        lines = [
            _line(rng.choice(run_ids), rng.randint(0, 6), f"file {f} line {n}")
            for n in range(rng.randint(1, 9))
        ]
        (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")


def _ingest(tmp_path: Path, seed: int, sizes: dict[str, int]) -> dict:
    rng = random.Random(seed)
    landing = tmp_path / "landing"
    _write_day(landing / f"date={OTHER_DAY}", rng)
    _write_day(landing / f"date={DAY}", rng)
    reports = []
    with RunStore(tmp_path / "runs.duckdb", landing=landing, **sizes) as store:
        for day in (OTHER_DAY, DAY, DAY):  # the last: the same day again changes nothing
            files = sorted((landing / f"date={day}").iterdir())
            report = store.ingest_day(day, files).to_dict()
            report.pop("seconds")
            reports.append(report)
        con = store.con
        tables = {
            "runs": "SELECT run_id, day, source_file, source_line, record FROM runs ORDER BY 1",
            "events": "SELECT run_id, seq, type, payload FROM events ORDER BY 1, 2",
            "quarantine": "SELECT day, file, line, reason, raw FROM quarantine ORDER BY 1, 2, 3",
        }
        found = {name: con.execute(sql).fetchall() for name, sql in tables.items()}
    return {"reports": reports, **{k: [list(map(str, row)) for row in v] for k, v in found.items()}}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batches", list(BATCHES))
def test_batches_do_not_change_the_result(tmp_path, seed, batches):
    whole = _ingest(tmp_path / "whole", seed, {})
    split = _ingest(tmp_path / "split", seed, BATCHES[batches])
    # Every seed's day has what batches could split: copies within one file (duplicates) and
    # copies that lost to another file's or to the other day's row.
    day = whole["reports"][1]
    assert day["quarantine_reasons"].get("duplicate run_id", 0) > 0
    assert day["superseded"] + day["unchanged"] > 0
    for part in ("runs", "events", "quarantine"):
        assert split[part] == whole[part], f"{part} differs"
    assert split["reports"] == whole["reports"]
