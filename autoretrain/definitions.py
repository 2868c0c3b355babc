"""The Dagster entry point: one Definitions built from `autoretrain/defs/`."""

import dagster as dg

from autoretrain.defs.automation import (
    automation_sensor,
    bootstrap_job,
    canary_job,
    dataset_job,
    ingest_job,
    new_dataset_sensor,
    promote_job,
    retrain_job,
    rollback_job,
    selfplay_job,
    selfplay_schedule,
)
from autoretrain.defs.datasets import training_dataset
from autoretrain.defs.deployment import canary_deployment, canary_traffic, primary_deployment
from autoretrain.defs.evaluation import candidate_evaluation
from autoretrain.defs.resources import ProjectResource
from autoretrain.defs.runs import landing_zone_sensor, raw_runs
from autoretrain.defs.scenarios import scenario_catalog
from autoretrain.defs.scoring import promotion_decisions, scored_runs
from autoretrain.defs.training import base_model, candidate_model


def build_defs(config: ProjectResource | None = None) -> dg.Definitions:
    """The project's definitions over one data root (`autoretrain loop` passes its own; the UI
    and the daemon take the environment's)."""
    return dg.Definitions(
        assets=[
            scenario_catalog,
            raw_runs,
            scored_runs,
            promotion_decisions,
            training_dataset,
            base_model,
            candidate_model,
            candidate_evaluation,
            canary_deployment,
            canary_traffic,
            primary_deployment,
        ],
        jobs=[
            bootstrap_job,
            ingest_job,
            dataset_job,
            retrain_job,
            canary_job,
            promote_job,
            selfplay_job,
            rollback_job,
        ],
        schedules=[selfplay_schedule],
        sensors=[landing_zone_sensor, new_dataset_sensor, automation_sensor],
        resources={"autoretrain": config or ProjectResource()},
    )


defs = build_defs()
