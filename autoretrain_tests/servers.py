"""Real servers for tests, started on 127.0.0.1 and stopped afterwards.

Azurite (the Azure Storage emulator) is installed from the pinned `autoretrain_tests/azurite/`
npm project into its own `node_modules/`, so the tests never depend on a global install.
CI can install it ahead of time with `npm ci --prefix autoretrain_tests/azurite`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

AZURITE_DIR = Path(__file__).parent / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"

# The public, well-known development account every Azurite serves (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class ServerError(RuntimeError):
    """A test server could not be installed or started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_azurite_installed() -> Path:
    """Install the pinned Azurite with `npm ci` unless it is already there; returns its binary."""
    if AZURITE_BIN.exists():
        return AZURITE_BIN
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ServerError(
            "Azurite needs Node 20 and npm on PATH (the Blob mirror tests run against it); "
            f"install them, then run `npm ci --prefix {AZURITE_DIR}`"
        )
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(AZURITE_DIR)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not AZURITE_BIN.exists():
        raise ServerError(
            f"`npm ci --prefix {AZURITE_DIR}` failed (exit {result.returncode}):\n"
            f"{result.stderr[-2000:]}"
        )
    return AZURITE_BIN


class Azurite:
    """One Azurite Blob service on 127.0.0.1, in its own process group.

    `stop()` then `start()` brings it back on the same port with the same workspace folder, so
    what was stored before survives: that is how the tests simulate an outage.
    """

    def __init__(self, workspace: Path, port: int | None = None, ready_timeout_s: float = 30.0):
        self.workspace = workspace
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workspace / "azurite.log"

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Azurite:
        if self.running:
            return self
        binary = ensure_azurite_installed()
        self.workspace.mkdir(parents=True, exist_ok=True)
        log = open(self._log, "ab")  # noqa: SIM115 - the child process keeps writing to it
        try:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.workspace),
                    # Telemetry would try to reach the internet; 3.35 rejects the API version
                    # azure-storage-blob 12.31 speaks unless told to skip the check.
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(
                    f"Azurite exited during start-up on port {self.port}: {self._tail_log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerError(
            f"Azurite not ready on 127.0.0.1:{self.port} after {self.ready_timeout_s:.0f} s: "
            f"{self._tail_log()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)
        except ProcessLookupError:
            process.wait(timeout=timeout_s)

    def _tail_log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:] or "(empty log)"
        except OSError:
            return "(no log)"

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DagsterWebserver:
    """`dagster-webserver -w workspace.yaml` on 127.0.0.1, in its own process group (started
    with a plain `&` it ignores SIGTERM; REFERENCE.md), over a given DAGSTER_HOME."""

    def __init__(self, project: Path, env: dict[str, str]):
        self.project = project
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> DagsterWebserver:
        import urllib.request

        # Beside the running interpreter: `make test` calls .venv/bin/pytest without activating.
        binary = Path(sys.executable).with_name("dagster-webserver")
        if not binary.exists():
            binary = Path(shutil.which("dagster-webserver") or "dagster-webserver")
        self.process = subprocess.Popen(
            [str(binary), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=self.project,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"dagster-webserver exited: {self.process.stderr.read()[-2000:]!r}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"dagster-webserver not ready on {self.url} after {timeout_s:.0f} s")

    def graphql(self, query: str) -> dict:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        if body.get("errors"):
            raise ServerError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class DagsterDaemon:
    """`dagster-daemon run -w workspace.yaml` over a given DAGSTER_HOME: the sensors, the
    automation sensor and the run queue, launching each run in its own process, as in
    production. Own process group; its log goes to a file (a pipe nobody reads would fill
    and stall it)."""

    def __init__(self, project: Path, env: dict[str, str], log: Path):
        self.project, self.log = project, log
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> DagsterDaemon:
        binary = Path(sys.executable).with_name("dagster-daemon")
        if not binary.exists():
            binary = Path(shutil.which("dagster-daemon") or "dagster-daemon")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(binary), "run", "-w", "workspace.yaml"],
                cwd=self.project,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
