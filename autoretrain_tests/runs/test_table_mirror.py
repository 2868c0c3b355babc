"""The Azure Table mirror against a real Azurite Table service on 127.0.0.1."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from azure.data.tables import TableServiceClient
from click.testing import CliRunner

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Run, Usage, Verification
from autoretrain.runs.table_mirror import STATE_FILE, TableMirror, row_key
from autoretrain.settings import Settings, SettingsError, load_settings
from autoretrain_tests.runs.storage_settings import storage_settings
from autoretrain_tests.servers import AZURITE_KEY, AzuriteTable

CONN_ENV = "AUTORETRAIN_TEST_TABLE_CONNECTION"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory) -> AzuriteTable:
    server = AzuriteTable(tmp_path_factory.mktemp("azurite-table"))
    with server:
        yield server


def table_settings(connection_string: str, monkeypatch, **mirror: object) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    conf = {"runs_table": f"runs{suffix}", "promotions_table": f"promotions{suffix}", **mirror}
    return storage_settings(monkeypatch, CONN_ENV, connection_string, conf)


def make_run(i: int, day: str = "2026-01-01", **fields: object) -> Run:
    start = datetime.fromisoformat(f"{day}T10:00:00+00:00") + timedelta(seconds=i)
    values: dict = dict(
        run_id=f"run-{day}-{i}",
        scenario_id=f"calc-{i % 3}",
        category=("arithmetic", "lookup")[i % 2],
        model="tiny-v1",
        provider="local",
        slot=("primary", "canary")[i % 2],
        traffic="selfplay",
        status="succeeded" if i % 4 else "failed",
        started_at=start,
        ended_at=start + timedelta(seconds=1.5),
        latency_s=1.5,
        cost_usd=0.001 * i,
        usage=Usage(prompt_tokens=100 + i, completion_tokens=10 + i),
        verifications=[
            Verification(verifier="exact", passed=bool(i % 4), score=1.0 if i % 4 else 0.25)
        ],
    )
    values.update(fields)
    return Run(**values)


def write_parts(settings: Settings, n_parts: int, per_part: int, days=("2026-01-01",)) -> list:
    archive = RunArchive(settings.paths.landing)
    runs = []
    for p in range(n_parts):
        day = days[p % len(days)]
        batch = [make_run(p * per_part + j, day) for j in range(per_part)]
        archive.write(batch)
        runs += batch
    return runs


def entities(connection_string: str, table: str) -> list[dict]:
    client = TableServiceClient.from_connection_string(connection_string).get_table_client(table)
    return list(client.list_entities())


def add_ledger(settings: Settings, rows: list[tuple[str, str, str | None, str, str]]) -> None:
    """Ledger entries (profile, slot, from, to, action) in the registry's own tables."""
    from autoretrain.deploy.registry import _DDL

    con = duckdb.connect(str(settings.paths.database))
    try:
        for statement in _DDL:
            con.execute(statement)
        for profile, slot, from_version, to_version, action in rows:
            con.execute(
                "INSERT INTO promotion_ledger (slot, provider_profile, from_version, to_version, "
                '"at", actor, reason, evaluation_id, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                [
                    slot,
                    profile,
                    from_version,
                    to_version,
                    datetime.now(UTC),
                    "ci",
                    "test",
                    None,
                    action,
                ],
            )
    finally:
        con.close()


def test_off_without_table_and_clear_error_without_credentials(settings, monkeypatch):
    assert TableMirror.from_settings(settings) is None
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    configured = load_settings(config_file=Path(os.devnull), mirror={"runs_table": "runs"})
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        TableMirror.from_settings(configured)
    with pytest.raises(SettingsError, match="runs_table"):
        load_settings(config_file=Path(os.devnull), mirror={"runs_table": "no-dashes"})


def test_row_key_keeps_plain_ids_and_hashes_illegal_ones():
    assert row_key("3f2a9c") == "3f2a9c"
    for bad in ("a/b", "a#b", "a?b", "a\\b", "a%b", "x" * 300, "tab\there"):
        key = row_key(bad)
        assert key.startswith("h-") and len(key) == 66 and key == row_key(bad)


def test_one_entity_per_run_with_its_summary_then_nothing_twice(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    runs = write_parts(settings, 3, 7, days=("2026-01-01", "2026-01-02"))
    # A bad line and an unsafe run id: the first is skipped and counted, the second hashed.
    odd = make_run(99, "2026-01-02", run_id="team/run#1")
    RunArchive(settings.paths.landing).write_lines({"2026-01-02": ["{not json", odd.to_json()]})
    runs.append(odd)
    mirror = TableMirror.from_settings(settings)

    first = mirror.sync()
    assert first.ok, first.errors
    assert first.runs_upserted == len(runs) == 22 and first.invalid_lines == 1
    stored = {
        (e["PartitionKey"], e["RowKey"]): e
        for e in entities(azurite.connection_string, settings.mirror.runs_table)
    }
    assert len(stored) == len(runs)
    for run in runs:
        entity = stored[(run.day, row_key(run.run_id))]
        assert entity["RunId"] == run.run_id
        assert entity["Scenario"] == run.scenario_id and entity["Category"] == run.category
        assert entity["Model"] == "tiny-v1" and entity["Slot"] == run.slot
        assert entity["Status"] == run.status and entity["Verified"] is run.verified
        assert entity["Score"] == run.verifications[-1].score
        assert entity["LatencyS"] == 1.5
        assert entity["PromptTokens"].value == run.usage.prompt_tokens
        assert entity["CompletionTokens"].value == run.usage.completion_tokens
        assert entity["TotalTokens"].value == run.usage.total_tokens
        assert entity["CostUsd"] == pytest.approx(run.cost_usd)
        assert entity["StartedAt"] == run.started_at
    assert stored[("2026-01-02", row_key("team/run#1"))]["RunId"] == "team/run#1"

    second = mirror.sync()
    assert second.ok and second.runs_upserted == 0 and second.parts_unchanged == 4

    # A lost cursor resends everything: upserts, so the table holds the same entities.
    (settings.paths.root / STATE_FILE).unlink()
    third = mirror.sync()
    assert third.ok and third.runs_upserted == len(runs)
    assert len(entities(azurite.connection_string, settings.mirror.runs_table)) == len(runs)


def test_a_run_recorded_again_is_one_entity_with_its_last_summary(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    archive = RunArchive(settings.paths.landing)
    archive.write([make_run(1, status="running")])
    mirror = TableMirror.from_settings(settings)
    assert mirror.sync().ok
    archive.write([make_run(1, status="escalated")])
    assert mirror.sync().runs_upserted == 1
    stored = entities(azurite.connection_string, settings.mirror.runs_table)
    assert [e["Status"] for e in stored] == ["escalated"]


def test_promotion_decisions_mirrored_once_in_ledger_order(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    add_ledger(
        settings,
        [
            ("local", "primary", None, "v1", "promote"),
            ("local", "canary", None, "v2", "promote"),
            ("azure", "primary", None, "v9", "promote"),
            ("local", "primary", "v1", "v2", "promote"),
            ("local", "primary", "v2", "v1", "rollback"),
        ],
    )
    mirror = TableMirror.from_settings(settings)
    report = mirror.sync()
    assert report.ok and report.promotions_upserted == 5
    stored = sorted(
        entities(azurite.connection_string, settings.mirror.promotions_table),
        key=lambda e: e["Seq"].value,
    )
    assert [(e["PartitionKey"], e["Slot"], e["Action"], e["ToVersion"]) for e in stored] == [
        ("local", "primary", "promote", "v1"),
        ("local", "canary", "promote", "v2"),
        ("azure", "primary", "promote", "v9"),
        ("local", "primary", "promote", "v2"),
        ("local", "primary", "rollback", "v1"),
    ]
    assert stored[-1]["FromVersion"] == "v2" and stored[-1]["Actor"] == "ci"
    assert [e["RowKey"] for e in stored] == [f"{e['Seq'].value:019d}" for e in stored]
    assert mirror.sync().promotions_upserted == 0
    add_ledger(settings, [("local", "canary", "v2", "v3", "promote")])
    again = mirror.sync()
    assert again.promotions_upserted == 1
    assert len(entities(azurite.connection_string, settings.mirror.promotions_table)) == 6


def test_outage_mid_sync_then_the_mirror_catches_up_exactly(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    runs = write_parts(settings, 6, 30, days=("2026-02-01", "2026-02-02", "2026-02-03"))
    add_ledger(settings, [("local", "primary", None, "v1", "promote")])
    mirror = TableMirror.from_settings(settings)
    done_before_outage: list[str] = []

    def stop_after_two(what: str, outcome: str) -> None:
        if outcome == "upserted":
            done_before_outage.append(what)
            if len(done_before_outage) == 2:
                azurite.stop()

    try:
        during = mirror.sync(progress=stop_after_two)
        assert not during.ok and during.errors
        assert len(during.parts_done) == 2 and len(during.parts_pending) == 4
        assert during.runs_upserted == 60 and during.promotions_upserted == 0
        assert AZURITE_KEY not in json.dumps(during.to_dict())
        # While the service is down, nothing is lost and the cursor has not moved past it.
        assert mirror.sync().parts_pending == during.parts_pending
        more = write_parts(settings, 1, 30, days=("2026-02-04",))
        add_ledger(settings, [("local", "canary", None, "v2", "promote")])
    finally:
        azurite.start()  # same port, same workspace: what was stored before is still there

    after = mirror.sync()
    assert after.ok, after.errors
    assert sorted(after.parts_done) == sorted(during.parts_pending + [after.parts_done[-1]])
    assert after.runs_upserted == 150 and after.promotions_upserted == 2
    stored = entities(azurite.connection_string, settings.mirror.runs_table)
    assert sorted(e["RunId"] for e in stored) == sorted(r.run_id for r in runs + more)
    assert len(entities(azurite.connection_string, settings.mirror.promotions_table)) == 2
    assert mirror.sync().runs_upserted == 0


def test_cli_mirror_tables(settings, azurite, monkeypatch):
    from autoretrain.cli import cli

    monkeypatch.setenv(CONN_ENV, azurite.connection_string)
    suffix = uuid.uuid4().hex[:10]
    Path(os.environ["AUTORETRAIN_CONFIG"]).write_text(
        f"mirror:\n  runs_table: cli{suffix}\n  promotions_table: clip{suffix}\n"
        f"  connection_string_env: {CONN_ENV}\n  max_retries: 0\n"
    )
    write_parts(load_settings(), 2, 3)
    result = CliRunner().invoke(cli, ["mirror", "--tables", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["runs_upserted"] == 6 and report["ok"]
    assert AZURITE_KEY not in result.output
    assert len(entities(azurite.connection_string, f"cli{suffix}")) == 6


def test_verify_repairs_entities_deleted_remotely(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    runs = write_parts(settings, 2, 5)
    add_ledger(settings, [("local", "primary", None, "v1", "promote")])
    mirror = TableMirror.from_settings(settings)
    assert mirror.sync().ok
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = service.get_table_client(settings.mirror.runs_table)
    for run in runs[:3]:
        table.delete_entity(run.day, row_key(run.run_id))
    service.delete_table(settings.mirror.promotions_table)
    assert mirror.sync().runs_upserted == 0  # the cursor vouches for them: not noticed
    repaired = mirror.sync(verify=True)
    assert repaired.ok and repaired.runs_upserted == 10 and repaired.promotions_upserted == 1
    assert len(entities(azurite.connection_string, settings.mirror.runs_table)) == 10
    assert len(entities(azurite.connection_string, settings.mirror.promotions_table)) == 1


def test_a_full_resend_keeps_the_latest_record_of_a_run(settings, azurite, monkeypatch):
    settings = table_settings(azurite.connection_string, monkeypatch)
    archive = RunArchive(settings.paths.landing)
    for status in ("running", "failed", "escalated", "succeeded"):
        archive.write([make_run(7, status=status)])
        time.sleep(0.01)  # distinct modification times, as separate writes have
    mirror = TableMirror.from_settings(settings)
    assert mirror.sync(verify=True).runs_upserted == 4
    stored = entities(azurite.connection_string, settings.mirror.runs_table)
    assert [e["Status"] for e in stored] == ["succeeded"]
