"""raw_runs, scored_runs and promotion_decisions through Dagster, on a temporary root."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from autoretrain.definitions import defs
from autoretrain.defs.resources import ProjectResource
from autoretrain.defs.runs import landing_zone_sensor, raw_runs
from autoretrain.defs.scoring import promotion_decisions, scored_runs
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Message, Run, Verification


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def make_run(run_id: str, day: str, passed: bool = True) -> Run:
    started = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)
    return Run(
        run_id=run_id,
        scenario_id="arith_add",
        category="arithmetic",
        model="m",
        slot="primary",
        traffic="selfplay",
        status="succeeded" if passed else "escalated",
        started_at=started,
        ended_at=started + timedelta(seconds=1),
        latency_s=1.0,
        cost_usd=0.0,
        messages=[
            Message(role="system", content="s"),
            Message(role="user", content="What is 2 plus 2?"),
            Message(role="assistant", content="4" if passed else "5"),
        ],
        verifications=[Verification(verifier="numeric", passed=passed, score=float(passed))],
        final_answer="4" if passed else "5",
    )


@pytest.fixture
def resources(settings):
    return {"autoretrain": ProjectResource(home=str(settings.paths.root))}


def counts(settings) -> dict[str, int]:
    with duckdb.connect(str(settings.paths.database), read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("runs", "quarantine")
        }


def test_a_day_with_broken_lines_materializes_and_is_idempotent(settings, resources):
    archive = RunArchive(settings.paths.landing)
    day = "2026-03-02"
    archive.write([make_run(f"r{i}", day) for i in range(5)])
    broken = archive.day_dir(day) / "part-broken.jsonl"
    broken.write_bytes(
        b'{"run_id": 1}\nnot json\n' + make_run("r9", day).to_json().encode() + b'\n{"trunc'
    )

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([raw_runs], partition_key=day, resources=resources, instance=instance)
    assert result.success
    first = counts(settings)
    assert first == {"runs": 6, "quarantine": 3}
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["quarantine_rate_under_threshold"].passed  # 3 of 9 lines were bad
    assert checks["schema_versions_known"].passed

    assert dg.materialize(
        [raw_runs], partition_key=day, resources=resources, instance=instance
    ).success
    assert counts(settings) == first


def test_a_range_of_days_is_one_run_through_every_judging_asset(settings, resources):
    archive = RunArchive(settings.paths.landing)
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    for d in days:
        archive.write([make_run(f"{d}-ok", d), make_run(f"{d}-bad", d, passed=False)])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [raw_runs, scored_runs, promotion_decisions],
        resources=resources,
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": days[0],
            "dagster/asset_partition_range_end": days[-1],
        },
    )
    assert result.success
    assert len(instance.get_runs()) == 1
    with duckdb.connect(str(settings.paths.database), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, decision FROM promotion_decisions ORDER BY run_id"
        ).fetchall()
    assert dict(rows) == {f"{d}-ok": "promote" for d in days} | {f"{d}-bad": "reject" for d in days}


def test_landing_sensor_requests_exactly_the_days_with_new_files(settings, resources):
    archive = RunArchive(settings.paths.landing)
    archive.write([make_run("a", "2026-03-01"), make_run("b", "2026-03-02")])
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = landing_zone_sensor(ctx)
    assert sorted(r.partition_key for r in first.run_requests) == ["2026-03-01", "2026-03-02"]

    with dg.build_sensor_context(
        instance=instance, resources=resources, cursor=first.cursor
    ) as ctx:
        assert isinstance(landing_zone_sensor(ctx), dg.SkipReason)

    archive.write([make_run("c", "2026-03-02")])
    with dg.build_sensor_context(
        instance=instance, resources=resources, cursor=first.cursor
    ) as ctx:
        second = landing_zone_sensor(ctx)
    assert [r.partition_key for r in second.run_requests] == ["2026-03-02"]
    assert json.loads(second.cursor)["2026-03-02"][0] == 2


def test_many_changed_days_become_one_range_run(settings, resources):
    archive = RunArchive(settings.paths.landing)
    start = datetime(2026, 1, 1)
    days = [(start + timedelta(days=i)).date().isoformat() for i in range(30)]
    archive.write([make_run(d, d) for d in days])
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=resources
    ) as ctx:
        result = landing_zone_sensor(ctx)
    (request,) = result.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == days[0]
    assert request.tags["dagster/asset_partition_range_end"] == days[-1]


def test_a_90_day_rescore_backfill_is_one_run(settings, resources):
    """Re-judging a quarter of history (issue 8): one Dagster run that re-scores and re-decides
    every day of the range, whatever its length, with a materialization per day."""
    archive = RunArchive(settings.paths.landing)
    start = datetime(2026, 1, 1)
    days = [(start + timedelta(days=i)).date().isoformat() for i in range(90)]
    archive.write(
        [make_run(f"{d}-ok", d) for d in days] + [make_run(f"{d}-bad", d, False) for d in days]
    )
    instance = dg.DagsterInstance.ephemeral()
    quarter = {
        "dagster/asset_partition_range_start": days[0],
        "dagster/asset_partition_range_end": days[-1],
    }
    ingest = dg.materialize(
        [raw_runs, scored_runs, promotion_decisions],
        selection=["raw_runs"],
        resources=resources,
        instance=instance,
        tags=quarter,
    )
    assert ingest.success

    rescore = dg.materialize(
        [raw_runs, scored_runs, promotion_decisions],
        selection=["scored_runs", "promotion_decisions"],
        resources=resources,
        instance=instance,
        tags=quarter,
    )
    assert rescore.success
    assert len(instance.get_runs()) == 2  # the ingest and the whole 90-day re-score
    for key in ("scored_runs", "promotion_decisions"):
        materialized = instance.get_materialized_partitions(dg.AssetKey(key))
        assert sorted(materialized) == days
    with duckdb.connect(str(settings.paths.database), read_only=True) as con:
        scored_days = con.execute(
            "SELECT count(DISTINCT CAST(started_at AS DATE)), count(*) FROM scored_runs "
            "JOIN runs USING (run_id)"
        ).fetchone()
        rows = dict(con.execute("SELECT run_id, decision FROM promotion_decisions").fetchall())
    assert scored_days == (90, 180)
    assert rows == {f"{d}-ok": "promote" for d in days} | {f"{d}-bad": "reject" for d in days}


def test_landing_sensor_leaves_a_day_to_its_queued_ingest_run(settings, resources):
    """Files landing while a day's ingest run waits in the queue do not queue a run per file."""
    from dagster._core.storage.dagster_run import DagsterRun

    archive = RunArchive(settings.paths.landing)
    archive.write([make_run("a", "2026-03-01"), make_run("b", "2026-03-02")])
    instance = dg.DagsterInstance.ephemeral()
    queued = DagsterRun(
        job_name="ingest",
        run_id="queued-ingest",
        status=dg.DagsterRunStatus.NOT_STARTED,  # queued or not yet started: the same to it
        tags={"dagster/partition": "2026-03-02"},
    )
    instance.add_run(queued)
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = landing_zone_sensor(ctx)
    assert [r.partition_key for r in first.run_requests] == ["2026-03-01"]

    instance.delete_run(queued.run_id)  # the run is gone: the day is requested now
    with dg.build_sensor_context(
        instance=instance, resources=resources, cursor=first.cursor
    ) as ctx:
        second = landing_zone_sensor(ctx)
    assert [r.partition_key for r in second.run_requests] == ["2026-03-02"]
