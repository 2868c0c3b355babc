"""Errors a person can fix are one message and a non-zero exit from every command, never a
traceback: bad settings, and a database another process holds (DuckDB's "Could not set lock")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoretrain.cli import cli

BAD = "lifts:\n  default: {min_lift: -1, significance: 5}\ningest: {max_record_bytes: -1}\n"
COMMANDS = [
    ["runs"],
    ["ingest"],
    ["models"],
    ["promote", "v1", "--slot", "primary"],
    ["rollback"],
    ["dataset", "list"],
    ["selfplay"],
    ["eval", "show"],
]


@pytest.fixture
def bad_settings(settings, monkeypatch, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(BAD)
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    return config


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_bad_settings_are_one_message_naming_setting_value_and_file(bad_settings, args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    for text in (
        str(bad_settings),
        "lifts.default.min_lift = -1",
        "lifts.default.significance = 5",
        "ingest.max_record_bytes = -1",
    ):
        assert text in result.output, (args, result.output)


def test_the_installed_command_prints_no_traceback(bad_settings):
    command = Path(sys.executable).parent / "autoretrain"
    done = subprocess.run(
        [str(command), "runs"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "lifts.default.min_lift = -1" in done.stderr


def test_an_unknown_provider_from_the_environment_names_the_profiles(settings, monkeypatch):
    monkeypatch.setenv("AUTORETRAIN_PROVIDER", "nope")
    result = CliRunner().invoke(cli, ["runs"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "provider = 'nope'" in result.output and "known profiles: ['local']" in result.output


@pytest.fixture
def held_database(settings):
    """Another process holding the database's write lock, as a running ingest does."""
    database = settings.paths.database
    database.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            "con = duckdb.connect(sys.argv[1])\n"
            "con.execute('CREATE TABLE IF NOT EXISTS t (a INT)')\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n",
            str(database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.parametrize(
    "args",
    [["runs"], ["ingest"], ["models"], ["rollback"], ["promote", "v1", "--slot", "primary"]],
    ids=lambda a: " ".join(a),
)
def test_a_database_held_by_another_process_is_one_message(
    held_database, settings, args, monkeypatch
):
    # The run store waits a while for the lock before it gives up; not that long here.
    monkeypatch.setattr(
        "autoretrain.runs.store.LOCK_WAIT_S", {"read": 0.3, "write": 0.3}, raising=False
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    # What (held by another process, which one), where (the file) and what to do (try again).
    assert str(settings.paths.database) in result.output
    assert f"(PID {held_database.pid}" in result.output
    assert "again" in result.output and "Could not set lock" not in result.output
