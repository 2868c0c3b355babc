"""The run store: one DuckDB file (`settings.paths.database`) rebuilt from the landing zone.

    with RunStore.from_settings(settings) as store:
        report = store.ingest_day("2026-01-31", RunArchive(settings.paths.landing).files(day))
        frame = store.runs("2026-01-01", "2026-01-31", category="arithmetic", traffic="selfplay")

Ingest is idempotent on `run_id`: the same files again change nothing, and of two records with
one run_id the newer wins — later `ended_at` (else `started_at`), ties broken by file (landing
files sort by day, then name) and line. Because that order is total, ingesting days in any order
gives the same store, and how a day's lines fall into batches changes nothing either (copies of
one run_id in one file are ranked together even when batches split them). A malformed line
never fails a day: it lands in `quarantine` with its file, line and reason; so does an entry
that is not a readable file. What the fast path cannot confirm is judged by the schema itself
(`autoretrain.runs.validate`), so a stored record loads as a `Run` (one exception: a JSON
object that repeats a key, which DuckDB reads by its first value and pydantic by its last;
`records()` skips such a record if pydantic refuses it).

One writer process at a time (DuckDB), and readers (`read_only=True`) cannot open the file while
a writer holds it: opening waits a bounded time for the lock (`LOCK_WAIT_S`), then raises
`StoreLocked`, whose message names the holder.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from autoretrain.runs.ingest import RAW_CHARS, Rejected, read_files
from autoretrain.runs.rules import UNSURE, fast_sql, unquote
from autoretrain.runs.schema import Run
from autoretrain.runs.validate import judge

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, day DATE, schema_version INTEGER, scenario_id VARCHAR,
  instance_hash VARCHAR, category VARCHAR, workflow VARCHAR, agent_version VARCHAR,
  provider VARCHAR, model VARCHAR, slot VARCHAR, traffic VARCHAR, status VARCHAR,
  started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, latency_s DOUBLE, cost_usd DOUBLE,
  prompt_tokens BIGINT, completion_tokens BIGINT, n_messages INTEGER, n_recoveries INTEGER,
  n_escalations INTEGER, verified BOOLEAN, score DOUBLE, record JSON USING COMPRESSION zstd,
  source_file VARCHAR,
  source_line BIGINT, ingested_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS events (
  run_id VARCHAR, seq INTEGER, type VARCHAR, agent VARCHAR, "at" TIMESTAMPTZ,
  duration_s DOUBLE, payload JSON
);
CREATE TABLE IF NOT EXISTS quarantine (
  day DATE, file VARCHAR, line BIGINT, reason VARCHAR, raw VARCHAR, quarantined_at TIMESTAMPTZ
);
"""

RUN_COLUMNS = (
    "run_id, day, schema_version, scenario_id, instance_hash, category, workflow, agent_version, "
    "provider, model, slot, traffic, status, started_at, ended_at, latency_s, cost_usd, "
    "prompt_tokens, completion_tokens, n_messages, n_recoveries, n_escalations, verified, score"
)
JSON_TEXT = pa.json_(pa.large_string())
WITH_TEXT = "FROM staged s JOIN batch_lines b USING (file_idx, line)"  # a staged line's text
FILTERS = {
    "run_ids": "run_id",
    "scenario": "scenario_id",
    "category": "category",
    "model": "model",
    "slot": "slot",
    "traffic": "traffic",
    "status": "status",
    "provider": "provider",
    "agent_version": "agent_version",
}
# How long opening the store waits for another process's lock before it gives up, in seconds.
# A reader (`autoretrain runs`, `review`) waits briefly; a second writer waits for a short
# ingest to finish. Both then say who holds the store, in one line.
LOCK_WAIT_S = {"read": 5.0, "write": 30.0}


class StoreNotFound(FileNotFoundError):
    pass


class StoreLocked(RuntimeError):
    """Another process holds the run store's lock and did not let go within the wait."""


def _holder(message: str) -> str:
    # DuckDB: "... Conflicting lock is held in /usr/bin/python3 (PID 1234) by user x. ..."
    found = re.search(r"held in (\S+) \(PID (\d+)\)", message)
    return f" (PID {found.group(2)}, {Path(found.group(1)).name})" if found else ""


def connect(path: Path, read_only: bool, config: dict, wait_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect that waits up to wait_s for a lock held by another process."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                role = "read" if read_only else "write to"
                raise StoreLocked(
                    f"cannot {role} the run store {path}: another process{_holder(str(exc))} "
                    f"holds its lock (waited {wait_s:g} s). A writer (an ingest, a Dagster "
                    "run) keeps it until it finishes: try again then"
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)


@dataclass
class IngestReport:
    """What one day's ingest did. `read` counts non-blank lines (plus one per empty file);
    read == inserted + replaced + unchanged + superseded + quarantined."""

    day: str
    files: int = 0
    bytes: int = 0
    read: int = 0
    blank_lines: int = 0
    inserted: int = 0
    replaced: int = 0
    unchanged: int = 0
    superseded: int = 0  # an older copy of a run_id that a newer line of the same day replaced
    quarantined: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # entries that are not files
    schema_versions: dict[int, int] = field(default_factory=dict)  # of the records stored
    unknown_schema_versions: dict[int, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> count
    seconds: float = 0.0

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.read if self.read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "quarantine_rate": self.quarantine_rate}


# A duplicate's quarantine reason; {id} and {winner} are SQL expressions.
_DUPLICATE = (
    "'duplicate run_id: ' || {id} || ' appears again at line ' || {winner} "
    "|| ' of this file; the newer record was kept'"
)
# A batch's copy that lost to the stored row and counts as unchanged: the stored row is from an
# earlier ingest, or the copy is older than the row stored before this ingest replaced it.
_UNCHANGED_OLDER = "d.action = 'older' AND (NOT d.seen_now OR d.older_than_before)"
# Only the batch's newest copy changes the store; an older file's copy that beat the stored row
# still lost to it, so it counts as superseded and writes nothing.
_WINS = "d.rk = 1"


class RunStore:
    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        *,
        max_record_bytes: int = 10 * 1024 * 1024,
        chunk_bytes: int = 32 * 1024 * 1024,
        memory_limit: str = "1GB",
        merge_bytes: int = 64 * 1024 * 1024,
        commit_bytes: int = 256 * 1024 * 1024,
        landing: Path | None = None,
        lock_wait_s: float | None = None,
    ):
        self.path = Path(path)
        self.read_only = read_only
        self.max_record_bytes = max_record_bytes
        self.chunk_bytes = chunk_bytes
        self.merge_bytes = merge_bytes
        self.commit_bytes = commit_bytes
        # Files under the landing root are stored by their path relative to it, so the store
        # survives moving the data root and "file order" is the day, then the part name.
        self.landing = landing
        if read_only and not self.path.exists():
            raise StoreNotFound(
                f"no run store at {self.path}: run `autoretrain ingest` to build it from the "
                "landing zone"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A bounded buffer pool keeps a big ingest's memory flat: DuckDB spills, not grows.
        config = {"memory_limit": memory_limit}
        wait = LOCK_WAIT_S["read" if read_only else "write"] if lock_wait_s is None else lock_wait_s
        self.con = connect(self.path, read_only, config, wait)
        if not read_only:
            self.con.execute(DDL)
        self.con.execute("SET TimeZone = 'UTC'")

    @classmethod
    def from_settings(cls, settings: Any, read_only: bool = False) -> RunStore:
        return cls(
            settings.paths.database,
            read_only=read_only,
            max_record_bytes=settings.ingest.max_record_bytes,
            landing=settings.paths.landing,
        )

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest ---------------------------------------------------------------------------------
    def ingest_day(self, day: str, files: Sequence[Path]) -> IngestReport:
        """Merge one landing day's files into the store (see the module docstring).

        Lines are read in chunks and checked and merged in batches of about `merge_bytes`
        (whole chunks, possibly from several files), so memory follows the batch size, not the
        size of the day; a transaction is committed every `commit_bytes`."""
        t0 = time.perf_counter()
        report = IngestReport(day=day, files=len(files))
        names = [self._name(f) for f in files]
        con = self.con
        # The ingest's own timestamp marks the rows it wrote, which tells "replaced a row from
        # an earlier ingest" from "superseded a copy seen earlier in this one".
        self._stamp = datetime.now(UTC)
        con.register("files", pa.table({"file_idx": range(len(names)), "file": names}))
        batch: list[pa.Table] = []
        batch_bytes = pending = 0
        con.begin()
        try:
            con.execute(
                "DELETE FROM quarantine WHERE day = ?::DATE AND list_contains(?, file)",
                [day, names],
            )
            # A file's newest copy of a run_id that lost to another file's copy is not stored,
            # yet a later batch's copy from the same file must rank against it (so the result
            # does not depend on how lines fall into batches): such copies are kept here for
            # the rest of the day's ingest, with what they were counted as.
            con.execute(
                "CREATE OR REPLACE TEMP TABLE file_losers (file_idx INTEGER, line BIGINT, "
                "run_id VARCHAR, source_file VARCHAR, ts TIMESTAMPTZ, raw VARCHAR, "
                "counted VARCHAR)"
            )
            # A stored row from before this ingest that a copy replaced: a copy older than it
            # counts as unchanged, whichever batch it comes in.
            con.execute(
                "CREATE OR REPLACE TEMP TABLE before_ingest (run_id VARCHAR, ts TIMESTAMPTZ, "
                "source_file VARCHAR, source_line BIGINT)"
            )
            for idx, chunk in read_files(files, self.max_record_bytes, self.chunk_bytes):
                if chunk is None or isinstance(chunk, str):
                    why = chunk or "empty file: no records"
                    self._insert_rejected(day, idx, [Rejected(0, why, "")])
                    report.read += 1
                    if chunk:  # not a file: skipped, and said so
                        report.skipped.append({"file": names[idx], "reason": chunk})
                        log.warning("ingest %s: skipped %s: %s", day, names[idx], chunk)
                    continue
                report.bytes += chunk.nbytes
                report.read += len(chunk.rejected)
                self._insert_rejected(day, idx, chunk.rejected)
                if len(chunk.table):
                    batch.append(chunk.table.add_column(0, "file_idx", _fill(idx, chunk.table)))
                    batch_bytes += chunk.nbytes
                if batch_bytes >= self.merge_bytes:
                    self._ingest_batch(day, batch, report)
                    pending += batch_bytes
                    batch, batch_bytes = [], 0
                # Each commit writes the write-ahead log and checkpoints; committing every
                # 32 MB chunk cost about twice as much as one commit for 100 MB (measured). A
                # crash loses the uncommitted batches; ingesting the day again completes it.
                if pending >= self.commit_bytes:
                    con.commit()
                    con.begin()
                    pending = 0
            if batch:
                self._ingest_batch(day, batch, report)
            self._count_quarantine(day, report)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            con.unregister("files")
            with contextlib.suppress(duckdb.Error):
                con.execute("DROP TABLE IF EXISTS file_losers")
                con.execute("DROP TABLE IF EXISTS before_ingest")
        report.seconds = round(time.perf_counter() - t0, 3)
        log.info(
            "ingest %s: %d files, %d read, %d inserted, %d replaced, %d unchanged, %d quarantined",
            day, report.files, report.read, report.inserted, report.replaced, report.unchanged,
            report.quarantined,
        )  # fmt: skip
        return report

    def _name(self, path: Path) -> str:
        # The entry's own name in its resolved folder: a part file that is a symlink (perhaps
        # a dangling one, or a loop) is named as it appears in the landing zone.
        path = path.parent.resolve() / path.name
        if self.landing is not None:
            try:
                return path.relative_to(self.landing.resolve()).as_posix()
            except ValueError:
                pass
        return str(path)

    def _insert_rejected(self, day: str, idx: int, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        rows = pa.table(
            {
                "line": [r.line for r in rejected],
                "reason": [r.reason for r in rejected],
                "raw": [r.raw for r in rejected],
            }
        )
        self.con.register("pre_rejected", rows)
        self.con.execute(
            "INSERT INTO quarantine SELECT ?::DATE, f.file, p.line, p.reason, p.raw, now() "
            "FROM pre_rejected p, files f WHERE f.file_idx = ?",
            [day, idx],
        )
        self.con.unregister("pre_rejected")

    def _ingest_batch(self, day: str, tables: list[pa.Table], report: IngestReport) -> None:
        con = self.con
        lines = pa.concat_tables(tables)
        # Several record batches let DuckDB spread a batch over its threads.
        # The lines stay in Arrow (registered as `batch_lines`): `staged` holds the verdicts and
        # typed columns, not the text, because a temporary table dropped inside a transaction
        # keeps its memory until the commit.
        # The text is typed JSON (Arrow's JSON extension) so that the lines checked valid go
        # into the JSON `record` column without DuckDB parsing them once more.
        text = lines.column("text")
        lines = lines.set_column(
            lines.schema.get_field_index("text"),
            pa.field("text", JSON_TEXT),
            pa.chunked_array(
                [pa.ExtensionArray.from_storage(JSON_TEXT, c) for c in text.chunks], JSON_TEXT
            ),
        )
        con.register("batch_lines", pa.Table.from_batches(lines.to_batches(max_chunksize=2048)))
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE staged AS {fast_sql('batch_lines')}")
            self._judge_unsure()
            self._ingest_staged(day, len(lines), report)
        finally:
            with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses it
                con.unregister("batch_lines")

    def _ingest_staged(self, day: str, n_lines: int, report: IngestReport) -> None:
        con = self.con
        staged = con.execute("SELECT count(*) FROM staged").fetchall()[0][0]
        report.read += staged
        report.blank_lines += n_lines - staged
        self._explain_problems(day)
        for version, n in con.execute(
            "SELECT schema_version, count(*) FROM staged WHERE problem IS NULL GROUP BY 1"
        ).fetchall():
            report.schema_versions[version] = report.schema_versions.get(version, 0) + n
        for version, n in con.execute(
            "SELECT seen_version, count(*) FROM staged WHERE starts_with(problem, 'unknown "
            "schema_version') AND seen_version IS NOT NULL GROUP BY 1"
        ).fetchall():
            report.unknown_schema_versions[version] = (
                report.unknown_schema_versions.get(version, 0) + n
            )
        self._merge(day, report)
        con.execute("DROP TABLE staged")

    def _judge_unsure(self) -> None:
        """The lines the fast path could not confirm are judged by the schema itself: a good
        one is typed from pydantic's own serialisation of it (its stored record stays the line
        as written), a bad one gets pydantic's reason."""
        con = self.con
        rows = con.execute(
            f"SELECT s.file_idx, s.line, b.text, b.last, json_valid(b.text) {WITH_TEXT} "
            f"WHERE s.problem = '{UNSURE}' ORDER BY 1, 2"
        ).fetchall()
        if not rows:
            return
        good: dict[str, list] = {"file_idx": [], "line": [], "text": [], "last": []}
        bad: dict[str, list] = {"file_idx": [], "line": [], "problem": []}
        for file_idx, line, text, last, valid in rows:
            run, why = judge(text)
            if run is not None and not valid:  # never seen; kept so the JSON column stays valid
                run, why = None, "invalid JSON: DuckDB's JSON reader refuses this line"
            if run is None:
                bad["file_idx"].append(file_idx)
                bad["line"].append(line)
                bad["problem"].append(why)
            else:
                good["file_idx"].append(file_idx)
                good["line"].append(line)
                good["text"].append(run.model_dump_json())
                good["last"].append(last)
        if bad["line"]:
            con.register("judged", pa.table(bad))
            con.execute(
                "UPDATE staged SET problem = j.problem FROM judged j "
                "WHERE staged.file_idx = j.file_idx AND staged.line = j.line"
            )
            con.unregister("judged")
        if good["line"]:
            table = pa.table(
                {**good, "file_idx": pa.array(good["file_idx"], pa.int32())}
            ).append_column("plain", pa.array([True] * len(good["line"])))
            con.register("normalized", table)
            con.execute(
                "DELETE FROM staged WHERE (file_idx, line) IN "
                "(SELECT (file_idx, line) FROM normalized)"
            )
            con.execute(f"INSERT INTO staged {fast_sql('normalized', trusted=True)}")
            con.unregister("normalized")

    def _explain_problems(self, day: str) -> None:
        """Quarantine this batch's failed lines with their reasons."""
        con = self.con
        con.execute(
            "UPDATE staged SET problem = problem || ' (truncated last line: no newline at end "
            "of file)' WHERE last AND starts_with(problem, 'invalid JSON')"
        )
        con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, f.file, s.line, s.problem, left(b.text, {RAW_CHARS}), now()
            {WITH_TEXT} JOIN files f USING (file_idx) WHERE s.problem IS NOT NULL""",
            [day],
        )

    def _merge(self, day: str, report: IngestReport) -> None:
        """Merge this batch's good lines into `runs`: newest per run_id wins (see module doc).

        Of two copies in one file the older is a duplicate (quarantined). Each file's newest
        copy is then weighed against the stored row: the newest of all is kept; a copy from
        another file that lost is superseded (seen in this ingest) or unchanged (the stored
        row is older than this ingest); the landing zone keeps it either way."""
        self._rank_within_files(day, report)
        self._weigh_against_store()
        self._quarantine_lost_copies(day)
        replaced_any = self._count_decisions(report)
        self._remember_losers()
        if replaced_any:  # a stored row is replaced: its events go with it
            changed = f"SELECT run_id FROM decisions d WHERE {_WINS} AND d.action = 'newer'"
            self.con.execute(f"DELETE FROM events WHERE run_id IN ({changed})")
            self.con.execute(f"DELETE FROM runs WHERE run_id IN ({changed})")
        self._insert_kept(day)
        self.con.execute("DROP TABLE decisions")

    def _rank_within_files(self, day: str, report: IngestReport) -> None:
        """`in_file`: every good line ranked among its run_id's copies from the same file
        (newest first), together with the copies of earlier batches that still stand for their
        file: a stored row this ingest wrote, or a file's copy that lost to another file's
        (`file_losers`). The older copies go to quarantine as duplicates of the file's newest."""
        con = self.con
        con.execute(
            """CREATE OR REPLACE TEMP TABLE in_file AS
            SELECT *, row_number() OVER w AS file_rk, first_value(line) OVER w AS win_line
            FROM (
              SELECT s.file_idx, s.line, s.run_id, f.file AS source_file,
                     coalesce(s.ended_at, s.started_at) AS ts, 'new' AS kind
              FROM staged s JOIN files f USING (file_idx) WHERE s.problem IS NULL
              UNION ALL
              SELECT file_idx, line, run_id, source_file, ts, 'loser' FROM file_losers
              WHERE run_id IN (SELECT run_id FROM staged WHERE problem IS NULL)
              UNION ALL
              SELECT f.file_idx, r.source_line, r.run_id, r.source_file,
                     coalesce(r.ended_at, r.started_at), 'stored'
              FROM runs r JOIN files f ON f.file = r.source_file
              WHERE r.ingested_at = ?
                AND r.run_id IN (SELECT run_id FROM staged WHERE problem IS NULL)
            )
            WINDOW w AS (PARTITION BY run_id, file_idx ORDER BY ts DESC, line DESC)""",
            [self._stamp],
        )
        duplicate = _DUPLICATE.format(id="i.run_id", winner="i.win_line")
        con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, i.source_file, i.line, {duplicate}, left(b.text, {RAW_CHARS}), now()
            FROM in_file i JOIN batch_lines b USING (file_idx, line)
            WHERE i.kind = 'new' AND i.file_rk > 1""",
            [day],
        )
        beaten = "FROM in_file WHERE kind IN ('loser', 'stored') AND file_rk > 1"
        # Rare (copies of one run_id in one file, in different batches): checked first, so an
        # ordinary batch does not read the stored records' column.
        if not con.execute(f"SELECT count(*) {beaten}").fetchall()[0][0]:
            return
        con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, i.source_file, i.line, {duplicate}, l.raw, now()
            FROM in_file i JOIN file_losers l USING (file_idx, line)
            WHERE i.kind = 'loser' AND i.file_rk > 1
            UNION ALL
            SELECT ?::DATE, i.source_file, i.line, {duplicate}, left(r.record, {RAW_CHARS}), now()
            FROM in_file i JOIN runs r USING (run_id)
            WHERE i.kind = 'stored' AND i.file_rk > 1""",
            [day, day],
        )
        # An earlier copy beaten by a newer one from its own file is a duplicate after all: what
        # it was counted as is taken back, and the duplicates that named it name the new winner.
        # (A beaten stored row is replaced by that winner below, or by a newer one.)
        for counted, n in con.execute(
            "SELECT l.counted, count(*) FROM in_file i JOIN file_losers l USING (file_idx, line) "
            "WHERE i.kind = 'loser' AND i.file_rk > 1 GROUP BY 1"
        ).fetchall():
            if counted == "unchanged":
                report.unchanged -= n
            else:
                report.superseded -= n
        self._repoint(day, f"SELECT source_file, run_id, line AS old_line, win_line {beaten}")
        con.execute(
            "DELETE FROM file_losers WHERE (file_idx, line) IN "
            "(SELECT (file_idx, line) FROM in_file WHERE kind = 'loser' AND file_rk > 1)"
        )

    def _repoint(self, day: str, moves: str) -> None:
        """Duplicates that name a file's former newest copy (`old_line`) name its new one
        (`win_line`); `moves` selects (source_file, run_id, old_line, win_line)."""
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE moves AS {moves}")
        if not self.con.execute("SELECT count(*) FROM moves").fetchall()[0][0]:
            self.con.execute("DROP TABLE moves")  # the usual batch: nothing to re-point
            return
        old = _DUPLICATE.format(id="m.run_id", winner="m.old_line")
        new = _DUPLICATE.format(id="m.run_id", winner="m.win_line")
        self.con.execute(
            f"""UPDATE quarantine SET reason = {new} FROM moves m
            WHERE quarantine.day = ?::DATE AND quarantine.file = m.source_file
              AND quarantine.reason = {old}""",
            [day],
        )
        self.con.execute("DROP TABLE moves")

    def _weigh_against_store(self) -> None:
        """`decisions`: each file's newest copy from this batch, ranked across the batch (rk = 1
        is the batch's newest), and weighed against the stored row as the store's order has it
        (time, file, line): insert, same, newer or older. `stored_beaten`: the stored row, which
        this ingest wrote, lost to a newer copy from its own file (it is a duplicate now)."""
        self.con.execute(
            """CREATE OR REPLACE TEMP TABLE decisions AS
            SELECT w.file_idx, w.line, w.run_id, w.source_file, w.ts, w.rk,
              o.source_line AS old_line, o.ts AS old_ts, o.source_file AS old_file,
              coalesce(w.ts < b.ts OR (w.ts = b.ts AND (w.source_file < b.source_file OR
                (w.source_file = b.source_file AND w.line < b.source_line))), false)
                AS older_than_before,
              o.source_file = w.source_file AS same_file, o.ingested_at = ? AS seen_now,
              w.run_id IN (SELECT run_id FROM in_file WHERE kind = 'stored' AND file_rk > 1)
                AS stored_beaten,
              CASE
                WHEN o.run_id IS NULL THEN 'insert'
                WHEN o.source_file = w.source_file AND o.source_line = w.line THEN 'same'
                WHEN w.ts > o.ts OR (w.ts = o.ts AND (w.source_file > o.source_file OR
                     (w.source_file = o.source_file AND w.line > o.source_line))) THEN 'newer'
                ELSE 'older'
              END AS action
            FROM (SELECT *, row_number() OVER (PARTITION BY run_id
                                               ORDER BY ts DESC, source_file DESC, line DESC) AS rk
                  FROM in_file WHERE file_rk = 1 AND kind = 'new') w
            LEFT JOIN (SELECT run_id, coalesce(ended_at, started_at) AS ts, source_file,
                              source_line, ingested_at FROM runs
                       WHERE run_id IN (SELECT run_id FROM in_file)) o USING (run_id)
            LEFT JOIN before_ingest b USING (run_id)""",
            [self._stamp],
        )
        self.con.execute("DROP TABLE in_file")

    def _quarantine_lost_copies(self, day: str) -> None:
        """Within one file, the copy that lost to the other is a duplicate: the stored row (of
        an earlier ingest; this ingest's were ranked with the batch) when the batch's copy is
        newer, the batch's copy when it is older. Duplicates that named the loser name the
        winner."""
        self.con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, d.source_file, d.old_line,
                   {_DUPLICATE.format(id="d.run_id", winner="d.line")}, left(r.record, {RAW_CHARS}), now()
            FROM decisions d JOIN runs r USING (run_id)
            WHERE {_WINS} AND d.action = 'newer' AND d.same_file AND NOT d.seen_now
            UNION ALL
            SELECT ?::DATE, d.source_file, d.line,
                   {_DUPLICATE.format(id="d.run_id", winner="d.old_line")}, left(b.text, {RAW_CHARS}), now()
            FROM decisions d JOIN batch_lines b USING (file_idx, line)
            WHERE d.action = 'older' AND d.same_file""",
            [day, day],
        )  # fmt: skip
        self._repoint(
            day,
            f"""SELECT source_file, run_id, old_line, line AS win_line FROM decisions d
            WHERE {_WINS} AND action = 'newer' AND same_file AND NOT seen_now
            UNION ALL
            SELECT source_file, run_id, line, old_line FROM decisions
            WHERE action = 'older' AND same_file""",
        )

    def _remember_losers(self) -> None:
        """Into `file_losers`: the batch's file copies that lost to another file's copy, and a
        stored row of this ingest that a newer copy from another file displaces (it stood for
        its file, and still does for that file's later batches). Into `before_ingest`: a row
        stored before this ingest that the batch replaces."""
        lost = f"""(d.action = 'older' AND NOT d.same_file)
               OR (NOT {_WINS} AND d.action IN ('insert', 'newer'))"""
        displaced = f"""{_WINS} AND d.action = 'newer' AND NOT d.same_file AND d.seen_now
              AND NOT d.stored_beaten"""
        replaced = f"{_WINS} AND d.action = 'newer' AND NOT d.seen_now"
        n_lost, n_displaced, n_replaced = self.con.execute(
            f"SELECT count(*) FILTER ({lost}), count(*) FILTER ({displaced}), "
            f"count(*) FILTER ({replaced}) FROM decisions d"
        ).fetchall()[0]
        if n_replaced:
            self.con.execute(
                "INSERT INTO before_ingest SELECT run_id, old_ts, old_file, old_line "
                f"FROM decisions d WHERE {replaced}"
            )
        if not (n_lost or n_displaced):  # the usual batch: every run_id in one file
            return
        self.con.execute(
            f"""INSERT INTO file_losers
            SELECT d.file_idx, d.line, d.run_id, d.source_file, d.ts, left(b.text, {RAW_CHARS}),
                   CASE WHEN {_UNCHANGED_OLDER} THEN 'unchanged' ELSE 'superseded' END
            FROM decisions d JOIN batch_lines b USING (file_idx, line) WHERE {lost}
            UNION ALL
            SELECT f.file_idx, d.old_line, d.run_id, r.source_file, d.old_ts,
                   left(r.record, {RAW_CHARS}), 'superseded'
            FROM decisions d JOIN runs r USING (run_id) JOIN files f ON f.file = r.source_file
            WHERE {displaced}"""
        )

    def _count_decisions(self, report: IngestReport) -> bool:
        """Add the decisions to the report's counts; True when a stored row is replaced."""
        wins = _WINS
        counts = self.con.execute(
            f"""SELECT
              count(*) FILTER ({wins} AND action = 'insert'),
              count(*) FILTER ({wins} AND action = 'newer' AND NOT same_file AND NOT seen_now),
              count(*) FILTER (action = 'same' OR ({_UNCHANGED_OLDER} AND NOT same_file)),
              count(*) FILTER (NOT same_file AND seen_now
                               AND ((action = 'newer' AND {wins} AND NOT stored_beaten)
                                    OR (action = 'older' AND NOT older_than_before))),
              count(*) FILTER (NOT {wins} AND action IN ('insert', 'newer')),
              count(*) FILTER ({wins} AND action = 'newer')
            FROM decisions d"""
        ).fetchall()[0]
        report.inserted += counts[0]
        report.replaced += counts[1]
        report.unchanged += counts[2]
        report.superseded += counts[3] + counts[4]
        return bool(counts[5])

    def _insert_kept(self, day: str) -> None:
        """The batch's winning copies into `runs`, and their events into `events`."""
        kept = (
            "FROM staged s JOIN decisions d USING (file_idx, line) "
            f"WHERE {_WINS} AND d.action IN ('insert', 'newer')"
        )
        kept_text = kept.replace("FROM staged s", WITH_TEXT)
        self.con.execute(
            f"""INSERT INTO runs
            SELECT s.run_id, ?::DATE, s.schema_version, s.scenario_id, s.instance_hash,
                   s.category, s.workflow, s.agent_version, s.provider, s.model, s.slot,
                   s.traffic, s.status, s.started_at, s.ended_at, s.latency_s, s.cost_usd,
                   s.prompt_tokens, s.completion_tokens, s.n_messages, s.n_recoveries,
                   s.n_escalations, s.verified, s.score, b.text, d.source_file, s.line, ?
            {kept_text}""",
            [day, self._stamp],
        )
        self.con.execute(
            f"""INSERT INTO events
            SELECT run_id, seq::INTEGER, {unquote("ev.type")},
                   coalesce({unquote("ev.agent")}, 'executor'),
                   TRY_CAST({unquote("ev.at")} AS TIMESTAMPTZ), TRY_CAST(ev.duration_s AS DOUBLE),
                   coalesce(ev.payload, '{{}}'::JSON)
            FROM (
              SELECT s.run_id, unnest(s.events) AS ev, generate_subscripts(s.events, 1) - 1 AS seq
              {kept} AND s.events IS NOT NULL
            )"""
        )

    def _count_quarantine(self, day: str, report: IngestReport) -> None:
        where = "WHERE day = ?::DATE AND file IN (SELECT file FROM files)"
        report.quarantined = self.con.execute(
            f"SELECT count(*) FROM quarantine {where}", [day]
        ).fetchall()[0][0]
        report.quarantine_reasons = dict(
            self.con.execute(
                f"SELECT split_part(reason, ':', 1) AS kind, count(*) FROM quarantine {where} "
                "GROUP BY kind ORDER BY count(*) DESC, kind",
                [day],
            ).fetchall()
        )

    # -- queries --------------------------------------------------------------------------------
    def _where(
        self, start: str | None, end: str | None, filters: dict[str, Any]
    ) -> tuple[str, list]:
        clauses, params = [], []
        if start:
            clauses.append("day >= ?::DATE")
            params.append(start)
        if end:
            clauses.append("day <= ?::DATE")
            params.append(end)
        for key, value in filters.items():
            if value is None:
                continue
            if key not in FILTERS:
                raise TypeError(f"unknown run filter {key!r}; known: {sorted(FILTERS)}")
            values = [value] if isinstance(value, str) else list(value)
            clauses.append(f"list_contains(?, {FILTERS[key]})")
            params.append(values)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def runs(
        self,
        start: str | None = None,
        end: str | None = None,
        *,
        with_record: bool = False,
        **filters: Any,
    ):  # -> polars.DataFrame
        """Runs with `day` in [start, end] (inclusive) matching every filter; a filter takes
        one value or a list. The JSON `record` column only when asked (it is most of the bytes)."""
        where, params = self._where(start, end, filters)
        columns = RUN_COLUMNS + (", record" if with_record else "")
        sql = f"SELECT {columns} FROM runs{where} ORDER BY started_at, run_id"
        return _polars(self.con.sql(sql, params=params).to_arrow_table())

    def records(
        self,
        run_ids: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        *,
        batch_size: int = 1000,
        **filters: Any,
    ) -> Iterator[Run]:
        """Stored runs as `Run` models, streamed in batches (unknown fields kept).

        A stored record the schema refuses (written by an older version, or one whose JSON
        repeats a key, where DuckDB reads the first value and pydantic the last) is skipped
        with a warning naming it, so one such record never stops a dataset build."""
        where, params = self._where(start, end, {**filters, "run_ids": run_ids})
        cur = self.con.cursor()
        cur.execute(f"SELECT run_id, record FROM runs{where} ORDER BY started_at, run_id", params)
        while rows := cur.fetchmany(batch_size):
            for run_id, record in rows:
                run, why = judge(record)
                if run is None:
                    log.warning(
                        "run %s: its stored record does not load (%s); skipped. Ingest its day "
                        "again to quarantine it",
                        run_id,
                        why,
                    )
                    continue
                yield run
        cur.close()

    def quarantine(
        self, start: str | None = None, end: str | None = None, file: str | None = None
    ):  # -> polars.DataFrame
        clauses, params = [], []
        for cond, value in (("day >= ?::DATE", start), ("day <= ?::DATE", end), ("file = ?", file)):
            if value is not None:
                clauses.append(cond)
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"SELECT * FROM quarantine{where} ORDER BY day, file, line"
        return _polars(self.con.sql(sql, params=params).to_arrow_table())

    def summary(self, top_reasons: int = 5) -> dict[str, Any]:
        """Counts by day, category, model, slot and traffic; quarantine count and top reasons."""
        con = self.con

        def counts(column: str) -> dict[str, int]:
            rows = con.execute(
                f"SELECT coalesce({column}::VARCHAR, '(none)'), count(*) FROM runs "
                f"GROUP BY 1 ORDER BY 1"
            ).fetchall()
            return dict(rows)

        total = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
        reasons = con.execute(
            "SELECT split_part(reason, ':', 1) AS kind, count(*) AS n FROM quarantine "
            f"GROUP BY kind ORDER BY n DESC, kind LIMIT {int(top_reasons)}"
        ).fetchall()
        return {
            "database": str(self.path),
            "runs": total,
            "by_day": counts("day"),
            "by_category": counts("category"),
            "by_model": counts("model"),
            "by_slot": counts("slot"),
            "by_traffic": counts("traffic"),
            "by_status": counts("status"),
            "quarantined": quarantined,
            "top_quarantine_reasons": [{"reason": r, "count": n} for r, n in reasons],
        }

    def export(
        self,
        path: Path,
        fmt: Literal["jsonl", "parquet"] = "jsonl",
        start: str | None = None,
        end: str | None = None,
        **filters: Any,
    ) -> int:
        """Write matching runs to `path` (complete or not at all); returns how many.
        JSONL holds the records as stored; Parquet the columns plus `record`."""
        where, params = self._where(start, end, filters)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        order = " ORDER BY started_at, run_id"
        if fmt == "jsonl":
            n = 0
            cur = self.con.cursor()
            cur.execute(f"SELECT record FROM runs{where}{order}", params)
            with open(tmp, "w", encoding="utf-8") as fh:
                while rows := cur.fetchmany(10_000):
                    fh.write("".join(r[0] + "\n" for r in rows))
                    n += len(rows)
            cur.close()
        elif fmt == "parquet":
            sql = f"SELECT {RUN_COLUMNS}, record::VARCHAR AS record FROM runs{where}{order}"
            cur = self.con.cursor()
            cur.execute(f"COPY ({sql}) TO '{_quote(tmp)}' (FORMAT parquet)", params)
            n = self.con.execute(f"SELECT count(*) FROM runs{where}", params).fetchall()[0][0]
            cur.close()
        else:
            raise ValueError(f"export format {fmt!r} is not one of: jsonl, parquet")
        tmp.replace(path)
        return n


def _fill(value: int, table: pa.Table) -> pa.Array:
    return pa.array([value] * len(table), pa.int32())


def _polars(table: pa.Table):  # -> polars.DataFrame
    import polars as pl

    return pl.from_arrow(table)


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
