"""Azure Table mirror of run summaries and promotion decisions, so a team can query runs in Azure.

The local copy is the truth; the mirror catches up, like the Blob mirror (`runs/mirror.py`):

- **Runs**: one entity per run in `mirror.runs_table`, PartitionKey the day the run started
  (UTC, `YYYY-MM-DD`), RowKey the run id; properties scenario, category, model, slot, status,
  verified, score, latency, tokens and cost (see `run_entity`). Read from the landing zone's
  part files, which are immutable once written (atomic rename), so the cursor is the set of part
  files mirrored whole, each keyed by size and mtime.
- **Promotion decisions**: one entity per entry of the registry's append-only promotion ledger
  (every promote and rollback of a slot) in `mirror.promotions_table`, PartitionKey the provider
  profile, RowKey the ledger sequence number zero-padded (so rows sort in ledger order). The
  cursor is the highest sequence number mirrored.

Every write is an upsert (replace) in a transaction of at most 100 entities of one partition, so
sending a batch twice (an answer lost in an outage, a lost cursor) leaves the same entities, never
duplicates. The cursor (`<root>/table-mirror-state.json`) advances only after a part file's last
batch (or a ledger batch) succeeded; after an outage, the next sync resends exactly what is not
vouched for. Each request is retried with exponential backoff; when one has used all its retries
the rest of that sync is not attempted and is reported as pending. `sync` never raises on a
storage error; it returns a `TableSyncReport`. Secrets never reach logs or reports.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoretrain.runs.archive import PART_GLOB
from autoretrain.runs.azure_storage import (
    Redactor,
    describe,
    failure,
    load_state,
    retry,
    save_state,
    service_client,
)

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient

    from autoretrain.runs.schema import Run
    from autoretrain.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "table-mirror-state.json"
STATE_VERSION = 1
# Azure Table: a transaction holds at most 100 operations, all of one partition.
BATCH_SIZE = 100
# Characters a PartitionKey or RowKey may not hold (/, \, #, ?, control characters); '%' and
# quotes also break some SDK and emulator URL paths, so a run id with any of them, or one longer
# than the key limit allows, is stored under a hash and keeps its id in the RunId property.
_UNSAFE_KEY = re.compile(r"[/\\#?%'\"\x00-\x1f\x7f-\x9f]")
_MAX_KEY_CHARS = 255
# Strings beyond this are cut: a property holds at most 64 KiB (32k UTF-16 characters).
_MAX_TEXT_CHARS = 1024


@dataclass
class TableSyncReport:
    """What one sync did. `runs_upserted` counts entities written (a resent batch counts again)."""

    destination: str
    runs_upserted: int = 0
    promotions_upserted: int = 0
    parts_done: list[str] = field(default_factory=list)
    parts_pending: list[str] = field(default_factory=list)
    parts_unchanged: int = 0
    invalid_lines: int = 0
    promotions_note: str | None = None  # why the ledger was not read, when it was not
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.parts_pending

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def row_key(run_id: str) -> str:
    """A run id as a RowKey: itself when it is a legal key, else `h-<sha256 of the id>`."""
    if run_id and len(run_id) <= _MAX_KEY_CHARS and not _UNSAFE_KEY.search(run_id):
        return run_id
    import hashlib

    return "h-" + hashlib.sha256(run_id.encode("utf-8")).hexdigest()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:_MAX_TEXT_CHARS]


def _int64(value: int | None) -> Any:
    from azure.data.tables import EdmType, EntityProperty

    # The SDK types a plain int as Int32 and refuses a bigger one; counts can exceed it.
    return None if value is None else EntityProperty(int(value), EdmType.INT64)


def run_entity(run: Run) -> dict[str, Any]:
    """The table entity of one run summary (None values are left out, as Azure Table has no
    null: a property absent from an entity reads as missing)."""
    last = run.verifications[-1] if run.verifications else None
    entity: dict[str, Any] = {
        "PartitionKey": run.day,
        "RowKey": row_key(run.run_id),
        "RunId": _text(run.run_id),
        "Scenario": _text(run.scenario_id),
        "Category": _text(run.category),
        "Model": _text(run.model),
        "Provider": _text(run.provider),
        "Slot": _text(run.slot),
        "Traffic": run.traffic,
        "Workflow": _text(run.workflow),
        "AgentVersion": _text(run.agent_version),
        "Status": run.status,
        "Verified": run.verified,
        "Score": None if last is None else float(last.score),
        "LatencyS": run.latency_s,
        "PromptTokens": _int64(run.usage.prompt_tokens),
        "CompletionTokens": _int64(run.usage.completion_tokens),
        "TotalTokens": _int64(run.usage.total_tokens),
        "CostUsd": run.cost_usd,
        "Recoveries": len(run.recoveries),
        "Escalations": len(run.escalations),
        "StartedAt": run.started_at,
        "EndedAt": run.ended_at,
    }
    return {k: v for k, v in entity.items() if v is not None}


def promotion_entity(entry: Any) -> dict[str, Any]:
    """The table entity of one promotion-ledger entry (a `deploy.registry.LedgerEntry`)."""
    entity: dict[str, Any] = {
        "PartitionKey": row_key(entry.provider_profile),
        "RowKey": f"{int(entry.seq):019d}",
        "Seq": _int64(entry.seq),
        "Profile": _text(entry.provider_profile),
        "Slot": _text(entry.slot),
        "Action": _text(entry.action),
        "FromVersion": _text(entry.from_version),
        "ToVersion": _text(entry.to_version),
        "At": entry.at,
        "Actor": _text(entry.actor),
        "Reason": _text(entry.reason),
        "EvaluationId": _text(entry.evaluation_id),
    }
    return {k: v for k, v in entity.items() if v is not None}


@dataclass(frozen=True)
class _Part:
    path: Path
    relative: str
    size: int
    mtime_ns: int


class TableMirror:
    """Mirrors run summaries (landing zone) and promotion decisions (ledger) into two tables."""

    def __init__(
        self,
        service: TableServiceClient,
        root: Path,
        *,
        runs_table: str,
        promotions_table: str | None,
        landing: Path | None = None,
        database: Path | None = None,
        state_path: Path | None = None,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        secrets: Iterable[str] = (),
    ):
        self.service = service
        self.root = root.resolve()
        self.runs_table = runs_table
        self.promotions_table = promotions_table
        self.landing = (landing or self.root / "landing" / "runs").resolve()
        self.database = database
        self.state_path = state_path or self.root / STATE_FILE
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._redact = Redactor(secrets)
        self._created: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> TableMirror | None:
        """The mirror the settings describe, or None when `mirror.runs_table` is not set.

        Auth as the Blob mirror: the storage connection string in `mirror.connection_string_env`
        (it must name a TableEndpoint, or an account whose default endpoint is Azure's), else
        `DefaultAzureCredential` against `mirror.table_endpoint`.
        """
        conf = settings.mirror
        if not conf.runs_table:
            return None
        from azure.data.tables import TableServiceClient

        service, secrets = service_client(
            TableServiceClient,
            conf,
            endpoint=conf.table_endpoint,
            endpoint_setting="mirror.table_endpoint",
            enabled_by="mirror.runs_table",
            enabled_value=conf.runs_table,
        )
        paths = settings.paths
        return cls(
            service,
            paths.root,
            runs_table=conf.runs_table,
            promotions_table=conf.promotions_table,
            landing=paths.landing,
            database=paths.database,
            max_retries=conf.max_retries,
            backoff_s=conf.backoff_s,
            backoff_max_s=conf.backoff_max_s,
            secrets=secrets,
        )

    @property
    def destination(self) -> str:
        """The account's table endpoint and the table names, without credentials."""
        base = f"{self.service.scheme}://{self.service._primary_hostname}"  # noqa: SLF001
        account = self.service.account_name or ""
        if account and account not in base:
            base = f"{base}/{account}"
        tables = ",".join(t for t in (self.runs_table, self.promotions_table) if t)
        return f"{base} [{tables}]"

    def __repr__(self) -> str:
        return f"TableMirror({self.destination!r})"

    # ---- sync ---------------------------------------------------------------------------

    def sync(
        self, progress: Callable[[str, str], None] | None = None, verify: bool = False
    ) -> TableSyncReport:
        """Upsert the runs of every part file not yet mirrored whole, then the ledger entries
        after the cursor. `verify`: ignore the cursor and upsert everything again (repairs
        entities deleted or changed remotely; upserts, so nothing is duplicated).
        `progress(what, outcome)` is called per part file and ledger batch."""
        started = time.monotonic()
        report = TableSyncReport(self.destination)
        state = self._load_state()
        if verify:
            state = {"parts": {}, "ledger_seq": 0}
        try:
            self._sync_runs(state, report, progress)
            if self.promotions_table and not report.errors:
                self._sync_promotions(state, report, progress)
        finally:
            self._save_state(state)
            report.duration_s = time.monotonic() - started
        log.info(
            "table mirror: %d runs upserted (%d part files, %d unchanged, %d pending), "
            "%d promotions, %d errors in %.1f s",
            report.runs_upserted,
            len(report.parts_done),
            report.parts_unchanged,
            len(report.parts_pending),
            report.promotions_upserted,
            len(report.errors),
            report.duration_s,
        )
        return report

    def _sync_runs(
        self,
        state: dict[str, Any],
        report: TableSyncReport,
        progress: Callable[[str, str], None] | None,
    ) -> None:
        done: dict[str, list[int]] = state["parts"]
        todo = []
        for part in self._parts():
            if done.get(part.relative) == [part.size, part.mtime_ns]:
                report.parts_unchanged += 1
            else:
                todo.append(part)
        for index, part in enumerate(todo):
            try:
                entities, invalid = self._part_entities(part)
            except OSError as exc:
                report.errors.append(f"{part.relative}: cannot read ({exc.strerror or exc})")
                report.parts_pending.append(part.relative)
                continue
            try:
                for batch in _batches(entities):
                    self._retry(
                        lambda batch=batch: self._upsert(self.runs_table, batch),
                        what=f"upsert {len(batch)} runs of {part.relative}",
                    )
                    report.runs_upserted += len(batch)
            except Exception as exc:
                reason = failure(exc)
                report.errors.append(self._redact(f"{part.relative}: {reason}"))
                report.parts_pending += [p.relative for p in todo[index:]]
                if progress:
                    progress(part.relative, "failed")
                log.warning("table mirror: %s", report.errors[-1])
                return  # the rest waits for the next sync (an outage costs one backoff)
            report.invalid_lines += invalid
            done[part.relative] = [part.size, part.mtime_ns]
            report.parts_done.append(part.relative)
            if progress:
                progress(part.relative, "upserted")
            if len(report.parts_done) % 50 == 0:
                self._save_state(state)

    def _sync_promotions(
        self,
        state: dict[str, Any],
        report: TableSyncReport,
        progress: Callable[[str, str], None] | None,
    ) -> None:
        entries, note = self._ledger_after(int(state.get("ledger_seq", 0)))
        report.promotions_note = note
        # In ledger order, runs of consecutive entries of one profile form a transaction; the
        # cursor moves past a batch only once it is stored, so it never skips an entry.
        for batch in _ledger_batches(entries):
            try:
                self._retry(
                    lambda batch=batch: self._upsert(
                        self.promotions_table, [promotion_entity(e) for e in batch]
                    ),
                    what=f"upsert {len(batch)} promotions",
                )
            except Exception as exc:
                reason = failure(exc)
                report.errors.append(self._redact(f"promotions: {reason}"))
                log.warning("table mirror: %s", report.errors[-1])
                if progress:
                    progress("promotions", "failed")
                return
            report.promotions_upserted += len(batch)
            state["ledger_seq"] = max(int(e.seq) for e in batch)
        if entries and progress:
            progress("promotions", "upserted")

    # ---- local side ---------------------------------------------------------------------

    def _parts(self) -> list[_Part]:
        if not self.landing.exists():
            return []
        found = []
        for path in self.landing.glob(f"date=*/{PART_GLOB}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            relative = path.resolve().relative_to(self.root).as_posix()
            found.append(_Part(path, relative, stat.st_size, stat.st_mtime_ns))
        # Oldest first: a run recorded again in a later part file ends with its later summary,
        # also when everything is sent again (part names are random, their times are not).
        return sorted(found, key=lambda part: (part.mtime_ns, part.relative))

    def _part_entities(self, part: _Part) -> tuple[list[dict[str, Any]], int]:
        """The run entities of one part file (the last record of a run id wins) and the number
        of lines that are not valid runs (ingest quarantines them; the mirror skips them)."""
        from pydantic import ValidationError

        from autoretrain.runs.schema import Run

        entities: dict[tuple[str, str], dict[str, Any]] = {}
        invalid = 0
        with open(part.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    run = Run.model_validate_json(line)
                except (ValidationError, ValueError):
                    invalid += 1
                    continue
                entity = run_entity(run)
                entities[(entity["PartitionKey"], entity["RowKey"])] = entity
        return list(entities.values()), invalid

    def _ledger_after(self, seq: int) -> tuple[list[Any], str | None]:
        """Ledger entries after `seq`, oldest first, from a read-only connection; a missing or
        busy database is a note, not an error (the entries wait for the next sync)."""
        if self.database is None or not self.database.exists():
            return [], "no run store yet: no promotions to mirror"
        import duckdb

        from autoretrain.deploy.registry import LedgerEntry

        try:
            con = duckdb.connect(str(self.database), read_only=True)
        except duckdb.IOException as exc:
            return [], f"run store busy, promotions wait for the next sync ({describe(exc)})"
        try:
            found = con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name = 'promotion_ledger'"
            ).fetchone()
            if not found or not found[0]:
                return [], "no promotion ledger yet"
            rows = con.execute(
                'SELECT seq, slot, provider_profile, from_version, to_version, "at", actor, '
                "reason, evaluation_id, action FROM promotion_ledger WHERE seq > ? ORDER BY seq",
                [seq],
            ).fetchall()
        finally:
            con.close()
        return [LedgerEntry(*row) for row in rows], None

    def _load_state(self) -> dict[str, Any]:
        data = load_state(
            self.state_path,
            version=STATE_VERSION,
            destination=self.destination,
            logger=log,
            label="table mirror",
        )
        # A cursor kept for other tables or another account says nothing about these.
        if data is None or not isinstance(data.get("parts"), dict):
            return {"parts": {}, "ledger_seq": 0}
        return {"parts": data["parts"], "ledger_seq": int(data.get("ledger_seq") or 0)}

    def _save_state(self, state: dict[str, Any]) -> None:
        # Losing the cursor costs a resend (upserts: same entities), never a wrong table.
        save_state(
            self.state_path,
            {"ledger_seq": state["ledger_seq"], "parts": dict(sorted(state["parts"].items()))},
            version=STATE_VERSION,
            destination=self.destination,
            logger=log,
            label="table mirror",
        )

    # ---- storage calls ------------------------------------------------------------------

    def _upsert(self, table: str, batch: list[dict[str, Any]]) -> None:
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        operations = [("upsert", entity, {"mode": UpdateMode.REPLACE}) for entity in batch]
        if table not in self._created:
            self.service.create_table_if_not_exists(table)
            self._created.add(table)
        try:
            self.service.get_table_client(table).submit_transaction(operations)
        except HttpResponseError as exc:
            if not _is_table_missing(exc):
                raise
            # Deleted (or lost by an emulator restart) since it was created: create, resend.
            self.service.create_table_if_not_exists(table)
            self.service.get_table_client(table).submit_transaction(operations)

    def _retry(self, action: Callable[[], Any], *, what: str) -> Any:
        """Run `action`, retrying transient failures with exponential backoff and jitter."""
        return retry(
            action,
            what=what,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            backoff_max_s=self.backoff_max_s,
            redact=self._redact,
            logger=log,
            label="table mirror",
        )


def _batches(entities: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Transactions: one partition each, at most BATCH_SIZE entities, in a stable order."""
    by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entity in entities:
        by_partition[entity["PartitionKey"]].append(entity)
    for partition in sorted(by_partition):
        group = sorted(by_partition[partition], key=lambda e: e["RowKey"])
        for start in range(0, len(group), BATCH_SIZE):
            yield group[start : start + BATCH_SIZE]


def _ledger_batches(entries: list[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for entry in entries:
        if batch and (
            len(batch) == BATCH_SIZE
            or row_key(batch[0].provider_profile) != row_key(entry.provider_profile)
        ):
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def _is_table_missing(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    return code == "TableNotFound" or "TableNotFound" in str(exc)
