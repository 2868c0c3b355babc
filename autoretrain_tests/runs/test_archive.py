"""The landing zone: atomic part files, only part-*.jsonl read, batches per day."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from autoretrain.runs.archive import BufferedArchive, RunArchive, write_atomically
from autoretrain.runs.schema import Run


def run(i: int, day: int = 1) -> Run:
    return Run(run_id=f"r{i}", started_at=datetime(2026, 3, day, 12, tzinfo=UTC))


def test_write_atomically_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "d" / "part-x.jsonl"
    write_atomically(target, b"one\n")
    assert target.read_bytes() == b"one\n"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, b"two\n")
    assert target.read_bytes() == b"one\n"  # the old content, never a half-written file
    assert [p.name for p in target.parent.iterdir()] == ["part-x.jsonl"]


def test_write_groups_runs_by_day_and_files_ignores_temp_files(tmp_path):
    archive = RunArchive(tmp_path / "landing")
    written = archive.write([run(1, 1), run(2, 2), run(3, 1)])
    assert archive.days() == ["2026-03-01", "2026-03-02"]
    assert len(written) == 2
    day1 = archive.day_dir("2026-03-01")
    (day1 / ".part-crashed.jsonl.abc.tmp").write_text("half")
    (day1 / "notes.txt").write_text("x")
    (archive.landing / "stray-file").write_text("x")
    files = archive.files("2026-03-01")
    assert [p.name.startswith("part-") and p.suffix == ".jsonl" for p in files] == [True]
    assert [Run.model_validate_json(x).run_id for x in files[0].read_text().splitlines()] == [
        "r1",
        "r3",
    ]
    assert archive.files("2026-04-01") == []
    assert RunArchive(tmp_path / "absent").days() == []


def test_write_lines_skips_empty_days(tmp_path):
    archive = RunArchive(tmp_path)
    assert archive.write_lines({"2026-03-01": [], "2026-03-02": ['{"run_id": "a"}']}) == [
        archive.files("2026-03-02")[0]
    ]
    assert archive.days() == ["2026-03-02"]


def test_buffered_archive_batches_and_flushes_on_exit(tmp_path):
    archive = RunArchive(tmp_path)
    with BufferedArchive(archive, max_runs=3) as buffered:
        for i in range(7):
            buffered.append(run(i))
        assert len(buffered.written) == 2  # two full batches so far
    assert len(buffered.written) == 3
    lines = [x for p in archive.files("2026-03-01") for x in p.read_text().splitlines()]
    assert sorted(Run.model_validate_json(x).run_id for x in lines) == [f"r{i}" for i in range(7)]


def test_buffered_archive_flushes_when_the_app_crashes(tmp_path):
    archive = RunArchive(tmp_path)
    with pytest.raises(KeyboardInterrupt), BufferedArchive(archive, max_runs=100) as buffered:
        buffered.append(run(1))
        raise KeyboardInterrupt
    assert len(archive.files("2026-03-01")) == 1
