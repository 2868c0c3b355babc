"""The landing zone: append-only JSONL, one folder per day, written atomically.

`<root>/landing/runs/date=YYYY-MM-DD/part-<uuid>.jsonl`. A part file appears only complete:
it is written to a hidden temp file in the same folder, fsynced, then renamed. Ingest reads
only `part-*.jsonl`, so a crash mid-write leaves at most a `.tmp` file that nothing reads.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from autoretrain.runs.schema import Run

PART_GLOB = "part-*.jsonl"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunArchive:
    """Writes finished runs into the landing zone and lists what is there."""

    def __init__(self, landing: Path):
        self.landing = Path(landing)

    def day_dir(self, day: str) -> Path:
        return self.landing / f"date={day}"

    def write(self, runs: Iterable[Run]) -> list[Path]:
        """Write runs as one new part file per day they started on; returns the files.
        Then their telemetry, when `telemetry.enabled` (autoretrain/telemetry.py; never raises)."""
        runs = list(runs)
        by_day: dict[str, list[str]] = defaultdict(list)
        for run in runs:
            by_day[run.day].append(run.to_json())
        written = self.write_lines(by_day)
        from autoretrain.telemetry import runs_recorded

        runs_recorded(runs)
        return written

    def write_lines(self, lines_by_day: dict[str, list[str]]) -> list[Path]:
        """Write pre-serialised JSON lines (e.g. imported from another app) per day."""
        written = []
        for day, lines in sorted(lines_by_day.items()):
            if not lines:
                continue
            path = self.day_dir(day) / f"part-{uuid.uuid4().hex}.jsonl"
            write_atomically(path, ("\n".join(lines) + "\n").encode("utf-8"))
            written.append(path)
        return written

    def days(self) -> list[str]:
        if not self.landing.exists():
            return []
        return sorted(
            p.name.removeprefix("date=")
            for p in self.landing.iterdir()
            if p.is_dir() and p.name.startswith("date=")
        )

    def files(self, day: str) -> list[Path]:
        return sorted(self.day_dir(day).glob(PART_GLOB))


class BufferedArchive:
    """Collects finished runs and writes them in batches, so a self-play session of thousands
    of runs makes a handful of part files rather than one per run. Use as a context manager;
    whatever is buffered is written on exit, including on Ctrl-C."""

    def __init__(self, archive: RunArchive, max_runs: int = 500):
        self.archive = archive
        self.max_runs = max_runs
        self._buffer: list[Run] = []
        self.written: list[Path] = []

    def append(self, run: Run) -> None:
        self._buffer.append(run)
        if len(self._buffer) >= self.max_runs:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.written += self.archive.write(self._buffer)
            self._buffer = []

    def __enter__(self) -> BufferedArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
