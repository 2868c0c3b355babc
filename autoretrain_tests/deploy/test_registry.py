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
from autoretrain_tests.deploy.model_files import copy_model, tiny_adapter, tiny_model

MODEL = None  # the tiny model's folder, built once for the module (see `_tiny_model`)


@pytest.fixture(scope="module", autouse=True)
def _tiny_model(tmp_path_factory):
    global MODEL
    MODEL = tiny_model(tmp_path_factory)


@pytest.fixture
def registry(settings):
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(settings.paths.database))
    yield ModelRegistry.from_settings(con, settings)
    con.close()


def local(registry, name, tmp_path, **kw):
    # A real model folder: the registry refuses to promote one that would not load.
    copy_model(MODEL, tmp_path / name)
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


def test_serving_json_maps_slots_and_versions_for_the_local_profile(
    registry, tmp_path, settings, tmp_path_factory
):
    local(registry, "v1", tmp_path)
    copy_model(tiny_adapter(tmp_path_factory), tmp_path / "v2-adapter")
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
        registry = ModelRegistry.from_settings(con, hosted_settings)
        v = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id="ft:x")
        registry.promote(v.id, "primary", profile="azure")
        assert registry.slots("azure") == {"primary": v.id} and registry.slots("local") == {}
    assert not (settings.paths.root / "serving.json").exists()


def test_removable_artifacts_never_include_anything_referenced(
    registry, tmp_path, settings, tmp_path_factory
):
    for name in ("base", "old", "used-by-dataset", "rolled-back", "in-slot", "fresh"):
        local(registry, name, tmp_path)
    copy_model(tiny_adapter(tmp_path_factory), tmp_path / "child")
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
        registry = ModelRegistry.from_settings(con, settings)
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


def test_promote_refuses_a_model_that_would_not_load_and_moves_nothing(
    registry, tmp_path, settings
):
    local(registry, "good", tmp_path)
    registry.promote("good", "primary")
    serving = (settings.paths.root / "serving.json").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    registry.register(base_model="tiny", kind="local", model_dir=empty, version_id="empty")
    cut = local(registry, "cut", tmp_path)
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RegistryError, match=r"'empty' would not load: .*config.json is missing"):
        registry.promote("empty", "primary")
    with pytest.raises(RegistryError, match=r"'cut' would not load: .*truncated"):
        registry.promote(cut.id, "canary")
    assert registry.slots() == {"primary": "good"} and len(registry.ledger()) == 1
    assert (settings.paths.root / "serving.json").read_text() == serving
    # The command's refusal: test_cli_project_models.py (it opens the store its own way).


def test_rollback_to_a_version_whose_files_broke_is_refused(registry, tmp_path):
    local(registry, "v1", tmp_path)
    local(registry, "v2", tmp_path)
    registry.promote("v1", "primary")
    registry.promote("v2", "primary")
    (tmp_path / "v1" / "config.json").unlink()
    with pytest.raises(RegistryError, match=r"'v1' would not load"):
        registry.rollback("primary")
    assert registry.slots() == {"primary": "v2"}


def test_a_slot_naming_a_deleted_version_is_an_error_not_a_quiet_gap(registry, tmp_path, settings):
    for name in ("v1", "v2", "v3"):
        local(registry, name, tmp_path)
    registry.promote("v1", "primary")
    registry.promote("v2", "canary")
    serving = settings.paths.root / "serving.json"
    before = serving.read_text()
    registry.con.execute("DELETE FROM model_versions WHERE id = 'v1'")

    # The next promotion would rewrite serving.json without primary: refused, nothing moved.
    with pytest.raises(RegistryError, match=r"slot 'primary' of profile 'local' names .*'v1'"):
        registry.promote("v3", "canary")
    assert registry.slots() == {"canary": "v2", "primary": "v1"}
    assert serving.read_text() == before and "primary" in json.loads(before)["models"]
    with pytest.raises(RegistryError, match="not registered"):
        registry.resolve_slot("primary")
    with pytest.raises(RegistryError, match="not registered"):
        registry.serving_config()
    assert registry.resolve_slot("canary").id == "v2"

    registry.con.close()  # `models` opens the database read-only
    shown = CliRunner().invoke(cli, ["models"])
    assert shown.exit_code == 1 and "local/primary: v1  (NOT REGISTERED)" in shown.output
    assert "local/primary -> v1" in shown.output

    # Promoting a registered version into the broken slot repairs it.
    registry = ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)
    registry.promote("v3", "primary")
    assert registry.dangling_slots() == []
    assert set(json.loads(serving.read_text())["models"]) == {"primary", "v3", "canary", "v2"}
    registry.con.close()


@pytest.mark.parametrize("table", ["promotion_ledger", "model_slots", "model_versions"])
def test_a_missing_registry_table_is_a_damaged_registry(settings, tmp_path, table):
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.paths.database)) as con:
        registry = ModelRegistry.from_settings(con, settings)
        local(registry, "v1", tmp_path)
        local(registry, "v2", tmp_path)
        registry.promote("v1", "primary")
        registry.promote("v2", "primary")
        con.execute(f"DROP TABLE {table}")
    runner = CliRunner()
    for args in (
        ["models"],
        ["models", "--json"],
        ["rollback"],
        ["promote", "v1", "--slot", "canary"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert f"is damaged: table(s) {table} missing" in result.output, args
    with duckdb.connect(str(settings.paths.database)) as con:
        # Nothing recreated it empty (rollback would have found no history to walk).
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert table not in tables
        with pytest.raises(RegistryError, match="is damaged"):
            ModelRegistry.from_settings(con, settings)


def test_a_registry_never_created_reads_as_empty(settings):
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(settings.paths.database)).close()  # e.g. ingest made the database
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["slots"] == []


def test_an_unknown_profile_names_the_profiles_there_are(registry, tmp_path):
    local(registry, "v1", tmp_path)
    runner = CliRunner()
    for args in (
        ["promote", "v1", "--slot", "primary", "--profile", "nope"],
        ["rollback", "--profile", "nope"],
    ):
        result = runner.invoke(cli, args)
        assert (
            result.exit_code == 1 and "--profile 'nope' is not a provider profile" in result.output
        )
        assert "known profiles: local" in result.output and "Traceback" not in result.output
