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
from typing import Self

AZURITE_DIR = Path(__file__).parent / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
AZURITE_TABLE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-table"

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
    what was stored before survives: that is how the tests simulate an outage. A subclass names
    another of Azurite's services (`AzuriteTable`).
    """

    service = "blob"  # the binary is azurite-<service>, its flags --<service>Host/--<service>Port
    binary = AZURITE_BIN
    log_name = "azurite.log"
    stop_signal = signal.SIGTERM

    def __init__(self, workspace: Path, port: int | None = None, ready_timeout_s: float = 30.0):
        self.workspace = workspace
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workspace / self.log_name

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def blob_endpoint(self) -> str:
        return self.endpoint

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};{self.service.capitalize()}Endpoint={self.endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        ensure_azurite_installed()
        self.workspace.mkdir(parents=True, exist_ok=True)
        log = open(self._log, "ab")  # noqa: SIM115 - the child process keeps writing to it
        try:
            self._process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--{self.service}Host",
                    "127.0.0.1",
                    f"--{self.service}Port",
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
        """Stop the whole process group: `stop_signal`, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, self.stop_signal)
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

    def __enter__(self) -> Self:
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


# ---- Azurite's Table service and an OTLP/HTTP receiver (issue 22) -----------------------------


class AzuriteTable(Azurite):
    """Azurite's Table service on 127.0.0.1 (same package, binary `azurite-table`), in its own
    process group; `stop()` then `start()` keeps the port and the workspace (an outage)."""

    service = "table"
    binary = AZURITE_TABLE_BIN
    log_name = "azurite-table.log"
    # Stop like Ctrl-C: azurite-table saves its database on SIGINT but dies on SIGTERM without
    # saving the last seconds of writes (LokiJS autosaves every 5 s), which Azure never does to
    # an acknowledged write. SIGKILL if it lingers.
    stop_signal = signal.SIGINT

    @property
    def table_endpoint(self) -> str:
        return self.endpoint


class OtlpReceiver:
    """A real OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` and `POST /v1/metrics` bodies
    (protobuf, optionally gzip) are decoded with opentelemetry-proto and kept, in order of
    arrival. `spans()` and `metrics()` flatten them with their attributes as plain values."""

    def __init__(self, delay_s: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.delay_s = delay_s  # answer each request this late, as a distant collector does
        self.traces: list = []  # ExportTraceServiceRequest
        self.metric_requests: list = []  # ExportMetricsServiceRequest
        self.requests: list[tuple[str, str]] = []  # (path, content type)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                import gzip

                from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                    ExportMetricsServiceRequest,
                    ExportMetricsServiceResponse,
                )
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest,
                    ExportTraceServiceResponse,
                )

                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kinds = {
                    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
                    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
                }
                if self.path not in kinds:
                    self.send_error(404)
                    return
                request_type, response_type = kinds[self.path]
                time.sleep(receiver.delay_s)
                message = request_type()
                message.ParseFromString(body)
                with receiver._lock:
                    receiver.requests.append((self.path, self.headers.get("Content-Type", "")))
                    target = (
                        receiver.traces if self.path == "/v1/traces" else receiver.metric_requests
                    )
                    target.append(message)
                reply = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _value(value):  # an AnyValue -> a Python value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            return [OtlpReceiver._value(v) for v in value.array_value.values]
        return getattr(value, kind) if kind else None

    @classmethod
    def attributes(cls, key_values) -> dict:
        return {kv.key: cls._value(kv.value) for kv in key_values}

    def spans(self) -> list[dict]:
        """Every span received: name, kind, ids, times (ns), attributes, resource attributes."""
        found = []
        with self._lock:
            requests = list(self.traces)
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = self.attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            {
                                "name": span.name,
                                "kind": span.kind,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "start_ns": span.start_time_unix_nano,
                                "end_ns": span.end_time_unix_nano,
                                "status_code": span.status.code,
                                "attributes": self.attributes(span.attributes),
                                "resource": resource,
                                "scope": scope_spans.scope.name,
                            }
                        )
        return found

    def metrics(self, last_only: bool = True) -> dict[str, list[dict]]:
        """Metric name -> its data points (histogram: count, sum; sum/gauge: value), each with
        its attributes and the metric's unit and type. OTLP metrics are cumulative by default,
        so the last export holds every stream's total: `last_only` reads just that one."""
        found: dict[str, list[dict]] = {}
        with self._lock:
            requests = list(self.metric_requests)
        if last_only:
            requests = requests[-1:]
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            entry = {
                                "type": kind,
                                "unit": metric.unit,
                                "attributes": self.attributes(point.attributes),
                            }
                            if kind in ("histogram", "exponential_histogram"):
                                entry.update(count=point.count, sum=point.sum)
                            else:
                                entry["value"] = point.WhichOneof("value") and getattr(
                                    point, point.WhichOneof("value")
                                )
                            found.setdefault(metric.name, []).append(entry)
        return found


class AppInsightsReceiver:
    """A loopback Application Insights ingestion endpoint (`POST /v2.1/track`, what
    azure-monitor-opentelemetry-exporter sends to a connection string's IngestionEndpoint):
    JSON envelopes, optionally gzip, kept as dicts; every item is answered as accepted."""

    INSTRUMENTATION_KEY = "00000000-0000-0000-0000-000000000000"

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.envelopes: list[dict] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                import gzip
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                text = body.decode("utf-8").strip()
                items = (
                    json.loads(text)
                    if text.startswith("[")
                    else [json.loads(line) for line in text.splitlines() if line.strip()]
                )
                with receiver._lock:
                    receiver.paths.append(self.path)
                    receiver.envelopes.extend(items)
                reply = json.dumps(
                    {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def connection_string(self) -> str:
        port = self._server.server_address[1]
        return (
            f"InstrumentationKey={self.INSTRUMENTATION_KEY};"
            f"IngestionEndpoint=http://127.0.0.1:{port}/"
        )

    def start(self) -> AppInsightsReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AppInsightsReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def of_type(self, base_type: str) -> list[dict]:
        """The `baseData` of every envelope of a type (RemoteDependencyData, MetricData, ...)."""
        with self._lock:
            items = list(self.envelopes)
        return [
            e["data"]["baseData"] for e in items if e.get("data", {}).get("baseType") == base_type
        ]
