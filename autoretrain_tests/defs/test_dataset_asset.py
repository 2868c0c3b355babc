"""training_dataset through Dagster: a run that finds it too early ends green, building nothing."""

from __future__ import annotations

import dagster as dg

from autoretrain.defs.datasets import training_dataset
from autoretrain.defs.resources import ProjectResource
from autoretrain.runs.archive import RunArchive
from autoretrain_tests.defs.test_runs_assets import make_run


def test_a_dataset_run_with_runs_still_landing_succeeds_and_materializes_nothing(settings):
    # Landed but never ingested: the dataset would leave these runs out, so it waits.
    RunArchive(settings.paths.landing).write([make_run("r1", "2026-03-01")])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [training_dataset],
        resources={"autoretrain": ProjectResource(home=str(settings.paths.root))},
        instance=instance,
    )
    assert result.success  # no DagsterStepOutputNotFoundError for the skipped checks
    assert result.asset_materializations_for_node("training_dataset") == []
    assert result.get_asset_check_evaluations() == []
    assert not list(settings.paths.datasets.glob("*/manifest.json"))
