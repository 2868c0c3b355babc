"""Automation: what moves data down the graph without a person.

- Asset to asset: declarative automation (`AutomationCondition`), evaluated by a sensor that
  runs by default. Deployments also wait for every blocking check upstream to pass
  (`all_deps_blocking_checks_passed`): a blocking check stops downstream assets only inside
  its own run otherwise.
- New candidates: a sensor adds a dynamic partition per dataset version and asks for its model.
- Self-play: a schedule. Rollback: a job.
"""

import dagster as dg

from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import AutoretrainConfig


def on_new_upstream() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager()


def gated() -> dg.AutomationCondition:
    """Eager, but only once every blocking check of the upstream assets has passed for their
    latest materialization (a failed or not-yet-run gate holds the deployment back)."""
    return (
        dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("eager after upstream gates pass")


def enough_new_promotable_runs() -> dg.AutomationCondition:
    # The asset itself counts new promotable runs and builds a version only past
    # `dataset.min_new_promotable_runs`; the condition just wakes it on new decisions.
    return dg.AutomationCondition.eager().with_label("new promotion decisions")


automation_sensor = dg.AutomationConditionSensorDefinition(
    "autoretrain_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)


@dg.sensor(
    asset_selection=dg.AssetSelection.assets("candidate_model"),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_dataset_sensor(context: dg.SensorEvaluationContext):
    """Each new `training_dataset` version becomes a candidate: a new dynamic partition of
    `candidate_model` (and of everything downstream), requested once."""
    records = context.instance.fetch_materializations(
        dg.AssetKey("training_dataset"), limit=1
    ).records
    if not records:
        return dg.SkipReason("no dataset version yet")
    event = records[0].asset_materialization
    version = event.metadata.get("version") if event else None
    key = str(version.value) if version is not None else None
    if not key or key == context.cursor:
        return dg.SkipReason("no new dataset version")
    candidate = candidate_key(key)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=candidate, partition_key=candidate)],
        dynamic_partitions_requests=[candidate_partitions.build_add_request([candidate])],
        cursor=key,
    )


def candidate_key(dataset_version: str) -> str:
    """The candidate trained on a dataset version is named after it (no commas, stable)."""
    return f"cand-{dataset_version}"


@dg.op
def play(context: dg.OpExecutionContext, autoretrain: AutoretrainConfig) -> None:
    """Self-play: the configured number of runs against the primary slot (and the canary
    share, when a canary is deployed)."""
    from autoretrain import stages

    settings = autoretrain.settings()
    report = stages.selfplay(settings, settings.selfplay.runs_per_iteration, progress=False)
    context.log.info(f"self-play: {report.to_dict()}")


@dg.job(description="Run the agent on sampled scenarios; runs land in the landing zone.")
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
def roll_back(context: dg.OpExecutionContext, autoretrain: AutoretrainConfig) -> None:
    """Return the slot to the version last promoted there before the current one."""
    from autoretrain import stages

    entry = stages.rollback(
        autoretrain.settings(), context.op_config["slot"], reason=context.op_config["reason"]
    )
    context.log.info(f"rolled back {entry.slot}: {entry.from_version} -> {entry.to_version}")


@dg.job(
    description="Roll a slot back to its last promoted version (one command: `autoretrain rollback`)."
)
def rollback_job():
    roll_back()
