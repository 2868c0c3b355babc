"""The run store: one DuckDB file (`settings.paths.database`) rebuilt from the landing zone.

    with RunStore.from_settings(settings) as store:
        report = store.ingest_day("2026-01-31", RunArchive(settings.paths.landing).files(day))
        frame = store.runs("2026-01-01", "2026-01-31", category="arithmetic", traffic="selfplay")

Ingest is idempotent on `run_id`: the same files again change nothing, and of two records with
one run_id the newer wins — later `ended_at` (else `started_at`), ties broken by file (landing
files sort by day, then name) and line. Because that order is total, ingesting days in any order
gives the same store. A malformed line never fails a day: it lands in `quarantine` with its file,
line and reason. One writer process at a time (DuckDB); readers pass `read_only=True`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from autoretrain.runs.ingest import (
    MACROS,
    NEEDS_DETAIL,
    RAW_CHARS,
    checked_sql,
    detail_sql,
    json_error,
    read_chunks,
)
from autoretrain.runs.schema import Run

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, day DATE, schema_version INTEGER, scenario_id VARCHAR,
  instance_hash VARCHAR, category VARCHAR, workflow VARCHAR, agent_version VARCHAR,
  provider VARCHAR, model VARCHAR, slot VARCHAR, traffic VARCHAR, status VARCHAR,
  started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, latency_s DOUBLE, cost_usd DOUBLE,
  prompt_tokens BIGINT, completion_tokens BIGINT, n_messages INTEGER, n_recoveries INTEGER,
  n_escalations INTEGER, verified BOOLEAN, score DOUBLE, record JSON, source_file VARCHAR,
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
DETAILED_JSON_ERRORS = 1000  # per day; past that, "invalid JSON" without the position


class StoreNotFound(FileNotFoundError):
    pass


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
    schema_versions: dict[int, int] = field(default_factory=dict)  # of the records stored
    unknown_schema_versions: dict[int, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> count
    seconds: float = 0.0

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.read if self.read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "quarantine_rate": self.quarantine_rate}


class RunStore:
    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        *,
        max_record_bytes: int = 10 * 1024 * 1024,
        chunk_bytes: int = 32 * 1024 * 1024,
        memory_limit: str = "1GB",
        landing: Path | None = None,
    ):
        self.path = Path(path)
        self.read_only = read_only
        self.max_record_bytes = max_record_bytes
        self.chunk_bytes = chunk_bytes
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
        self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        if not read_only:
            self.con.execute(DDL)
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(MACROS)

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
        """Merge one landing day's files into the store (see the module docstring)."""
        t0 = time.perf_counter()
        report = IngestReport(day=day, files=len(files))
        names = [self._name(f) for f in files]
        con = self.con
        con.begin()
        try:
            con.execute(
                "DELETE FROM quarantine WHERE day = ?::DATE AND list_contains(?, file)",
                [day, names],
            )
            con.execute(_STAGED_DDL)
            pre: list[tuple[int, int, str, str]] = []  # (file_idx, line, reason, raw)
            total_lines = 0
            for idx, path in enumerate(files):
                if path.stat().st_size == 0:
                    pre.append((idx, 0, "empty file: no records", ""))
                    report.read += 1
                    continue
                for chunk in read_chunks(path, self.max_record_bytes, self.chunk_bytes):
                    report.bytes += chunk.nbytes
                    pre += [(idx, r.line, r.reason, r.raw) for r in chunk.rejected]
                    report.read += len(chunk.rejected)
                    total_lines += len(chunk.table)
                    if len(chunk.table):
                        # Several record batches let DuckDB spread a chunk over its threads.
                        batches = chunk.table.to_batches(max_chunksize=2048)
                        con.register("chunk_lines", pa.Table.from_batches(batches))
                        con.execute(f"INSERT INTO staged {checked_sql('chunk_lines', idx)}")
                        con.unregister("chunk_lines")
            con.register("files", pa.table({"file_idx": range(len(names)), "file": names}))
            staged = con.execute("SELECT count(*) FROM staged").fetchall()[0][0]
            report.read += staged
            report.blank_lines = total_lines - staged
            self._quarantine(day, pre)
            self._merge(day, report)
            con.unregister("files")
            con.execute("DROP TABLE staged")
            con.commit()
        except BaseException:
            con.rollback()
            raise
        report.seconds = round(time.perf_counter() - t0, 3)
        log.info(
            "ingest %s: %d files, %d read, %d inserted, %d replaced, %d unchanged, %d quarantined",
            day, report.files, report.read, report.inserted, report.replaced, report.unchanged,
            report.quarantined,
        )  # fmt: skip
        return report

    def _name(self, path: Path) -> str:
        if self.landing is not None:
            try:
                return path.resolve().relative_to(self.landing.resolve()).as_posix()
            except ValueError:
                pass
        return str(path.resolve())

    def _quarantine(self, day: str, pre: list[tuple[int, int, str, str]]) -> None:
        con = self.con
        if pre:
            idx, line, reason, raw = zip(*pre, strict=True)
            rows = pa.table({"file_idx": idx, "line": line, "reason": reason, "raw": raw})
            con.register("pre_rejected", rows)
            con.execute(
                "INSERT INTO quarantine SELECT ?::DATE, f.file, p.line, p.reason, p.raw, now() "
                "FROM pre_rejected p JOIN files f USING (file_idx)",
                [day],
            )
            con.unregister("pre_rejected")
        con.execute(
            f"""UPDATE staged SET problem = d.problem
            FROM ({detail_sql(f"(SELECT file_idx, line, text FROM staged WHERE problem = '{NEEDS_DETAIL}')")}) d
            WHERE staged.file_idx = d.file_idx AND staged.line = d.line"""
        )
        # DuckDB says only that a line is not JSON; Python's parser says where, for the first few.
        bad_json = con.execute(
            "SELECT file_idx, line, text FROM staged WHERE problem = 'invalid JSON' "
            f"ORDER BY file_idx, line LIMIT {DETAILED_JSON_ERRORS}"
        ).fetchall()
        if bad_json:
            detail = pa.table(
                {
                    "file_idx": [r[0] for r in bad_json],
                    "line": [r[1] for r in bad_json],
                    "detail": [json_error(r[2]) for r in bad_json],
                }
            )
            con.register("json_detail", detail)
            con.execute(
                "UPDATE staged SET problem = 'invalid JSON: ' || d.detail FROM json_detail d "
                "WHERE staged.file_idx = d.file_idx AND staged.line = d.line"
            )
            con.unregister("json_detail")
        con.execute(
            "UPDATE staged SET problem = problem || ' (truncated last line: no newline at end "
            "of file)' WHERE last AND problem LIKE 'invalid JSON%'"
        )
        con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, f.file, s.line, s.problem, left(s.text, {RAW_CHARS}), now()
            FROM staged s JOIN files f USING (file_idx) WHERE s.problem IS NOT NULL""",
            [day],
        )

    def _merge(self, day: str, report: IngestReport) -> None:
        con = self.con
        # Within the day: newest per run_id wins; an older copy in the same file is a duplicate
        # (quarantined), an older copy in an earlier file was superseded (kept in the landing zone).
        con.execute(
            """CREATE OR REPLACE TEMP TABLE ranked AS
            SELECT s.file_idx, s.line, s.run_id, f.file AS source_file,
                   coalesce(s.ended_at, s.started_at) AS ts,
                   row_number() OVER w AS rk,
                   first_value(s.file_idx) OVER w AS win_file, first_value(s.line) OVER w AS win_line
            FROM staged s JOIN files f USING (file_idx)
            WHERE s.problem IS NULL
            WINDOW w AS (PARTITION BY s.run_id ORDER BY coalesce(s.ended_at, s.started_at) DESC,
                         s.file_idx DESC, s.line DESC)"""
        )
        con.execute(
            f"""INSERT INTO quarantine
            SELECT ?::DATE, f.file, r.line,
                   'duplicate run_id: ' || r.run_id || ' appears again at line ' || r.win_line
                   || ' of this file; the newer record was kept',
                   left(s.text, {RAW_CHARS}), now()
            FROM ranked r JOIN staged s USING (file_idx, line) JOIN files f USING (file_idx)
            WHERE r.rk > 1 AND r.file_idx = r.win_file""",
            [day],
        )
        con.execute(
            """CREATE OR REPLACE TEMP TABLE decisions AS
            SELECT w.file_idx, w.line, w.run_id, w.source_file,
              CASE
                WHEN o.run_id IS NULL THEN 'insert'
                WHEN o.source_file = w.source_file AND o.source_line = w.line THEN 'unchanged'
                WHEN w.ts > o.ts OR (w.ts = o.ts AND (w.source_file > o.source_file OR
                     (w.source_file = o.source_file AND w.line > o.source_line))) THEN 'replace'
                ELSE 'unchanged'
              END AS action
            FROM ranked w
            LEFT JOIN (SELECT run_id, coalesce(ended_at, started_at) AS ts, source_file,
                              source_line FROM runs) o USING (run_id)
            WHERE w.rk = 1"""
        )
        changed = "SELECT run_id FROM decisions WHERE action = 'replace'"
        con.execute(f"DELETE FROM events WHERE run_id IN ({changed})")
        con.execute(f"DELETE FROM runs WHERE run_id IN ({changed})")
        con.execute(
            """INSERT INTO runs
            SELECT s.run_id, ?::DATE, s.schema_version, s.scenario_id, s.instance_hash,
                   s.category, s.workflow, s.agent_version, s.provider, s.model, s.slot,
                   s.traffic, s.status, s.started_at, s.ended_at, s.latency_s, s.cost_usd,
                   s.prompt_tokens, s.completion_tokens, s.n_messages, s.n_recoveries,
                   s.n_escalations, s.verified, s.score, s.text::JSON, d.source_file, s.line, now()
            FROM staged s JOIN decisions d USING (file_idx, line)
            WHERE d.action IN ('insert', 'replace')""",
            [day],
        )
        con.execute(
            """INSERT INTO events
            SELECT run_id, seq::INTEGER, ev ->> 'type', coalesce(ev ->> 'agent', 'executor'),
                   TRY_CAST(ev ->> 'at' AS TIMESTAMPTZ), TRY_CAST(ev ->> 'duration_s' AS DOUBLE),
                   coalesce(ev -> 'payload', '{}'::JSON)
            FROM (
              SELECT s.run_id, unnest(json_extract(s.events, '$[*]')) AS ev,
                     generate_subscripts(json_extract(s.events, '$[*]'), 1) - 1 AS seq
              FROM staged s JOIN decisions d USING (file_idx, line)
              WHERE d.action IN ('insert', 'replace') AND s.events IS NOT NULL
            )"""
        )
        counts = dict(
            con.execute("SELECT action, count(*) FROM decisions GROUP BY action").fetchall()
        )
        report.inserted = counts.get("insert", 0)
        report.replaced = counts.get("replace", 0)
        report.unchanged = counts.get("unchanged", 0)
        report.superseded = con.execute(
            "SELECT count(*) FROM ranked WHERE rk > 1 AND file_idx <> win_file"
        ).fetchall()[0][0]
        report.quarantined = con.execute(
            "SELECT count(*) FROM quarantine WHERE day = ?::DATE AND "
            "file IN (SELECT file FROM files)",
            [day],
        ).fetchall()[0][0]
        report.quarantine_reasons = dict(
            con.execute(
                "SELECT split_part(reason, ':', 1) AS kind, count(*) FROM quarantine "
                "WHERE day = ?::DATE AND file IN (SELECT file FROM files) GROUP BY kind "
                "ORDER BY count(*) DESC",
                [day],
            ).fetchall()
        )
        report.schema_versions = dict(
            con.execute(
                "SELECT schema_version, count(*) FROM staged WHERE problem IS NULL GROUP BY 1"
            ).fetchall()
        )
        report.unknown_schema_versions = dict(
            con.execute(
                "SELECT seen_version, count(*) FROM staged WHERE problem LIKE '%unknown "
                "schema_version%' AND seen_version IS NOT NULL GROUP BY 1"
            ).fetchall()
        )
        con.execute("DROP TABLE ranked")
        con.execute("DROP TABLE decisions")

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
        """Stored runs as `Run` models, streamed in batches (unknown fields kept)."""
        where, params = self._where(start, end, {**filters, "run_ids": run_ids})
        cur = self.con.cursor()
        cur.execute(f"SELECT record FROM runs{where} ORDER BY started_at, run_id", params)
        while rows := cur.fetchmany(batch_size):
            for (record,) in rows:
                yield Run.model_validate_json(record)
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


def _polars(table: pa.Table):  # -> polars.DataFrame
    import polars as pl

    return pl.from_arrow(table)


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


_STAGED_DDL = """
CREATE OR REPLACE TEMP TABLE staged (
  file_idx INTEGER, line BIGINT, last BOOLEAN, text VARCHAR, problem VARCHAR,
  seen_version INTEGER, run_id VARCHAR, schema_version INTEGER, scenario_id VARCHAR,
  instance_hash VARCHAR, category VARCHAR, workflow VARCHAR, agent_version VARCHAR,
  provider VARCHAR, model VARCHAR, slot VARCHAR, traffic VARCHAR, status VARCHAR,
  started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, latency_s DOUBLE, cost_usd DOUBLE,
  prompt_tokens BIGINT, completion_tokens BIGINT, n_messages INTEGER, n_recoveries INTEGER,
  n_escalations INTEGER, verified BOOLEAN, score DOUBLE, events JSON
)
"""
