"""Dagster wiring for captured runs: `raw_runs[day]`, its checks, and the landing-zone sensor."""
# No `from __future__ import annotations` here: Dagster reads the context annotation at runtime.

import hashlib
import json
import os

import dagster as dg

from autoretrain.defs.automation import SENSOR_INTERVAL_S, ingest_job
from autoretrain.defs.partitions import daily_partitions
from autoretrain.defs.resources import ProjectResource

QUARANTINE_CHECK = "quarantine_rate_under_threshold"
SCHEMA_CHECK = "schema_versions_known"


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="runs",
    kinds={"duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            QUARANTINE_CHECK,
            asset="raw_runs",
            description="Share of malformed lines within the configured limit.",
        ),
        dg.AssetCheckSpec(
            SCHEMA_CHECK,
            asset="raw_runs",
            description="No record carries a schema version this release does not know.",
        ),
    ],
)
def raw_runs(context: dg.AssetExecutionContext, autoretrain: ProjectResource):
    """Agent runs as landed, one partition per UTC day: the landing zone's JSONL ingested into
    DuckDB (`runs`, `events`), idempotent on run_id; malformed lines go to `quarantine` with
    file, line and reason, and never fail the day."""
    project = autoretrain.project()
    settings = project.settings
    summary = project.ingest_days(context.partition_keys)
    for day, report in summary.reports.items():
        context.log.info(f"{day}: {report}")
    limit = settings.ingest.max_quarantine_rate
    yield dg.MaterializeResult(
        metadata={
            "days": dg.MetadataValue.int(len(summary.reports)),
            "records_read": dg.MetadataValue.int(summary.read),
            "inserted": dg.MetadataValue.int(summary.inserted),
            "replaced": dg.MetadataValue.int(summary.replaced),
            "quarantined": dg.MetadataValue.int(summary.quarantined),
            "quarantine_rate": dg.MetadataValue.float(summary.quarantine_rate),
            "database": dg.MetadataValue.path(str(settings.paths.database)),
        },
    )
    yield dg.AssetCheckResult(
        check_name=QUARANTINE_CHECK,
        passed=summary.quarantine_rate <= limit,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantine_rate": summary.quarantine_rate,
            "limit": limit,
            "top_reasons": dg.MetadataValue.json(summary.top_reasons),
        },
    )
    yield dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=summary.unknown_schema_versions == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unknown_schema_version_records": summary.unknown_schema_versions,
            "versions_seen": dg.MetadataValue.json(sorted(summary.schema_versions)),
        },
    )


# More changed days than this in one tick become one range run, not one run per day.
RANGE_RUN_THRESHOLD = 7


def landing_state(landing: os.PathLike[str] | str) -> dict[str, list[int]]:
    """Per day folder: [number of part files, newest mtime in ns]. New files change either."""
    state: dict[str, list[int]] = {}
    if not os.path.isdir(landing):
        return state
    with os.scandir(landing) as days:
        for day in days:
            if not (day.is_dir() and day.name.startswith("date=")):
                continue
            count, newest = 0, 0
            with os.scandir(day.path) as files:
                for f in files:
                    if f.name.startswith("part-") and f.name.endswith(".jsonl"):
                        count += 1
                        newest = max(newest, f.stat().st_mtime_ns)
            if count:
                state[day.name.removeprefix("date=")] = [count, newest]
    return state


def latest_run_starts(
    instance: dg.DagsterInstance, asset: str, days: list[str]
) -> dict[str, float]:
    """Per day: the start time of the run behind the asset's latest materialization of that
    partition (a landing file written before that start is in it)."""
    out: dict[str, float] = {}
    for day in days:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1
        ).records
        if records:
            run = instance.get_run_record_by_id(records[0].run_id)
            out[day] = run.start_time if run and run.start_time else records[0].timestamp
    return out


def pending_ingest_days(instance: dg.DagsterInstance) -> set[str]:
    """Days with an `ingest` run queued or starting (not yet reading its files)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name="ingest",
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
            ],
        ),
        limit=100,
    )
    days: set[str] = set()
    for run in runs:
        if "dagster/partition" in run.tags:
            days.add(run.tags["dagster/partition"])
        start = run.tags.get("dagster/asset_partition_range_start")
        end = run.tags.get("dagster/asset_partition_range_end")
        if start and end:
            days.update(
                daily_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
            )
    return days


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, autoretrain: ProjectResource):
    """Requests the `ingest` job (raw_runs -> scored_runs -> promotion_decisions) for exactly
    the days whose landing folders received new files. Without a cursor (a new sensor, or the
    UI opened after `autoretrain loop`), a day already ingested after its newest file is not
    requested again."""
    seen = json.loads(context.cursor) if context.cursor else {}
    now = landing_state(autoretrain.settings().paths.landing)
    valid = set(daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
    candidates = [day for day, mark in now.items() if day in valid and seen.get(day) != mark]
    cursor = dict(seen)
    # Already ingested after its newest file (the UI opened after `autoretrain loop`, or a run
    # that started after the file landed): nothing to request.
    for day, start in latest_run_starts(context.instance, "raw_runs", candidates).items():
        if now[day][1] / 1e9 < start:
            cursor[day] = now[day]
    # A day whose ingest run has not started yet is left to that run (it reads the files as
    # they are when it starts): evaluation replays and self-play write many files, and a run
    # per new file would queue behind the duckdb pool.
    waiting = pending_ingest_days(context.instance)
    changed = sorted(
        day for day in candidates if cursor.get(day) != now[day] and day not in waiting
    )
    skipped = sorted(set(now) - valid)
    if skipped:
        context.log.warning(
            f"landing folders outside the partition range are ignored: {skipped[:5]} "
            f"(the partitions start at {daily_partitions.start:%Y-%m-%d}; set "
            "AUTORETRAIN_HISTORY_START to an earlier day and reload the code location)"
        )
    if not changed:
        if cursor == seen:
            return dg.SkipReason("no new landing files")
        return dg.SensorResult(
            skip_reason="no new landing files", cursor=json.dumps(cursor, sort_keys=True)
        )
    cursor.update({day: now[day] for day in changed})
    stamp = "-".join(f"{now[d][0]}.{now[d][1]}" for d in changed)
    if len(changed) > RANGE_RUN_THRESHOLD:
        requests = [
            dg.RunRequest(
                run_key=f"range:{changed[0]}:{changed[-1]}:{hashlib.sha1(stamp.encode()).hexdigest()[:12]}",
                tags={
                    "dagster/asset_partition_range_start": changed[0],
                    "dagster/asset_partition_range_end": changed[-1],
                },
            )
        ]
    else:
        requests = [
            dg.RunRequest(run_key=f"{d}:{now[d][0]}:{now[d][1]}", partition_key=d) for d in changed
        ]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))
