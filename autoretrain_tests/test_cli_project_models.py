"""`autoretrain promote` / `rollback` and the automation's deploy and rollback job run the same
Project methods: the CLI records its person (actor None) and prints what the target did."""

from __future__ import annotations

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.project import Project
from autoretrain_tests.deploy.model_files import copy_model, tiny_model


def test_cli_and_automation_move_slots_through_the_same_methods(settings, tmp_path_factory):
    project = Project(settings)
    with project.store() as store:
        registry = project.registry(store)
        for name in ("v1", "v2"):
            folder = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "m" / name)
            registry.register(base_model="tiny", kind="local", model_dir=folder, version_id=name)

    runner = CliRunner()
    first = runner.invoke(cli, ["promote", "v1", "--slot", "primary"])
    assert first.exit_code == 0 and "local/primary: (empty) -> v1" in first.output, first.output
    assert "location:" in first.output  # what the serving side did (serving.json here)
    entry = project.deploy("v2", "primary", "cleared the gate", "eval-1")  # the automation's call
    assert (entry.from_version, entry.to_version, entry.actor) == ("v1", "v2", "autoretrain")
    same = runner.invoke(cli, ["promote", "v2", "--slot", "primary"])
    assert same.exit_code == 0 and "primary already holds v2; nothing changed" in same.output

    back = runner.invoke(cli, ["rollback", "--reason", "bad canary"])
    assert back.exit_code == 0 and "rolled back v2 -> v1" in back.output, back.output
    forward = project.move_slot("v2", "primary", reason="again")
    assert forward.entry is not None and forward.target.version_id == "v2"
    entry = project.rollback("primary", reason="the rollback job")  # defs/automation.py roll_back
    assert (entry.from_version, entry.to_version, entry.action) == ("v2", "v1", "rollback")

    with project.store(read_only=True) as store:
        ledger = project.registry(store, read_only=True).ledger(limit=10)
    actors = {e.reason: e.actor for e in ledger}
    assert actors["bad canary"] != "autoretrain" and actors["the rollback job"] == "autoretrain"
    refused = runner.invoke(cli, ["promote", "v9", "--slot", "canary"])
    assert refused.exit_code == 1 and "not registered" in refused.output


def test_promote_refuses_a_model_that_would_not_load_before_the_target_moves(
    settings, tmp_path_factory
):
    # deploy/test_registry.py asked this of the command while holding its own in-process DuckDB
    # connection, which the project's store (its own connection settings) cannot share.
    project = Project(settings)
    with project.store() as store:
        registry = project.registry(store)
        for name in ("good", "cut"):
            folder = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "m" / name)
            registry.register(base_model="tiny", kind="local", model_dir=folder, version_id=name)
    weights = settings.paths.root / "m" / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert CliRunner().invoke(cli, ["promote", "good", "--slot", "primary"]).exit_code == 0
    serving = (settings.paths.root / "serving.json").read_text()

    refused = CliRunner().invoke(cli, ["promote", "cut", "--slot", "primary"])
    assert refused.exit_code == 1 and "would not load" in refused.output
    assert "Traceback" not in refused.output
    assert project.slot_version("primary").id == "good"
    assert (settings.paths.root / "serving.json").read_text() == serving
