"""Telemetry out: OpenTelemetry spans and metrics per run and per model call.

Built from run records (a `Run`'s events, messages, usage and times), so it works the same for
every run source: self-play, evaluation, an agent app's tracker, imported history. Each run
becomes, following the OpenTelemetry GenAI semantic conventions (semconv v1.37+, development):

- a span `invoke_agent <workflow>` (kind INTERNAL: the agent runs in-process) from the run's
  start to its end, with `gen_ai.operation.name=invoke_agent`, `gen_ai.agent.name`,
  `gen_ai.conversation.id` (the run id), the run's tokens and the autoretrain attributes below;
- under it, one span `chat <model>` (kind CLIENT) per model call, timed by the call's event
  (it ends at the event, lasting its `duration_s`), with `gen_ai.operation.name=chat`,
  `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`,
  `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
  `gen_ai.response.finish_reasons`, `gen_ai.conversation.id`. A run without model-call events
  (an imported record) gets one chat span for its whole usage; a failed call (an `error` event
  "model call failed") gets a chat span with `error.type` and status ERROR;
- one span `execute_tool <name>` per tool result that has a duration;
- metrics `gen_ai.client.token.usage` (histogram, `{token}`, by `gen_ai.token.type`
  input/output) and `gen_ai.client.operation.duration` (histogram, seconds) per model call, and
  per run `autoretrain.run.count` (runs, by outcome and verified), `autoretrain.run.cost` (USD)
  and `autoretrain.run.duration` (seconds).

autoretrain's own attributes, on every span and metric point where they apply:
`autoretrain.slot`, `autoretrain.category`, `autoretrain.scenario_id`, `autoretrain.traffic`,
`autoretrain.outcome` (the run's status), `autoretrain.verified`, `autoretrain.score`,
`autoretrain.cost_usd`, `autoretrain.agent` (planner, executor, ...).

Export: OTLP/HTTP (protobuf) to `telemetry.otlp_endpoint`, else to the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`; and to Azure Monitor (Application Insights) with
`azure-monitor-opentelemetry-exporter` when the variable named by
`telemetry.azure_monitor_connection_string_env` holds a connection string. Off unless
`telemetry.enabled`. The providers are this module's own (never the global ones), so an app that
configures OpenTelemetry itself is not disturbed. OpenTelemetry is imported only when telemetry
is on: the CLI and the Dagster definitions load without it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoretrain.runs.pricing import PriceTable
    from autoretrain.runs.schema import Run, WorkflowEvent
    from autoretrain.settings import Settings

log = logging.getLogger(__name__)

SCOPE = "autoretrain"

# GenAI semantic-convention names (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
CONVERSATION = "gen_ai.conversation.id"
AGENT_NAME = "gen_ai.agent.name"
AGENT_VERSION = "gen_ai.agent.version"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"
TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"

# autoretrain's own attributes and metrics.
SLOT = "autoretrain.slot"
CATEGORY = "autoretrain.category"
SCENARIO = "autoretrain.scenario_id"
TRAFFIC = "autoretrain.traffic"
OUTCOME = "autoretrain.outcome"
VERIFIED = "autoretrain.verified"
SCORE = "autoretrain.score"
COST = "autoretrain.cost_usd"
AGENT = "autoretrain.agent"
RUN_COUNT = "autoretrain.run.count"
RUN_COST = "autoretrain.run.cost"
RUN_DURATION = "autoretrain.run.duration"

# Spans queued for export, and runs recorded between flushes of a big batch (a run makes a
# span, one per model call and one per timed tool call: well under 30 spans in self-play).
SPAN_QUEUE = 65536
RUNS_PER_FLUSH = 2000

# Bucket boundaries the GenAI conventions advise for the two client histograms.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48]

# Provider kinds and names as autoretrain records them -> the conventions' well-known values.
_PROVIDER_NAMES = {
    "azure_openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "openai": "openai",
}


def provider_name(provider: str) -> str:
    return _PROVIDER_NAMES.get(provider, provider or "unknown")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoretrain")
    except PackageNotFoundError:
        return "unknown"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(value: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (a float timestamp is not)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes take no None: a value that is not known is left out."""
    return {k: v for k, v in attributes.items() if v is not None}


class _Call:
    """One model call of a run, as read from its events."""

    def __init__(
        self,
        *,
        model: str,
        start: datetime,
        end: datetime,
        input_tokens: int,
        output_tokens: int,
        finish_reason: str | None,
        agent: str,
        error: str | None = None,
        position: int | None = None,
    ):
        self.model, self.start, self.end, self.agent = model, start, end, agent
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.finish_reason, self.error = finish_reason, error
        self.position = position  # the index of its reply in the run's messages, when known


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def model_calls(run: Run) -> list[_Call]:
    """The run's model calls: one per `model_call` event (ending at the event, lasting its
    duration), one per failed call, or, for a record without events, one for its whole usage."""
    from autoretrain.runs.schema import EventType

    assistants = [i for i, m in enumerate(run.messages) if m.role == "assistant"]
    calls: list[_Call] = []
    for event in run.events:
        if event.type == EventType.MODEL_CALL:
            p = event.payload
            index = len([c for c in calls if c.error is None])
            position = assistants[index] if index < len(assistants) else None
            output = position is not None and run.messages[position]
            reason = p.get("finish_reason") or (
                ("tool_calls" if output and output.tool_calls else "stop") if output else None
            )
            calls.append(
                _Call(
                    model=str(p.get("model") or run.model),
                    start=_start(event),
                    end=event.at,
                    input_tokens=_int(p.get("prompt_tokens")),
                    output_tokens=_int(p.get("completion_tokens")),
                    finish_reason=reason,
                    agent=event.agent,
                    position=position,
                )
            )
        elif event.type == EventType.ERROR and str(event.payload.get("error", "")).startswith(
            "model call failed"
        ):
            calls.append(
                _Call(
                    model=run.model,
                    start=_start(event),
                    end=event.at,
                    input_tokens=0,
                    output_tokens=0,
                    finish_reason="error",
                    agent=event.agent,
                    error="provider_error",
                )
            )
    if not calls and (run.usage.total_tokens or assistants):
        last = run.messages[assistants[-1]] if assistants else None
        calls.append(
            _Call(
                model=run.model,
                start=run.started_at,
                end=_end(run),
                input_tokens=run.usage.prompt_tokens,
                output_tokens=run.usage.completion_tokens,
                finish_reason=(
                    ("tool_calls" if last.tool_calls else "stop") if last is not None else None
                ),
                agent=run.workflow,
                position=assistants[-1] if assistants else None,
            )
        )
    return calls


def _start(event: WorkflowEvent) -> datetime:
    return event.at - timedelta(seconds=event.duration_s or 0.0)


def _end(run: Run) -> datetime:
    if run.ended_at is not None:
        return run.ended_at
    return run.started_at + timedelta(seconds=run.latency_s or 0.0)


def run_attributes(run: Run) -> dict[str, Any]:
    """The autoretrain attributes every span and metric point of a run carries."""
    last = run.verifications[-1] if run.verifications else None
    return _clean(
        {
            SLOT: run.slot or "none",
            CATEGORY: run.category or "none",
            SCENARIO: run.scenario_id,
            TRAFFIC: run.traffic,
            OUTCOME: run.status,
            VERIFIED: run.verified,
            SCORE: None if last is None else float(last.score),
        }
    )


class Telemetry:
    """Turns runs into spans and metrics and hands them to the configured exporters."""

    def __init__(
        self,
        span_exporters: Sequence[Any],  # SpanExporters, or factories of one from the provider
        metric_exporters: Sequence[Any] = (),
        *,
        service_name: str = "autoretrain",
        capture_content: bool = False,
        prices: PriceTable | None = None,
        metric_interval_s: float = 60.0,
    ):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        version = _version()
        resource = Resource.create(
            {"service.name": service_name, "service.version": version, "process.pid": os.getpid()}
        )
        # Shut down at exit by `_shutdown_at_exit`, which bounds the wait: the SDK's own exit
        # hook waits out every exporter's retries when the collector is down.
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._watched: list[_Watched] = []
        for exporter in span_exporters:
            # A factory gets the provider: Azure Monitor's exporter reads its resource there
            # (otherwise the global provider's, which is not this one).
            if not hasattr(exporter, "export"):
                exporter = exporter(self.tracer_provider)
            watched = _Watched(exporter)
            self._watched.append(watched)
            # A landing-zone write of 500 self-play runs makes ~3,000 spans: the default queue
            # (2,048) would drop some before the flush that follows the write.
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(watched, max_queue_size=SPAN_QUEUE, max_export_batch_size=1024)
            )
        readers = [
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=int(metric_interval_s * 1000)
            )
            for exporter in metric_exporters
        ]
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
        self._closed = False
        atexit.register(self._shutdown_at_exit)
        self.tracer = self.tracer_provider.get_tracer(SCOPE, version)
        meter = self.meter_provider.get_meter(SCOPE, version)
        self.token_usage = meter.create_histogram(
            TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.run_count = meter.create_counter(RUN_COUNT, unit="{run}", description="Agent runs")
        self.run_cost = meter.create_counter(RUN_COST, unit="USD", description="Cost of runs")
        self.run_duration = meter.create_histogram(
            RUN_DURATION,
            unit="s",
            description="Agent run duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.capture_content = capture_content
        self._flush_paused_until = 0.0
        self.prices = prices

    @classmethod
    def from_settings(cls, settings: Settings) -> Telemetry | None:
        """The telemetry the settings describe, or None when it is off or has nowhere to go."""
        conf = settings.telemetry
        if not conf.enabled:
            return None
        spans: list[Any] = []
        metrics: list[Any] = []
        endpoint = conf.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = endpoint.rstrip("/")
            spans.append(
                OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=conf.export_timeout_s)
            )
            metrics.append(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=conf.export_timeout_s)
            )
        connection_string = os.environ.get(conf.azure_monitor_connection_string_env, "").strip()
        if connection_string:
            from azure.monitor.opentelemetry.exporter import (
                AzureMonitorMetricExporter,
                AzureMonitorTraceExporter,
            )

            options = {"connection_string": connection_string, "disable_offline_storage": True}
            spans.append(
                lambda provider: AzureMonitorTraceExporter(tracer_provider=provider, **options)
            )
            metrics.append(AzureMonitorMetricExporter(**options))
        if not spans:
            log.warning(
                "telemetry is enabled but has nowhere to go: set telemetry.otlp_endpoint, "
                "OTEL_EXPORTER_OTLP_ENDPOINT or $%s",
                conf.azure_monitor_connection_string_env,
            )
            return None
        from autoretrain.runs.pricing import PriceTable

        return cls(
            spans,
            metrics,
            service_name=conf.service_name,
            capture_content=conf.capture_content,
            prices=PriceTable.from_settings(settings),
        )

    # ---- emit ---------------------------------------------------------------------------

    def record(self, runs: Iterable[Run]) -> int:
        """Emit the spans and metric points of each run; returns the number of runs. Runs
        still in progress (status `running`) are skipped: their record is not final."""
        n = 0
        for run in runs:
            if run.status == "running":
                continue
            self._record_run(run)
            n += 1
            if n % RUNS_PER_FLUSH == 0:  # a big batch never outgrows the span queue
                self.tracer_provider.force_flush()
        return n

    def _record_run(self, run: Run) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        common = run_attributes(run)
        provider = provider_name(run.provider)
        agent_span = self.tracer.start_span(
            f"invoke_agent {run.workflow}",
            kind=SpanKind.INTERNAL,
            start_time=_ns(run.started_at),
            attributes=_clean(
                {
                    OPERATION: "invoke_agent",
                    PROVIDER: provider,
                    AGENT_NAME: run.workflow,
                    AGENT_VERSION: run.agent_version,
                    CONVERSATION: run.run_id,
                    REQUEST_MODEL: run.model,
                    INPUT_TOKENS: run.usage.prompt_tokens,
                    OUTPUT_TOKENS: run.usage.completion_tokens,
                    COST: run.cost_usd,
                    **common,
                }
            ),
        )
        if run.status == "error":
            agent_span.set_attribute(ERROR_TYPE, "run_error")
            agent_span.set_status(Status(StatusCode.ERROR, "the run ended in error"))
        parent = trace.set_span_in_context(agent_span)
        metric_common = {
            SLOT: common[SLOT],
            CATEGORY: common[CATEGORY],
            OUTCOME: run.status,
            PROVIDER: provider,
        }
        for call in model_calls(run):
            self._record_call(run, call, parent, common, metric_common)
        for event in run.events:
            if event.type == "tool_result" and event.duration_s is not None:
                name = str(event.payload.get("name", "tool"))
                span = self.tracer.start_span(
                    f"execute_tool {name}",
                    context=parent,
                    kind=SpanKind.INTERNAL,
                    start_time=_ns(_start(event)),
                    attributes=_clean(
                        {
                            OPERATION: "execute_tool",
                            TOOL_NAME: name,
                            TOOL_CALL_ID: event.payload.get("call_id"),
                            CONVERSATION: run.run_id,
                            **common,
                        }
                    ),
                )
                if event.payload.get("ok") is False:
                    span.set_attribute(ERROR_TYPE, "tool_error")
                    span.set_status(Status(StatusCode.ERROR))
                span.end(end_time=_ns(event.at))
        agent_span.end(end_time=_ns(_end(run)))

        run_metric = {**metric_common, VERIFIED: run.verified, REQUEST_MODEL: run.model}
        self.run_count.add(1, run_metric)
        if run.cost_usd is not None:
            self.run_cost.add(run.cost_usd, run_metric)
        duration = (
            run.latency_s
            if run.latency_s is not None
            else (_end(run) - run.started_at).total_seconds()
        )
        self.run_duration.record(max(0.0, duration), run_metric)

    def _record_call(
        self,
        run: Run,
        call: _Call,
        parent: Any,
        common: dict[str, Any],
        metric_common: dict[str, Any],
    ) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        cost = (
            self.prices.cost(call.model, call.input_tokens, call.output_tokens)
            if self.prices is not None and call.error is None
            else None
        )
        attributes = _clean(
            {
                OPERATION: "chat",
                PROVIDER: metric_common[PROVIDER],
                REQUEST_MODEL: call.model,
                CONVERSATION: run.run_id,
                AGENT: call.agent,
                COST: cost,
                **common,
            }
        )
        if call.error is None:
            attributes.update(
                {
                    RESPONSE_MODEL: call.model,
                    INPUT_TOKENS: call.input_tokens,
                    OUTPUT_TOKENS: call.output_tokens,
                }
            )
            if call.finish_reason:
                attributes[FINISH_REASONS] = [call.finish_reason]
        else:
            attributes[ERROR_TYPE] = call.error
        if self.capture_content and call.position is not None:
            dump = [m.model_dump(mode="json", exclude_none=True) for m in run.messages]
            attributes[INPUT_MESSAGES] = json.dumps(dump[: call.position], ensure_ascii=False)
            attributes[OUTPUT_MESSAGES] = json.dumps([dump[call.position]], ensure_ascii=False)
        span = self.tracer.start_span(
            f"chat {call.model}",
            context=parent,
            kind=SpanKind.CLIENT,
            start_time=_ns(call.start),
            attributes=attributes,
        )
        if call.error is not None:
            span.set_status(Status(StatusCode.ERROR, call.error))
        span.end(end_time=_ns(call.end))

        point = {
            OPERATION: "chat",
            REQUEST_MODEL: call.model,
            **metric_common,
        }
        if call.error is None:
            point[RESPONSE_MODEL] = call.model
            self.token_usage.record(call.input_tokens, {**point, TOKEN_TYPE: "input"})
            self.token_usage.record(call.output_tokens, {**point, TOKEN_TYPE: "output"})
        else:
            point[ERROR_TYPE] = call.error
        seconds = max(0.0, (call.end - call.start).total_seconds())
        self.operation_duration.record(seconds, point)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export everything recorded so far; False when an exporter did not finish in time."""
        millis = int(timeout_s * 1000)
        spans = self.tracer_provider.force_flush(millis)
        metrics = self.meter_provider.force_flush(millis)
        return bool(spans) and bool(metrics)

    def flush_unless_failing(self, timeout_s: float = 5.0, pause_s: float = 60.0) -> bool:
        """Flush, unless a recent flush was slow or incomplete (a collector down or unreachable
        answers late): then the spans wait in the exporters' queues, exported in the background,
        and the writer goes on. Such a flush pauses flushing for `pause_s`. True when flushed."""
        now = time.monotonic()
        if now < self._flush_paused_until:
            return False
        # The exporters' own retries can outlast any flush timeout (a metric export runs in the
        # caller, up to its export timeout): flush in a thread, wait at most `timeout_s`.
        result: list[bool] = []
        flusher = threading.Thread(
            target=lambda: result.append(self.flush(timeout_s * 4)),
            name="telemetry-flush",
            daemon=True,
        )
        flusher.start()
        flusher.join(timeout_s)
        if not result or not result[0] or any(w.failed for w in self._watched):
            self._flush_paused_until = time.monotonic() + pause_s
            log.warning(
                "telemetry: the exporters did not finish in %.1f s (collector down?); writers "
                "stop waiting for them for %.0f s",
                timeout_s,
                pause_s,
            )
            return False
        return True

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._shutdown_at_exit)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def _shutdown_at_exit(self, timeout_s: float = 5.0) -> None:
        closer = threading.Thread(target=self.shutdown, name="telemetry-exit", daemon=True)
        closer.start()
        closer.join(timeout_s)


class _Watched:
    """A span exporter that remembers whether its last export failed (the SDK's flush says
    only whether it finished, not whether the collector took the spans)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.failed = False

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self.inner.export(spans)
        self.failed = result is not SpanExportResult.SUCCESS
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# ---- the hook where runs are recorded ---------------------------------------------------------

_lock = threading.Lock()
_current: tuple[tuple[Any, ...], Telemetry | None] | None = None


def _settings_key() -> tuple[Any, ...]:
    from autoretrain.settings import CONFIG_FILE

    config = os.environ.get("AUTORETRAIN_CONFIG") or CONFIG_FILE
    try:
        stat = os.stat(config)
        stamp: Any = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    return (
        os.getcwd(),
        config,
        stamp,
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"),
    )


def reset_process_telemetry() -> None:
    """Flush and drop this process's cached telemetry (the next write reads the settings)."""
    global _current
    with _lock:
        previous, _current = (_current[1] if _current else None), None
    if previous is not None:
        previous.shutdown()


def process_telemetry() -> Telemetry | None:
    """This process's telemetry, from the settings in force (cached until the working
    directory, the configuration file or a destination variable changes); None when off."""
    global _current
    key = _settings_key()
    with _lock:
        if _current is not None and _current[0] == key:
            return _current[1]
        previous = _current[1] if _current is not None else None
        telemetry: Telemetry | None = None
        try:
            from autoretrain.settings import load_settings

            telemetry = Telemetry.from_settings(load_settings())
        except Exception as exc:  # noqa: BLE001 - telemetry must never stop a run being recorded
            log.warning("telemetry off: %s", exc)
        _current = (key, telemetry)
    if previous is not None:
        previous.shutdown()
    return telemetry


def runs_recorded(runs: Sequence[Run]) -> None:
    """Called where runs land (`RunArchive.write`): emits their telemetry when it is on, and
    flushes, so runs recorded by a worker process that exits without `atexit` are not lost.
    A writer waits for the exporters at most 5 s, and not at all for a minute after an export
    failed. Never raises: a collector that is down costs telemetry, never a run record."""
    try:
        telemetry = process_telemetry()
        if telemetry is None or not runs:
            return
        telemetry.record(runs)
        telemetry.flush_unless_failing()
    except Exception as exc:  # noqa: BLE001
        log.warning("telemetry: could not emit %d runs: %s", len(runs), exc)
