"""`autoretrain dataset build` is the `training_dataset` asset's build (Project.build_training_dataset):
the same runs, the same catalog and the same manifest (issue 18: the CLI's manifest had drifted)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.project import Project
from autoretrain_tests.curation.factories import make_run, solved
from autoretrain_tests.deploy.model_files import copy_model, tiny_model


def _store_with_promoted_runs(project: Project, model: Path) -> None:
    from autoretrain.runs.review import record_review

    runs = [make_run(f"r{i}", solved(i, 2), scenario_id=f"arith_{i}") for i in range(4)]
    with project.store() as store:
        for run in runs:
            store.con.execute(
                "INSERT INTO runs (run_id, day, traffic, started_at, record) VALUES (?, ?, ?, ?, ?)",
                [run.run_id, run.day, run.traffic, run.started_at, run.to_json()],
            )
        for run in runs[:3]:
            record_review(store.con, run.run_id, "promote", "checked by hand", "tester")
        record_review(store.con, "r3", "reject", "wrong tool", "tester")
        registry = project.registry(store)
        registry.register(base_model="tiny", kind="local", model_dir=model, version_id="v1")
        registry.promote("v1", "primary")


def test_dataset_build_writes_the_same_manifest_as_the_asset(settings, tmp_path_factory):
    project = Project(settings)
    model = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "models" / "v1")
    _store_with_promoted_runs(project, model)

    result = CliRunner().invoke(cli, ["dataset", "build", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from_cli = json.loads((Path(json.loads(result.stdout)["path"]) / "manifest.json").read_text())
    # What the `training_dataset` asset calls (autoretrain/defs/datasets.py).
    from_asset = project.build_training_dataset().manifest

    assert from_cli.keys() == from_asset.keys()
    for key in ("source", "source_model", "catalog_hash", "agent_version", "run_ids", "counts"):
        assert from_cli[key] == from_asset[key], key
    assert from_cli["source_model"] == "v1"  # the incumbent, as the asset records it
    assert sorted(from_cli["run_ids"]["train"] + from_cli["run_ids"]["eval"]) == ["r0", "r1", "r2"]


def test_dataset_build_from_an_empty_store_says_what_to_do(settings):
    with Project(settings).store():
        pass  # an empty run store
    result = CliRunner().invoke(cli, ["dataset", "build"])
    assert result.exit_code == 1
    assert "no promoted runs" in result.output and "autoretrain review" in result.output
