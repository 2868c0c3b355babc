"""The Blob mirror against a real Azurite on 127.0.0.1 (installed from autoretrain_tests/azurite)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from click.testing import CliRunner

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.mirror import STATE_FILE, BlobMirror, _Redactor
from autoretrain.settings import Settings, SettingsError, load_settings
from autoretrain_tests.runs.storage_settings import storage_settings
from autoretrain_tests.servers import AZURITE_KEY, Azurite, free_port

CONN_ENV = "AUTORETRAIN_TEST_BLOB_CONNECTION"
HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory) -> Azurite:
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    with server:
        yield server


def mirror_settings(connection_string: str, monkeypatch, **mirror: object) -> Settings:
    conf = {"container": f"t{uuid.uuid4().hex[:12]}", "prefix": "mirror/test", **mirror}
    return storage_settings(monkeypatch, CONN_ENV, connection_string, conf)


def write_landing(
    settings: Settings, n_files: int, days=("2026-01-01", "2026-01-02")
) -> list[Path]:
    archive = RunArchive(settings.paths.landing)
    written: list[Path] = []
    for i in range(n_files):
        day = days[i % len(days)]
        lines = [json.dumps({"run_id": f"r{i}-{j}", "payload": "x" * (50 * j)}) for j in range(3)]
        written += archive.write_lines({day: lines})
    return written


def remote_blobs(settings: Settings, connection_string: str) -> dict[str, bytes]:
    """Every blob under the prefix -> its content, failing on any duplicate name."""
    container = BlobServiceClient.from_connection_string(connection_string).get_container_client(
        settings.mirror.container
    )
    names = [b.name for b in container.list_blobs(name_starts_with=settings.mirror.prefix + "/")]
    assert len(names) == len(set(names))
    return {name: container.download_blob(name).readall() for name in names}


def expected_blobs(settings: Settings, files: list[Path]) -> dict[str, bytes]:
    root = settings.paths.root
    return {
        f"{settings.mirror.prefix}/{path.relative_to(root).as_posix()}": path.read_bytes()
        for path in files
    }


def test_off_without_container_and_clear_error_without_credentials(settings, monkeypatch):
    assert BlobMirror.from_settings(settings) is None
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    configured = load_settings(config_file=Path(os.devnull), mirror={"container": "runs"})
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        BlobMirror.from_settings(configured)


def test_redactor_removes_keys_and_signatures():
    conn = f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={AZURITE_KEY};"
    redact = _Redactor([conn, AZURITE_KEY])
    text = f"bad {conn} key={AZURITE_KEY} AccountKey=other123; url?sv=1&sig=abc%2F&se=2"
    cleaned = redact(text)
    assert AZURITE_KEY not in cleaned and "other123" not in cleaned and "abc%2F" not in cleaned
    assert "sv=1" in cleaned and "se=2" in cleaned


def test_sync_uploads_everything_once_then_skips_unchanged(settings, azurite, monkeypatch, caplog):
    settings = mirror_settings(azurite.connection_string, monkeypatch, workers=4)
    landing = write_landing(settings, 6)
    report_file = settings.paths.reports / "eval" / "summary.md"
    report_file.parent.mkdir(parents=True)
    report_file.write_text("# lift\n")
    # A half-written atomic write and a non-part file outside the mirrored folders stay local.
    (landing[0].parent / ".part-x.jsonl.abc.tmp").write_text("partial")
    settings.paths.database.write_bytes(b"duckdb")
    mirror = BlobMirror.from_settings(settings)

    first = mirror.sync()
    assert first.ok, first.failed
    files = [*landing, report_file]
    assert remote_blobs(settings, azurite.connection_string) == expected_blobs(settings, files)
    assert len(first.uploaded) == 7 and first.skipped == []
    assert first.bytes_uploaded == sum(p.stat().st_size for p in files)

    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)
    caplog.clear()
    second = mirror.sync()
    assert second.ok and second.uploaded == [] and sorted(second.skipped) == sorted(first.uploaded)
    # The state vouches for unchanged files: no listing, no HEAD, no request at all.
    assert [r for r in caplog.records if r.name == HTTP_LOGGER] == []


def test_rewritten_file_is_uploaded_again_touched_file_is_not(settings, azurite, monkeypatch):
    settings = mirror_settings(azurite.connection_string, monkeypatch, workers=1)
    manifest = settings.paths.datasets / "20260101T000000" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"count": 1}')
    mirror = BlobMirror.from_settings(settings)
    assert mirror.sync().uploaded == ["autoretrain/20260101T000000/manifest.json"]

    manifest.write_text('{"count": 2}')
    assert mirror.sync().uploaded == ["autoretrain/20260101T000000/manifest.json"]
    assert remote_blobs(settings, azurite.connection_string) == expected_blobs(settings, [manifest])

    later = time.time() + 5
    os.utime(manifest, (later, later))
    touched = mirror.sync()
    assert touched.uploaded == [] and touched.skipped == [
        "autoretrain/20260101T000000/manifest.json"
    ]


def test_lost_state_reuploads_nothing_verify_repairs_remote_loss(settings, azurite, monkeypatch):
    settings = mirror_settings(azurite.connection_string, monkeypatch)
    landing = write_landing(settings, 4)
    mirror = BlobMirror.from_settings(settings)
    assert len(mirror.sync().uploaded) == 4
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string
    ).get_container_client(settings.mirror.container)
    etags = {b.name: b.etag for b in container.list_blobs()}

    (settings.paths.root / STATE_FILE).unlink()
    relisted = mirror.sync()
    assert relisted.uploaded == [] and len(relisted.skipped) == 4
    assert {b.name: b.etag for b in container.list_blobs()} == etags

    gone = sorted(etags)[0]
    container.delete_blob(gone)
    assert mirror.sync().uploaded == []  # the state still says it was sent
    repaired = mirror.sync(verify=True)
    assert [f"{settings.mirror.prefix}/{p}" for p in repaired.uploaded] == [gone]
    assert remote_blobs(settings, azurite.connection_string) == expected_blobs(settings, landing)


def test_outage_mid_sync_then_catch_up(settings, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    server = Azurite(tmp_path / "outage-azurite")
    with server:
        settings = mirror_settings(server.connection_string, monkeypatch, workers=1)
        landing = write_landing(settings, 8)
        mirror = BlobMirror.from_settings(settings)
        uploaded_before_outage: list[str] = []

        def stop_after_three(path: str, outcome: str) -> None:
            if outcome == "uploaded":
                uploaded_before_outage.append(path)
                if len(uploaded_before_outage) == 3:
                    server.stop()

        started = time.monotonic()
        during = mirror.sync(progress=stop_after_three)
        outage_s = time.monotonic() - started
        assert not server.running
        assert during.uploaded == uploaded_before_outage and len(during.uploaded) == 3
        assert len(during.failed) == 5 and not during.ok
        assert "gave up after 3 tries" in during.failed[0].reason
        assert all("not attempted" in f.reason for f in during.failed[1:])
        # One file spends the retries; the rest are not attempted, so an outage costs seconds.
        assert outage_s < 10

        server.start()  # same port, same workspace: what was stored before is still there
        after = mirror.sync()
        assert after.ok, after.failed
        assert sorted(after.uploaded) == sorted(f.path for f in during.failed)
        assert sorted(after.skipped) == sorted(during.uploaded)
        assert remote_blobs(settings, server.connection_string) == expected_blobs(settings, landing)

    # Storage down again: a sync of files the state vouches for needs no request to succeed.
    offline = mirror.sync()
    assert offline.ok and offline.uploaded == [] and len(offline.skipped) == len(landing)

    assert "devstoreaccount1" in caplog.text  # the SDK's request logs were captured ...
    assert AZURITE_KEY not in caplog.text  # ... and the key is in none of them
    assert AZURITE_KEY not in json.dumps(during.to_dict())
    assert AZURITE_KEY not in (settings.paths.root / STATE_FILE).read_text()
    assert AZURITE_KEY not in repr(mirror)


def test_unreachable_storage_reports_every_file_failed(settings, monkeypatch):
    nobody = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
    settings = mirror_settings(nobody, monkeypatch)
    write_landing(settings, 3)
    report = BlobMirror.from_settings(settings).sync()
    assert report.uploaded == [] and len(report.failed) == 3
    assert all("storage not usable" in f.reason for f in report.failed)
    assert report.duration_s < 5


def test_paths_outside_the_root_are_refused(settings, azurite, monkeypatch, tmp_path):
    settings = mirror_settings(azurite.connection_string, monkeypatch)
    mirror = BlobMirror.from_settings(settings)
    with pytest.raises(ValueError, match="outside the data root"):
        mirror.sync(paths=[tmp_path])
    only = write_landing(settings, 2, days=("2026-02-01",))[:1]
    assert mirror.sync(paths=only).uploaded == [only[0].relative_to(settings.paths.root).as_posix()]


def test_cli_reports_json_and_exit_status(settings, azurite, tmp_path, monkeypatch):
    from autoretrain.cli import cli

    config = tmp_path / "autoretrain.yaml"
    container = f"t{uuid.uuid4().hex[:12]}"
    config.write_text(f"mirror:\n  container: {container}\n  prefix: cli\n")
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    write_landing(settings, 2)

    first = CliRunner().invoke(cli, ["mirror", "--json"])
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.stdout)["uploaded"]) == 2
    second = CliRunner().invoke(cli, ["mirror", "--json"])
    data = json.loads(second.stdout)
    assert data["ok"] and data["uploaded"] == [] and len(data["skipped"]) == 2
    assert AZURITE_KEY not in first.output + second.output

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    missing = CliRunner().invoke(cli, ["mirror"])
    assert missing.exit_code == 1 and "AZURE_STORAGE_CONNECTION_STRING" in missing.output


def test_account_url_uses_default_credential_and_reports_failure(settings, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    url = f"https://127.0.0.1:{free_port()}/devstoreaccount1"
    configured = load_settings(
        config_file=Path(os.devnull),
        mirror={"container": "runs", "account_url": url, "max_retries": 1, "backoff_s": 0.01},
    )
    write_landing(configured, 2)
    mirror = BlobMirror.from_settings(configured)
    assert mirror.destination == f"{url}/runs/autoretrain"
    # No identity here (or, if there were one, nothing listening): reported, never raised.
    report = mirror.sync()
    assert report.uploaded == [] and len(report.failed) == 2
    assert all(f.reason.startswith("storage not usable") for f in report.failed)
