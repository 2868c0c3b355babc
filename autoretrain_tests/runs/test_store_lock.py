"""Contention on the run store (issue 21, item 7): another process holds the DuckDB file.

Readers and a second writer wait a bounded time for the lock, then say in one line who holds
it; no command dies with DuckDB's raw "Could not set lock" traceback. The holder is a real
second process with the store open for writing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from autoretrain.runs import store as store_module
from autoretrain.runs.store import RunStore, StoreLocked

HOLD = """
import sys, time
from autoretrain.runs.store import RunStore
store = RunStore(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
store.close()
"""


def hold(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.fixture
def db(settings):
    RunStore.from_settings(settings).close()  # the store exists, as after a first ingest
    return settings.paths.database


@pytest.mark.parametrize("read_only", [True, False])
def test_a_held_store_waits_then_names_the_holder(db, read_only):
    holder = hold(db, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreLocked) as err:
            RunStore(db, read_only=read_only, lock_wait_s=0.6)
        waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert 0.6 <= waited < 5
    message = str(err.value)
    assert f"PID {holder.pid}" in message and str(db) in message
    assert "\n" not in message and "Could not set lock" not in message


def test_a_reader_gets_the_store_once_the_writer_is_done(db):
    holder = hold(db, 1.0)
    try:
        with RunStore(db, read_only=True, lock_wait_s=20) as store:
            assert store.summary()["runs"] == 0
    finally:
        holder.wait()
    assert holder.returncode == 0


@pytest.mark.parametrize("command", [["runs"], ["ingest"], ["review"]])
def test_commands_print_one_line_when_the_store_is_held(settings, db, monkeypatch, command):
    from autoretrain.cli import cli

    (settings.paths.landing / "date=2026-03-01").mkdir(parents=True)
    (settings.paths.landing / "date=2026-03-01" / "part-a.jsonl").write_text("")
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", {"read": 0.3, "write": 0.3})
    holder = hold(db, 30)
    try:
        out = CliRunner().invoke(cli, command)
    finally:
        holder.kill()
        holder.wait()
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output and "Could not set lock" not in out.output
    assert out.output.startswith("Error: cannot ") and f"PID {holder.pid}" in out.output
    assert len(out.output.strip().splitlines()) == 1
