"""Model registry: versions, slots, the promotion ledger, rollback, serving.json, retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.deploy.registry import ModelRegistry, RegistryError
from autoretrain.settings import ProviderProfile


@pytest.fixture
def registry(settings):
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(settings.paths.database))
    yield ModelRegistry(con, settings)
    con.close()


def local(registry, name, tmp_path, **kw):
    (tmp_path / name).mkdir(exist_ok=True)  # the local slot target refuses missing files
    return registry.register(
        base_model="tiny", kind="local", model_dir=tmp_path / name, version_id=name, **kw
    )


def test_promote_then_rollback_leaves_primary_where_it_was(registry, tmp_path):
    local(registry, "v1", tmp_path)
    local(registry, "v2", tmp_path)
    registry.promote("v1", "primary", reason="bootstrap")
    registry.promote("v2", "primary", reason="cleared the gate", evaluation_id="eval-1")
    back = registry.rollback("primary", reason="canary errors")
    assert registry.slots() == {"primary": "v1"}
    assert (back.from_version, back.to_version, back.action) == ("v2", "v1", "rollback")
    moves = [(e.action, e.from_version, e.to_version) for e in reversed(registry.ledger())]
    assert moves == [
        ("promote", None, "v1"),
        ("promote", "v1", "v2"),
        ("rollback", "v2", "v1"),
    ]
    assert registry.ledger()[1].evaluation_id == "eval-1"


def test_repeated_rollbacks_walk_back_through_promotions_not_builds(registry, tmp_path):
    for name in ("v1", "v2", "v3", "v4"):
        local(registry, name, tmp_path)
    registry.promote("v1", "primary")
    registry.promote("v3", "primary")  # v2 was built but never promoted here
    registry.promote("v4", "primary")
    assert registry.rollback_target("primary") == "v3"
    assert registry.rollback("primary").to_version == "v3"
    assert registry.rollback("primary").to_version == "v1"  # not v2, not back to v4
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("primary")
    assert registry.slots() == {"primary": "v1"}
    # a promotion after rollbacks starts a new branch; rolling it back returns to v1
    registry.promote("v2", "primary")
    assert registry.rollback("primary").to_version == "v1"


def test_slots_are_per_slot_and_profile(registry, tmp_path, settings):
    local(registry, "v1", tmp_path)
    local(registry, "v2", tmp_path)
    registry.promote("v1", "primary")
    registry.promote("v2", "canary")
    assert registry.promote("v2", "canary") is None  # already there: no ledger noise
    assert registry.slots() == {"canary": "v2", "primary": "v1"}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("canary")
    with pytest.raises(RegistryError, match="not registered"):
        registry.promote("v9", "primary")
    with pytest.raises(RegistryError, match="slot must be one of"):
        registry.promote("v1", "shadow")
    hosted = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id="ft:abc")
    with pytest.raises(RegistryError, match="serves local models"):
        registry.promote(hosted.id, "primary")
    assert len(registry.ledger()) == 2


def test_serving_json_maps_slots_and_versions_for_the_local_profile(registry, tmp_path, settings):
    local(registry, "v1", tmp_path)
    registry.register(
        base_model="tiny",
        kind="local",
        model_dir=tmp_path / "v1",
        adapter_dir=tmp_path / "v2-adapter",
        parent_version="v1",
        version_id="v2",
    )
    registry.promote("v1", "primary")
    registry.promote("v2", "canary")
    serving = json.loads((settings.paths.root / "serving.json").read_text())
    v1 = {"model_dir": str(tmp_path / "v1")}
    v2 = {"model_dir": str(tmp_path / "v1"), "adapter_dir": str(tmp_path / "v2-adapter")}
    # The format `autoretrain serve` reads (one writer: serve.write_serving_config).
    assert serving == {"models": {"primary": v1, "v1": v1, "canary": v2, "v2": v2}}


def test_hosted_profile_slots_do_not_touch_serving_json(settings, tmp_path):
    hosted_settings = settings.model_copy(
        update={"providers": {**settings.providers, "azure": ProviderProfile(kind="azure_openai")}}
    )
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.paths.database)) as con:
        registry = ModelRegistry(con, hosted_settings)
        v = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id="ft:x")
        registry.promote(v.id, "primary", profile="azure")
        assert registry.slots("azure") == {"primary": v.id} and registry.slots("local") == {}
    assert not (settings.paths.root / "serving.json").exists()


def test_removable_artifacts_never_include_anything_referenced(registry, tmp_path, settings):
    for name in ("base", "old", "used-by-dataset", "rolled-back", "in-slot", "fresh"):
        local(registry, name, tmp_path)
    registry.register(
        base_model="tiny",
        kind="local",
        model_dir=tmp_path / "in-slot",
        adapter_dir=tmp_path / "child",
        parent_version="base",
        version_id="child",
    )
    registry.promote("rolled-back", "primary")
    registry.promote("child", "primary")
    manifest = settings.paths.datasets / "20260101T000000Z" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"source": {"model": "used-by-dataset"}}))

    later = datetime.now(UTC) + timedelta(days=40)
    # Everything is younger than the window today.
    assert registry.removable_artifacts(30) == []
    # 40 days on, only never-used versions go: "rolled-back" is still restorable by a
    # rollback, "base" is the parent of the slot's version, "in-slot" holds the child's files,
    # and a dataset manifest names "used-by-dataset".
    assert [v.id for v in registry.removable_artifacts(30, now=later)] == ["old", "fresh"]
    registry.rollback("primary")
    registry.promote("fresh", "canary")
    # The rolled-back child (and what only it needed) goes once its ledger entries are older
    # than the window; within the window it stays.
    gone = {v.id for v in registry.removable_artifacts(30, now=later)}
    assert gone == {"old", "child", "base", "in-slot"}
    soon = datetime.now(UTC) + timedelta(days=20)
    assert {v.id for v in registry.removable_artifacts(10, now=soon)} == gone
    assert {v.id for v in registry.removable_artifacts(30, now=soon)} == set()


def test_cli_promote_rollback_and_models(settings, tmp_path, monkeypatch):
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.paths.database)) as con:
        registry = ModelRegistry(con, settings)
        local(registry, "v1", tmp_path)
        local(registry, "v2", tmp_path)
    runner = CliRunner()

    nothing = runner.invoke(cli, ["rollback"])
    assert nothing.exit_code == 1 and "nothing to roll back to" in nothing.output

    assert runner.invoke(cli, ["promote", "v1", "--slot", "primary"]).exit_code == 0
    done = runner.invoke(
        cli, ["promote", "v2", "--slot", "primary", "--reason", "lift", "--evaluation", "eval-9"]
    )
    assert done.exit_code == 0 and "v1 -> v2" in done.output
    back = runner.invoke(cli, ["rollback", "--slot", "primary", "--reason", "bad canary"])
    assert back.exit_code == 0 and "v2 -> v1" in back.output
    again = runner.invoke(cli, ["rollback"])
    assert again.exit_code == 1 and "nothing to roll back to" in again.output

    shown = runner.invoke(cli, ["models", "--json"])
    assert shown.exit_code == 0, shown.output
    state = json.loads(shown.output)
    assert [v["id"] for v in state["versions"]] == ["v1", "v2"]
    assert state["slots"][0]["slot"] == "primary" and state["slots"][0]["version_id"] == "v1"
    assert [e["action"] for e in state["ledger"]] == ["rollback", "promote", "promote"]
    assert state["ledger"][1]["evaluation_id"] == "eval-9"
    text = runner.invoke(cli, ["models"])
    assert text.exit_code == 0 and "local/primary: v1" in text.output
    unknown = runner.invoke(cli, ["promote", "v7", "--slot", "canary"])
    assert unknown.exit_code == 1 and "not registered" in unknown.output


def test_models_on_a_fresh_home_is_empty_not_an_error(settings, tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["versions"] == []
