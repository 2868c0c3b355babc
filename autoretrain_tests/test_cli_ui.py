"""`autoretrain ui` starts `dg dev` (webserver and daemon) on the project's own instance."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autoretrain.cli.ui import dev_command
from autoretrain_tests.servers import free_port

PROJECT = Path(__file__).resolve().parents[1]


def test_the_ui_is_dg_dev_when_dg_is_installed():
    command = dev_command("127.0.0.1", 3000, PROJECT)
    assert Path(command[0]).parent == Path(sys.executable).parent
    assert Path(command[0]).name == "dg"  # dagster-dg-cli is in the dev extras
    assert command[1:] == ["dev", "-h", "127.0.0.1", "-p", "3000"]


def test_the_ui_outside_the_project_folder_says_where_to_run_it(settings, tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("autoretrain")), "ui"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "pyproject.toml and workspace.yaml not found" in result.stderr
    assert "run this from the project folder" in result.stderr


@pytest.mark.integration
def test_autoretrain_ui_serves_the_project_definitions(settings, tmp_path):
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        # Its own process group: `dg dev` and its children (webserver, daemon, code server)
        # stop together.
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("autoretrain")), "ui", "--port", str(port)],
            cwd=PROJECT,
            env={**os.environ, "VIRTUAL_ENV": sys.prefix},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        data = _graphql_when_ready(
            process,
            f"http://127.0.0.1:{port}",
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }",
            log,
        )
        entries = data["workspaceOrError"]["locationEntries"]
        assert [e["name"] for e in entries] == ["autoretrain"]
        assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries
        # The instance is the project's (settings' data root), with its dagster.yaml written.
        assert (settings.paths.dagster_home / "dagster.yaml").exists()
    finally:
        _stop_group(process)


def _graphql_when_ready(process, url: str, query: str, log: Path, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"autoretrain ui exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())["data"]
        except OSError:
            time.sleep(1)
    pytest.fail(f"autoretrain ui not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")


def _stop_group(process, grace_s: float = 15) -> None:
    """SIGTERM to the group; without a terminal `dg dev` (like `dagster dev`) may linger, so
    SIGKILL what is left after the grace period."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
