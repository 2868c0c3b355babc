"""Telemetry out: spans and metrics of runs reach a real OTLP/HTTP receiver on 127.0.0.1 (decoded
with opentelemetry-proto) and a loopback Application Insights ingestion endpoint, with the GenAI
semantic-convention names; the committed Azure Monitor workbook queries only what is sent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoretrain import telemetry as telemetry_module
from autoretrain.runs.archive import BufferedArchive, RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import Run, Usage, Verification
from autoretrain.runs.tracker import RunTracker
from autoretrain.settings import Price, load_settings
from autoretrain.telemetry import Telemetry
from autoretrain_tests.servers import AppInsightsReceiver, OtlpReceiver, free_port

WORKBOOK = Path(__file__).resolve().parents[1] / "docs" / "azure" / "workbook.json"
CLIENT, INTERNAL = 3, 1  # Span.SpanKind in the OTLP protobuf
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ns(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def tracked_run(i: int, *, slot: str, category: str, passed: bool, calls: int = 2) -> Run:
    """A run recorded through the tracker, as an agent app or self-play records it."""
    prices = PriceTable(prices={"tiny-v1": Price(input_per_mtok=1.0, output_per_mtok=4.0)})
    tracker = RunTracker(None, prices, provider="local", model="tiny-v1", slot=slot)
    # Started a while ago, so each call (timed by its event, lasting its latency) lies inside.
    started = datetime.now(UTC) - timedelta(seconds=5)
    with tracker.start(
        run_id=f"run-{i}", scenario_id=f"calc-{i}", category=category, started_at=started
    ) as run:
        run.message({"role": "user", "content": "What is 2+2?"})
        for c in range(calls):
            tool = c < calls - 1
            reply = (
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": f"c{c}",
                            "type": "function",
                            "function": {"name": "add", "arguments": '{"a":2,"b":2}'},
                        }
                    ],
                }
                if tool
                else {"role": "assistant", "content": "4"}
            )
            run.model_call(
                reply,
                prompt_tokens=20 + 10 * c + i,
                completion_tokens=5 + c,
                latency_s=0.25,
                finish_reason="tool_calls" if tool else "stop",
            )
            if tool:
                run.tool_result(f"c{c}", "add", "4", ok=True, duration_s=0.01)
        run.verification(Verification(verifier="exact", passed=passed, score=float(passed)))
        run.finish("succeeded" if passed else "failed", final_answer="4")
    return run.run


def imported_run() -> Run:
    """A record from another app: usage and times, no events."""
    return Run(
        run_id="imported-1",
        category="lookup",
        model="gpt-4o-mini",
        provider="azure_openai",
        slot="primary",
        traffic="import",
        status="succeeded",
        started_at=T0,
        ended_at=T0 + timedelta(seconds=3),
        latency_s=3.0,
        cost_usd=0.002,
        usage=Usage(prompt_tokens=300, completion_tokens=40),
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        verifications=[Verification(verifier="exact", passed=True, score=1.0)],
    )


def failed_call_run() -> Run:
    tracker = RunTracker(None, provider="local", model="tiny-v1", slot="canary")
    with tracker.start(run_id="run-error", category="text") as run:
        run.message({"role": "user", "content": "hi"})
        run.error("model call failed: connection refused", agent="executor")
        run.finish("error")
    return run.run


def enable(monkeypatch, endpoint: str | None = None, **conf: object) -> None:
    """Turn telemetry on through the configuration file, as an operator would."""
    lines = ["telemetry:", "  enabled: true", "  export_timeout_s: 2"]
    if endpoint:
        lines.append(f"  otlp_endpoint: {endpoint}")
    lines += [f"  {k}: {json.dumps(v)}" for k, v in conf.items()]
    # Chat spans price each call from the settings' pricing, as the tracker does.
    lines += ["pricing:", "  tiny-v1: {input_per_mtok: 1.0, output_per_mtok: 4.0}"]
    Path(os.environ["AUTORETRAIN_CONFIG"]).write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def _fresh_process_telemetry():
    """Each test reads its own settings; nothing cached outlives it (and its receivers)."""
    telemetry_module.reset_process_telemetry()
    yield
    telemetry_module.reset_process_telemetry()


@pytest.fixture
def receiver():
    with OtlpReceiver() as server:
        yield server


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for telemetry")
        time.sleep(0.05)


def test_off_by_default_and_opentelemetry_is_not_imported_until_needed(settings):
    assert not settings.telemetry.enabled
    assert Telemetry.from_settings(settings) is None
    assert telemetry_module.process_telemetry() is None
    code = (
        "import sys, autoretrain.telemetry, autoretrain.runs.archive, autoretrain.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_enabled_without_a_destination_stays_off(settings, monkeypatch, caplog):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    enable(monkeypatch)
    assert Telemetry.from_settings(load_settings()) is None
    assert "nowhere to go" in caplog.text


def test_spans_and_metrics_reach_an_otlp_receiver_with_genai_names(settings, monkeypatch, receiver):
    enable(monkeypatch, receiver.endpoint)
    runs = [
        tracked_run(1, slot="primary", category="arithmetic", passed=True),
        tracked_run(2, slot="canary", category="arithmetic", passed=False, calls=3),
        imported_run(),
        failed_call_run(),
    ]
    telemetry = Telemetry.from_settings(load_settings())
    assert telemetry is not None
    assert telemetry.record(runs) == 4
    assert telemetry.flush()
    telemetry.shutdown()

    spans = receiver.spans()
    assert all(path in ("/v1/traces", "/v1/metrics") for path, _ in receiver.requests)
    assert {ctype for _, ctype in receiver.requests} == {"application/x-protobuf"}
    by_run: dict[str, list[dict]] = {}
    for span in spans:
        by_run.setdefault(span["attributes"]["gen_ai.conversation.id"], []).append(span)
    assert sorted(by_run) == ["imported-1", "run-1", "run-2", "run-error"]
    assert spans[0]["resource"]["service.name"] == "autoretrain"
    assert spans[0]["resource"]["process.pid"] == os.getpid()

    for run in runs:
        mine = by_run[run.run_id]
        (agent,) = [s for s in mine if s["name"] == f"invoke_agent {run.workflow}"]
        attrs = agent["attributes"]
        assert agent["kind"] == INTERNAL and agent["parent_span_id"] == ""
        assert attrs["gen_ai.operation.name"] == "invoke_agent"
        assert attrs["gen_ai.agent.name"] == run.workflow
        assert attrs["gen_ai.request.model"] == run.model
        assert attrs["gen_ai.usage.input_tokens"] == run.usage.prompt_tokens
        assert attrs["gen_ai.usage.output_tokens"] == run.usage.completion_tokens
        assert attrs["autoretrain.slot"] == run.slot
        assert attrs["autoretrain.category"] == run.category
        assert attrs["autoretrain.outcome"] == run.status
        assert attrs["autoretrain.verified"] is run.verified
        assert attrs["autoretrain.traffic"] == run.traffic
        # The run's own times, not the time it was exported.
        assert agent["start_ns"] == ns(run.started_at) and agent["end_ns"] == ns(run.ended_at)
        if run.cost_usd is not None:
            assert attrs["autoretrain.cost_usd"] == pytest.approx(run.cost_usd)
        chats = [s for s in mine if s["name"].startswith("chat ")]
        for chat in chats:
            assert chat["kind"] == CLIENT
            assert chat["trace_id"] == agent["trace_id"]
            assert chat["parent_span_id"] == agent["span_id"]
            assert agent["start_ns"] <= chat["start_ns"] <= chat["end_ns"] <= agent["end_ns"]
            a = chat["attributes"]
            assert chat["name"] == f"chat {a['gen_ai.request.model']}"
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.provider.name"] == attrs["gen_ai.provider.name"]
            assert a["autoretrain.slot"] == run.slot and a["autoretrain.outcome"] == run.status
        ok = [c for c in chats if "error.type" not in c["attributes"]]
        assert sum(c["attributes"]["gen_ai.usage.input_tokens"] for c in ok) == (
            run.usage.prompt_tokens
        )
        assert sum(c["attributes"]["gen_ai.usage.output_tokens"] for c in ok) == (
            run.usage.completion_tokens
        )

    run2 = by_run["run-2"]
    chats = sorted((s for s in run2 if s["name"] == "chat tiny-v1"), key=lambda s: s["start_ns"])
    assert len(chats) == 3
    assert [c["attributes"]["gen_ai.response.finish_reasons"] for c in chats] == [
        ["tool_calls"],
        ["tool_calls"],
        ["stop"],
    ]
    first = chats[0]["attributes"]
    assert first["gen_ai.response.model"] == "tiny-v1"
    assert first["gen_ai.usage.input_tokens"] == 22 and first["gen_ai.usage.output_tokens"] == 5
    assert first["autoretrain.cost_usd"] == pytest.approx((22 * 1.0 + 5 * 4.0) / 1e6)
    assert all(c["end_ns"] - c["start_ns"] == 250_000_000 for c in chats)
    tools = [s for s in run2 if s["name"] == "execute_tool add"]
    assert len(tools) == 2 and tools[0]["attributes"]["gen_ai.tool.name"] == "add"

    (imported_chat,) = [s for s in by_run["imported-1"] if s["name"].startswith("chat")]
    assert imported_chat["attributes"]["gen_ai.provider.name"] == "azure.ai.openai"
    assert imported_chat["attributes"]["gen_ai.usage.input_tokens"] == 300
    assert imported_chat["start_ns"] == ns(T0) and imported_chat["end_ns"] == ns(T0) + 3 * 10**9

    error_spans = by_run["run-error"]
    (failed,) = [s for s in error_spans if s["name"].startswith("chat")]
    assert failed["attributes"]["error.type"] == "provider_error"
    assert failed["status_code"] == 2  # STATUS_CODE_ERROR
    assert "gen_ai.usage.input_tokens" not in failed["attributes"]

    metrics = receiver.metrics()
    usage = metrics["gen_ai.client.token.usage"]
    assert {p["type"] for p in usage} == {"histogram"} and usage[0]["unit"] == "{token}"
    total = {"input": 0, "output": 0}
    for point in usage:
        total[point["attributes"]["gen_ai.token.type"]] += point["sum"]
    ok_runs = [r for r in runs if r.run_id != "run-error"]
    assert total["input"] == sum(r.usage.prompt_tokens for r in ok_runs)
    assert total["output"] == sum(r.usage.completion_tokens for r in ok_runs)
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration[0]["unit"] == "s"
    assert sum(p["count"] for p in duration) == 2 + 3 + 1 + 1
    assert any(p["attributes"].get("error.type") == "provider_error" for p in duration)
    counts: dict[tuple, int] = {}
    for p in metrics["autoretrain.run.count"]:
        key = (p["attributes"]["autoretrain.slot"], p["attributes"]["autoretrain.verified"])
        counts[key] = counts.get(key, 0) + p["value"]
    assert counts[("primary", True)] == 2 and counts[("canary", False)] == 2
    cost = sum(p["value"] for p in metrics["autoretrain.run.cost"])
    assert cost == pytest.approx(sum(r.cost_usd or 0 for r in runs))


def test_runs_written_to_the_landing_zone_emit_telemetry(settings, monkeypatch, receiver):
    """The hook self-play goes through: a BufferedArchive flushing into RunArchive.write. The
    endpoint here comes from the standard OTEL_EXPORTER_OTLP_ENDPOINT."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    enable(monkeypatch)
    archive = RunArchive(load_settings().paths.landing)
    with BufferedArchive(archive, max_runs=3) as sink:
        for i in range(5):
            sink.append(tracked_run(i, slot="primary", category="arithmetic", passed=i % 2 == 0))
    assert len(sink.written) == 2  # two writes of 3 and 2 runs
    # Each write flushed (waiting up to 5 s): on an idle machine both already arrived.
    wait_for(lambda: len(receiver.spans()) == 5 * 4)
    names = [s["name"] for s in receiver.spans()]
    assert names.count("invoke_agent executor") == 5 and names.count("chat tiny-v1") == 10
    runs = {s["attributes"]["gen_ai.conversation.id"] for s in receiver.spans()}
    assert runs == {f"run-{i}" for i in range(5)}
    telemetry_module.reset_process_telemetry()  # its last export, while the receiver listens


def test_a_collector_that_is_down_never_stops_runs_being_recorded(settings, monkeypatch, caplog):
    enable(monkeypatch, f"http://127.0.0.1:{free_port()}")
    archive = RunArchive(load_settings().paths.landing)
    started = time.monotonic()
    written = archive.write([tracked_run(1, slot="primary", category="text", passed=True)])
    assert len(written) == 1 and written[0].exists()
    # The first write waits for the exporters at most 5 s (their retries would take longer)...
    assert time.monotonic() - started < 8
    assert "collector down?" in caplog.text
    # ...and later writes do not wait at all while the collector stays down.
    started = time.monotonic()
    for i in range(3):
        archive.write([tracked_run(2 + i, slot="primary", category="text", passed=True)])
    assert time.monotonic() - started < 1.5
    assert len(list(settings_runs(archive))) == 4


def settings_runs(archive: RunArchive) -> list[str]:
    return [line for day in archive.days() for f in archive.files(day) for line in f.open()]


def test_content_is_opt_in(settings, monkeypatch, receiver):
    enable(monkeypatch, receiver.endpoint)
    telemetry = Telemetry.from_settings(load_settings())
    telemetry.record([tracked_run(1, slot="primary", category="text", passed=True)])
    telemetry.flush()
    assert not any("gen_ai.input.messages" in s["attributes"] for s in receiver.spans())
    telemetry.shutdown()

    enable(monkeypatch, receiver.endpoint, capture_content=True)
    telemetry = Telemetry.from_settings(load_settings())
    telemetry.record([tracked_run(2, slot="primary", category="text", passed=True)])
    telemetry.flush()
    telemetry.shutdown()
    chats = [
        s for s in receiver.spans() if s["attributes"].get("gen_ai.conversation.id") == "run-2"
    ]
    last = max((s for s in chats if s["name"].startswith("chat")), key=lambda s: s["start_ns"])
    assert json.loads(last["attributes"]["gen_ai.output.messages"]) == [
        {"role": "assistant", "content": "4"}
    ]
    assert json.loads(last["attributes"]["gen_ai.input.messages"])[0]["content"] == "What is 2+2?"


# ---- Azure Monitor and the workbook ----------------------------------------------------------


@pytest.fixture
def app_insights(settings, monkeypatch):
    """Runs exported through azure-monitor-opentelemetry-exporter to a loopback ingestion
    endpoint; returns the receiver after everything arrived."""
    # The exporter's own reporting (statsbeat to Microsoft, the control plane, SDK stats to the
    # customer's endpoint) would reach the internet or outlive this receiver: off in tests.
    for name in (
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED",
    ):
        monkeypatch.setenv(name, "true")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    with AppInsightsReceiver() as server:
        monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", server.connection_string)
        enable(monkeypatch)
        telemetry = Telemetry.from_settings(load_settings())
        assert telemetry is not None
        telemetry.record(
            [
                tracked_run(1, slot="primary", category="arithmetic", passed=True),
                tracked_run(2, slot="canary", category="lookup", passed=False),
                imported_run(),
            ]
        )
        assert telemetry.flush()
        telemetry.shutdown()
        wait_for(lambda: server.of_type("RemoteDependencyData") and server.of_type("MetricData"))
        yield server


def test_azure_monitor_gets_dependencies_and_metrics_with_the_genai_dimensions(app_insights):
    dependencies = app_insights.of_type("RemoteDependencyData")
    agents = [d for d in dependencies if d["properties"]["gen_ai.operation.name"] == "invoke_agent"]
    chats = [d for d in dependencies if d["properties"]["gen_ai.operation.name"] == "chat"]
    assert len(agents) == 3 and len(chats) == 5
    assert {d["name"] for d in chats} == {"chat tiny-v1", "chat gpt-4o-mini"}
    props = next(d["properties"] for d in agents if d["properties"]["autoretrain.slot"] == "canary")
    assert props["autoretrain.verified"] == "False" and props["autoretrain.category"] == "lookup"
    metrics = {m["name"] for data in app_insights.of_type("MetricData") for m in data["metrics"]}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= metrics


def workbook_queries() -> list[tuple[str, str]]:
    workbook = json.loads(WORKBOOK.read_text())
    return [
        (item["name"], item["content"]["query"]) for item in workbook["items"] if item["type"] == 3
    ]


def test_workbook_is_a_workbook_of_app_insights_queries():
    workbook = json.loads(WORKBOOK.read_text())
    assert workbook["version"] == "Notebook/1.0" and isinstance(workbook["items"], list)
    queries = workbook_queries()
    assert len(queries) >= 8
    titles = " ".join(i["content"].get("title", "") for i in workbook["items"] if i["type"] == 3)
    for word in ("Tokens", "Cost", "Pass rate", "latency", "slot", "category"):
        assert word.lower() in titles.lower()
    for item in workbook["items"]:
        if item["type"] == 3:
            assert item["content"]["version"] == "KqlItem/1.0"
            assert item["content"]["resourceType"] == "microsoft.insights/components"
            assert item["content"]["timeContextFromParameter"] == "TimeRange"


def test_every_workbook_query_reads_what_the_exporter_really_sends(app_insights):
    """Each query's table, dimension names, metric names and operation names must be in the
    envelopes azure-monitor-opentelemetry-exporter sent for real runs."""
    tables = {
        "dependencies": [d["properties"] for d in app_insights.of_type("RemoteDependencyData")],
        "customMetrics": [
            m.get("properties", {}) | {"__name": metric["name"]}
            for m in app_insights.of_type("MetricData")
            for metric in m["metrics"]
        ],
    }
    for name, query in workbook_queries():
        table = query.split()[0]
        assert table in tables, f"{name}: reads {table}, which autoretrain does not fill"
        sent = tables[table]
        keys = set(re.findall(r'customDimensions\["([^"]+)"\]', query))
        assert keys, f"{name} reads no dimension"
        if table == "customMetrics":
            (metric,) = re.findall(r'name == "([^"]+)"', query)
            sent = [p for p in sent if p["__name"] == metric]
            assert sent, f"{name}: metric {metric} is never sent"
        for op in re.findall(r'"gen_ai.operation.name"\]\) == "([^"]+)"', query):
            sent = [p for p in sent if p.get("gen_ai.operation.name") == op]
            assert sent, f"{name}: no span with gen_ai.operation.name={op}"
        available = set().union(*(p.keys() for p in sent))
        assert keys <= available, f"{name} reads {sorted(keys - available)}, never sent"


def test_self_play_runs_emit_their_telemetry(settings, monkeypatch, receiver):
    """Self-play writes through the landing-zone hook: every run of both slots arrives, its
    chat spans carrying the slot, the outcome and the verifier's verdict of that run."""
    from autoretrain.agents.verifier import VerifierAgent
    from autoretrain.scenarios import load_catalog
    from autoretrain.selfplay import SelfPlayRunner, SlotTarget
    from autoretrain_tests.test_selfplay import ReferencePlayer

    enable(monkeypatch, receiver.endpoint)
    catalog = load_catalog("scenarios")
    instances = catalog.selfplay_instances(30, seed=4)
    primary, canary = ReferencePlayer(catalog), ReferencePlayer(catalog)
    primary.by_prompt = canary.by_prompt = {i.user_prompt: i for i in instances}
    report = SelfPlayRunner(
        catalog,
        catalog.registry,
        VerifierAgent(),
        RunArchive(load_settings().paths.landing),
        SlotTarget("primary", primary, "local"),
        canary=SlotTarget("canary", canary, "local"),
        canary_share=0.4,
        progress=False,
    ).run(30, seed=4, instances=instances)
    telemetry_module.reset_process_telemetry()
    assert report.finished == 30

    spans = receiver.spans()
    agents = [s for s in spans if s["attributes"]["gen_ai.operation.name"] == "invoke_agent"]
    chats = [s for s in spans if s["attributes"]["gen_ai.operation.name"] == "chat"]
    assert len(agents) == 30
    slots = [a["attributes"]["autoretrain.slot"] for a in agents]
    assert slots.count("primary") == report.by_slot["primary"]
    assert slots.count("canary") == report.by_slot["canary"]
    assert len(chats) == primary.calls + canary.calls
    verdicts = {a["span_id"]: a["attributes"]["autoretrain.verified"] for a in agents}
    succeeded = sum(a["attributes"]["autoretrain.outcome"] == "succeeded" for a in agents)
    assert succeeded == report.by_status.get("succeeded", 0)
    for chat in chats:
        assert chat["parent_span_id"] in verdicts
        attrs = chat["attributes"]
        assert attrs["gen_ai.usage.input_tokens"] == 10 and attrs["gen_ai.usage.output_tokens"] == 5
        assert attrs["autoretrain.traffic"] == "selfplay"
        assert attrs["autoretrain.verified"] == verdicts[chat["parent_span_id"]]


def test_a_self_play_sized_write_loses_no_span(settings, monkeypatch):
    """BufferedArchive writes 500 runs at a time: 5,000 spans here, more than the SDK's default
    span queue (2,048) holds while a collector 0.5 s away drains it; every one must arrive."""
    receiver = OtlpReceiver(delay_s=0.5).start()
    enable(monkeypatch, receiver.endpoint)
    runs = [
        tracked_run(i, slot="primary", category="text", passed=True, calls=5) for i in range(500)
    ]
    RunArchive(load_settings().paths.landing).write(runs)
    telemetry_module.reset_process_telemetry()
    spans = receiver.spans()
    receiver.stop()
    assert len(spans) == 500 * (1 + 5 + 4)
    assert len({s["attributes"]["gen_ai.conversation.id"] for s in spans}) == 500
