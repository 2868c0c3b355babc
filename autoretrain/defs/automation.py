"""Automation: what moves data down the graph without a person, and the named jobs.

- Asset to asset: declarative automation (`AutomationCondition`), evaluated by a sensor that
  runs by default.
- Gates: the regression gate and canary analysis are checks partitioned like the candidate
  they judge. A deployment is requested only once every check of its upstream asset passed
  *for that candidate's partition* (`gates_passed`); the deployment step then re-reads the
  candidate's own recorded decision before any slot moves (deploy/clearance.py). The checks do
  not block inside their run: a rejection is an outcome (a red check on a green run), and
  deployments never share a run with the evaluation that gates them.
- New candidates: a sensor adds a dynamic partition per dataset version whose checks passed,
  and asks for its model. New landing files: a sensor (defs/runs.py).
- Self-play: a schedule. Rollback: a job.
"""

import os

import dagster as dg

from autoretrain.defs.partitions import candidate_partitions, daily_partitions
from autoretrain.defs.resources import ProjectResource
from autoretrain.project import candidate_key

AC = dg.AutomationCondition
# How often the sensors look (seconds). Sensors are ticks, not work: a shorter interval costs a
# directory listing and a few instance reads.
SENSOR_INTERVAL_S = int(os.environ.get("AUTORETRAIN_SENSOR_INTERVAL_S", "30"))


def on_new_upstream() -> AC:
    return AC.eager()


def gates_passed() -> AC:
    """Every check of every upstream asset passed for this partition's latest materialization
    (checks partitioned like the candidate are judged per candidate: one candidate's pass is
    never another's)."""
    return AC.all_deps_match(
        AC.all_checks_match(AC.check_passed(), blocking_only=False)
    ).with_label("upstream gates passed")


def gated() -> AC:
    """Eager, but only once the upstream gates passed for this candidate (a failed or
    not-yet-run gate holds the deployment back)."""
    return (AC.eager() & gates_passed()).with_label("eager after this candidate's gates pass")


def new_promotion_decisions() -> AC:
    """Wake the dataset on new decisions. Unlike `eager()`, days without runs do not count as
    missing inputs (the history holds empty days), nor does a catalog not yet observed. The
    asset itself builds a version only past `dataset.min_new_promotable_runs`, and waits
    while landed runs are still on their way to a decision."""
    return (
        AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
    ).with_label("new promotion decisions")


automation_sensor = dg.AutomationConditionSensorDefinition(
    "autoretrain_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    description="Moves new runs, datasets and candidates down the graph once their gates pass.",
)


# -- named jobs: what the loop runs and what the UI lists ----------------------------------

ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets("raw_runs", "scored_runs", "promotion_decisions"),
    partitions_def=daily_partitions,
    description="Landing zone -> DuckDB -> scores -> PromotionGuard decisions, per day.",
)
bootstrap_job = dg.define_asset_job(
    "bootstrap",
    selection=dg.AssetSelection.assets("scenario_catalog", "base_model"),
    description="The catalog observed, and the first incumbent: the embedded base model built, "
    "registered as v0, primary.",
)
dataset_job = dg.define_asset_job(
    "dataset",
    selection=dg.AssetSelection.assets("training_dataset"),
    description="A new fine-tuning dataset version from the promotable runs, with its checks.",
)
retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("candidate_model", "candidate_evaluation"),
    partitions_def=candidate_partitions,
    description="Train a candidate on its dataset version and replay the evaluation catalog "
    "through incumbent and candidate (the regression gate).",
)
canary_job = dg.define_asset_job(
    "canary",
    selection=dg.AssetSelection.assets("canary_deployment", "canary_traffic"),
    partitions_def=candidate_partitions,
    description="A gated candidate into the canary slot, live traffic on it, canary analysis.",
)
promote_job = dg.define_asset_job(
    "promote",
    selection=dg.AssetSelection.assets("primary_deployment"),
    partitions_def=candidate_partitions,
    description="A candidate that passed canary analysis into the primary slot.",
)


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_dataset_sensor(context: dg.SensorEvaluationContext):
    """Each new `training_dataset` version whose checks passed becomes a candidate: a new
    dynamic partition of `candidate_model` (and of everything downstream), requested once.
    A candidate that already exists (the loop made it) is never requested again."""
    records = context.instance.fetch_materializations(
        dg.AssetKey("training_dataset"), limit=1
    ).records
    if not records:
        return dg.SkipReason("no dataset version yet")
    record = records[0]
    event = record.asset_materialization
    version = event.metadata.get("version") if event else None
    key = str(version.value) if version is not None else None
    if not key or key == context.cursor:
        return dg.SkipReason("no new dataset version")
    candidate = candidate_key(key)
    if context.instance.has_dynamic_partition(candidate_partitions.name, candidate):
        return dg.SensorResult(skip_reason=f"{candidate} already exists", cursor=key)
    failed = failed_checks(context.instance, dg.AssetKey("training_dataset"), record.run_id)
    if failed is None:
        return dg.SkipReason(f"dataset {key}: its checks have not all reported yet")
    if failed:
        return dg.SensorResult(
            skip_reason=f"dataset {key} failed its checks ({', '.join(failed)}): no candidate",
            cursor=key,
        )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=candidate, partition_key=candidate)],
        dynamic_partitions_requests=[candidate_partitions.build_add_request([candidate])],
        cursor=key,
    )


def failed_checks(instance: dg.DagsterInstance, asset: dg.AssetKey, run_id: str) -> list | None:
    """Names of the asset's ERROR checks that failed in `run_id`; None while one has no result
    from that run yet."""
    from autoretrain.defs.datasets import DATASET_CHECKS

    keys = [dg.AssetCheckKey(asset, name) for name, _, _ in DATASET_CHECKS]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    failed = []
    for key in keys:
        record = latest.get(key)
        evaluation = record.evaluation if record is not None else None
        if evaluation is None or record.run_id != run_id:
            return None
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            failed.append(key.name)
    return failed


@dg.op(
    config_schema={
        "runs": dg.Field(int, default_value=0, description="0: selfplay.runs_per_iteration"),
        "progress": dg.Field(bool, default_value=False),
    }
)
def play(context: dg.OpExecutionContext, autoretrain: ProjectResource) -> dg.Output:
    """Self-play: the configured number of runs against the primary slot (and the canary
    share, when a canary is deployed). Its report is the op's output."""
    project = autoretrain.project()
    settings = project.settings
    n = context.op_config["runs"] or settings.selfplay.runs_per_iteration
    report = project.selfplay(n, progress=context.op_config["progress"]).to_dict()
    summary = {k: v for k, v in report.items() if k != "files"}
    return dg.Output(
        summary,
        metadata={
            "runs": report["finished"],
            "pass_rate": float(report["pass_rate"]),
            "runs_per_second": float(report["runs_per_second"]),
            "by_category": dg.MetadataValue.json(report["by_category"]),
            "files": len(report["files"]),
        },
    )


@dg.job(
    name="selfplay",
    description="Run the agent on sampled scenarios; runs land in the landing zone.",
)
def selfplay_job():
    play()


selfplay_schedule = dg.ScheduleDefinition(
    job=selfplay_job,
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,  # turned on deliberately: it uses the CPU
    description="Hourly self-play, so fresh runs keep landing.",
)


@dg.op(
    pool="duckdb",
    config_schema={
        "slot": dg.Field(str, default_value="primary"),
        "reason": dg.Field(str, default_value="rollback job"),
    },
)
def roll_back(context: dg.OpExecutionContext, autoretrain: ProjectResource) -> None:
    """Return the slot to the version last promoted there before the current one."""

    entry = autoretrain.project().rollback(
        context.op_config["slot"], reason=context.op_config["reason"]
    )
    context.log.info(f"rolled back {entry.slot}: {entry.from_version} -> {entry.to_version}")


@dg.job(
    name="rollback",
    description="Roll a slot back to its last promoted version (one command: `autoretrain rollback`).",
)
def rollback_job():
    roll_back()
