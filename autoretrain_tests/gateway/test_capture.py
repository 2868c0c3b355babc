"""Capture: calls grouped into runs (header, traceparent, stitching), streaming and tool calls
recorded, the run API, shutdown flushing, and the landed runs ingesting cleanly."""

from __future__ import annotations

import json

import httpx
import pytest

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.store import RunStore
from autoretrain_tests.gateway.conftest import client, landed, make_settings, running, wait_for

SYSTEM = {"role": "system", "content": "You are a careful agent."}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


def as_message(message) -> dict:
    """What an agent sends back: the openai client's own message object, dumped."""
    return message.model_dump(exclude_none=True)


def tool_turns(api, question: str, stream: bool = False, **extra):
    """A two-call agent turn: the model calls the tool, the agent answers it, the model
    answers. Returns the final messages and the final text."""
    messages = [SYSTEM, {"role": "user", "content": question}]
    first = call(api, messages, stream=stream, tools=TOOLS, **extra)
    [tool_call] = first["tool_calls"]
    messages += [first, {"role": "tool", "tool_call_id": tool_call["id"], "content": "42"}]
    second = call(api, messages, stream=stream, tools=TOOLS, **extra)
    return messages + [second], second["content"]


def call(api, messages, stream: bool = False, model: str = "primary", **kwargs) -> dict:
    """One chat completion as the assistant message an agent would append."""
    if not stream:
        completion = api.chat.completions.create(model=model, messages=messages, **kwargs)
        return as_message(completion.choices[0].message)
    content, calls, chunks = "", {}, []
    for chunk in api.chat.completions.create(model=model, messages=messages, stream=True, **kwargs):
        chunks.append(chunk)
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    # The client did not ask for usage: the chunk the gateway asked for is not passed on.
    assert all(chunk.choices for chunk in chunks)
    message: dict = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for _, c in sorted(calls.items())
        ]
    return message


def close(server, run_id: str, **fields) -> None:
    body = {"type": "close", "event_id": f"close-{run_id}", **fields}
    response = httpx.post(f"{server.url}/runs/{run_id}/events", json=body)
    assert response.status_code == 201, response.text


def test_header_groups_calls_and_tool_calls_are_recorded(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url)
    with running(settings) as server:
        api = client(server, **{"X-Autoretrain-Run": "run-h1"})
        messages, answer = tool_turns(api, "what is the answer?")
        assert answer == "model-a: 42"
        close(server, "run-h1")
        run = wait_for(lambda: landed(settings).get("run-h1"), what="run-h1 written")
    assert [m.role for m in run.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert run.messages[2].tool_calls[0].function.name == "lookup"
    assert json.loads(run.messages[2].tool_calls[0].function.arguments) == {
        "text": "what is the answer?"
    }
    assert run.messages[-1].content == "model-a: 42"
    assert run.final_answer == "model-a: 42"
    assert run.traffic == "production" and run.status == "succeeded"
    assert run.slot == "primary" and run.model == "model-a" and run.provider == "up"
    assert run.tools and run.tools[0]["function"]["name"] == "lookup"
    calls = [e for e in run.events if e.type == "model_call"]
    assert len(calls) == 2 and all(e.payload["grouped_by"] == "header" for e in calls)
    assert all(e.duration_s is not None and e.duration_s > 0 for e in calls)
    assert run.usage.prompt_tokens > 0 and run.usage.completion_tokens > 0
    assert run.latency_s is not None and run.latency_s > 0
    assert run.ended_at >= run.started_at


def test_traceparent_groups_calls_of_one_trace(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with running(settings) as server:
        planner = client(server, traceparent=f"00-{trace}-00f067aa0ba902b7-01")
        executor = client(server, traceparent=f"00-{trace}-b7ad6b7169203331-01")
        other = client(
            server, traceparent="00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e1-01"
        )
        call(
            planner,
            [{"role": "system", "content": "Plan."}, {"role": "user", "content": "plan it"}],
        )
        tool_turns(executor, "do it")
        call(other, [SYSTEM, {"role": "user", "content": "another trace"}])
        close(server, trace)
        close(server, "0af7651916cd43dd8448eb211c80319c")
        runs = wait_for(lambda: len(landed(settings)) == 2 and landed(settings), what="2 runs")
    run = runs[trace]
    # The first conversation (the planner's) is the transcript; the executor's does not extend
    # it, so its messages are kept on its own call events.
    assert [m.content for m in run.messages] == ["Plan.", "plan it", "model-a: plan it"]
    calls = [e for e in run.events if e.type == "model_call"]
    assert len(calls) == 3 and all(e.payload["grouped_by"] == "traceparent" for e in calls)
    assert calls[2].payload["messages"][-1]["content"] == "model-a: 42"
    assert runs["0af7651916cd43dd8448eb211c80319c"].messages[-1].content == "model-a: another trace"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_stitching_continues_a_conversation(tmp_path, upstream, stream):
    _, url = upstream
    settings = make_settings(tmp_path, url, run_idle_s=0.3)
    with running(settings) as server:
        api = client(server)
        # Two users, the same first message: not stitched (no assistant turn in common).
        first, _ = tool_turns(api, "same question", stream=stream)
        second, _ = tool_turns(api, "same question", stream=stream)
        third, answer = tool_turns(api, "a third one", stream=stream)
        # A later turn of the first conversation continues it.
        more = call(api, [*first, {"role": "user", "content": "and again?"}], stream=stream)
        assert answer == "model-a: 42" and more["content"] == "model-a: and again?"
        runs = wait_for(lambda: len(landed(settings)) == 3 and landed(settings), what="3 runs")
    by_length = sorted(runs.values(), key=lambda r: len(r.messages))
    assert [len(r.messages) for r in by_length] == [5, 5, 7]
    longest = by_length[-1]
    assert [m.content for m in longest.messages[-2:]] == ["and again?", "model-a: and again?"]
    assert longest.messages[1].content == "same question"
    for run in runs.values():
        calls = [e for e in run.events if e.type == "model_call"]
        assert calls[0].payload["grouped_by"] == "new"
        assert all(e.payload["grouped_by"] == "stitched" for e in calls[1:])
        assert all(e.payload["stream"] is stream for e in calls)
        # Usage is recorded for streams too: the gateway asked the upstream for it.
        assert run.usage.prompt_tokens > 0 and run.usage.completion_tokens > 0
        assert run.status == "succeeded" and run.final_answer.startswith("model-a: ")
    assert sum(len([e for e in r.events if e.type == "model_call"]) for r in runs.values()) == 7


def test_run_api_is_idempotent_and_batches_answer_207(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url)
    with running(settings) as server:
        api = client(server, **{"X-Autoretrain-Run": "run-api"})
        call(api, [SYSTEM, {"role": "user", "content": "2+2?"}])
        events = f"{server.url}/runs/run-api/events"
        verification = {
            "type": "verification",
            "event_id": "v1",
            "score": 1.0,
            "passed": True,
            "feedback": "ok",
        }
        assert httpx.post(events, json=verification).status_code == 201
        again = httpx.post(events, json=verification)
        assert again.status_code == 200 and again.json()["status"] == 200
        bad = httpx.post(
            events, json={"type": "verification", "event_id": "v2", "score": 7, "passed": True}
        )
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("verification")
        batch = {
            "batch": [
                {
                    "run_id": "run-api",
                    "event_id": "s1",
                    "type": "scenario",
                    "scenario_id": "calc-add",
                    "category": "arithmetic",
                },
                {
                    "run_id": "run-api",
                    "event_id": "v1",
                    "type": "verification",
                    "score": 0.0,
                    "passed": False,
                },
                {
                    "run_id": "run-api",
                    "event_id": "r1",
                    "type": "recovery",
                    "reason": "wrong format",
                },
                {
                    "run_id": "run-api",
                    "event_id": "m1",
                    "type": "metadata",
                    "metadata": {"user": "u7", "n": 3},
                },
                {
                    "run_id": "run-api",
                    "event_id": "f1",
                    "type": "final_answer",
                    "final_answer": "4",
                },
                {"run_id": "run-api", "event_id": "x1", "type": "teleport"},
                {"run_id": "run-api", "event_id": "r2", "type": "recovery"},
                {"event_id": "n1", "type": "close"},
            ]
        }
        response = httpx.post(f"{server.url}/runs/events", json=batch)
        assert response.status_code == 207
        result = response.json()
        assert [(s["id"], s["status"]) for s in result["successes"]] == [
            ("s1", 201),
            ("v1", 200),
            ("r1", 201),
            ("m1", 201),
            ("f1", 201),
        ]
        assert [(e["id"], e["status"]) for e in result["errors"]] == [
            ("x1", 400),
            ("r2", 400),
            ("n1", 400),
        ]
        # The same batch again changes nothing.
        again = httpx.post(f"{server.url}/runs/events", json=batch).json()
        assert all(s["status"] == 200 for s in again["successes"])
        close(server, "run-api")
        run = wait_for(lambda: landed(settings).get("run-api"), what="run-api written")
    assert [(v.passed, v.score, v.feedback) for v in run.verifications] == [(True, 1.0, "ok")]
    assert [r.reason for r in run.recoveries] == ["wrong format"]
    assert run.scenario_id == "calc-add" and run.category == "arithmetic"
    assert run.tags["user"] == "u7" and run.tags["n"] == "3" and run.tags["grouped_by"] == "header"
    assert run.final_answer == "4" and run.status == "succeeded"
    assert [e.type for e in run.events] == ["model_call", "verification", "recovery"]


def test_a_late_event_rewrites_the_whole_run(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, run_idle_s=0.5)
    with running(settings) as server:
        api = client(server, **{"X-Autoretrain-Run": "late"})
        call(api, [SYSTEM, {"role": "user", "content": "hello"}])
        first = wait_for(lambda: landed(settings).get("late"), what="first copy")
        assert not first.verifications
        event = {"type": "verification", "event_id": "late-v", "score": 1.0, "passed": True}
        assert httpx.post(f"{server.url}/runs/late/events", json=event).status_code == 201
        run = wait_for(
            lambda: (r := landed(settings).get("late")) and r.verifications and r, what="rewrite"
        )
    assert run.ended_at > first.ended_at  # ingest keeps this copy
    assert [m.content for m in run.messages] == [m.content for m in first.messages]


def test_shutdown_writes_open_runs(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, run_idle_s=3600)
    with running(settings) as server:
        api = client(server)
        for i in range(5):
            call(api, [SYSTEM, {"role": "user", "content": f"question {i}"}])
        assert landed(settings) == {}  # idle for an hour: nothing written yet
    runs = landed(settings)
    assert len(runs) == 5
    assert {r.messages[1].content for r in runs.values()} == {f"question {i}" for i in range(5)}


def test_landed_runs_ingest_with_nothing_quarantined(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(
        tmp_path,
        url,
        targets={
            "primary": {"base_url": url, "model": "model-a"},
            "broken": {"base_url": url, "model": "fail-500"},
        },
    )
    with running(settings) as server:
        api = client(server)
        tool_turns(api, "json", stream=False)
        tool_turns(api, "stream", stream=True)
        with pytest.raises(openai_errors()):
            call(api, [SYSTEM, {"role": "user", "content": "x"}], model="broken")
        parts = [
            {"type": "text", "text": "parts "},
            {"type": "image_url", "image_url": {"url": "data:,"}},
        ]
        call(api, [{"role": "developer", "content": "dev"}, {"role": "user", "content": parts}])
        tagged = client(server, **{"X-Autoretrain-Run": "ev-run"})
        call(tagged, [SYSTEM, {"role": "user", "content": "verified"}])
        event = {"type": "verification", "event_id": "e", "score": 1.0, "passed": True}
        httpx.post(f"{server.url}/runs/ev-run/events", json=event)
    runs = landed(settings)
    assert len(runs) == 5
    days = sorted({r.day for r in runs.values()})
    archive = RunArchive(settings.paths.landing)
    with RunStore.from_settings(settings) as store:
        reports = [store.ingest_day(day, archive.files(day)) for day in days]
    assert sum(r.quarantined for r in reports) == 0
    assert sum(r.inserted for r in reports) == 5
    imaged = next(r for r in runs.values() if r.messages[0].content == "dev")
    assert imaged.messages[0].role == "system" and imaged.messages[1].content == "parts [image_url]"


def openai_errors():
    import openai

    return openai.APIStatusError


def test_the_command_serves_and_flushes_on_ctrl_c(tmp_path, upstream, monkeypatch):
    """`autoretrain gateway` as a user starts it: settings from autoretrain.yaml, a call, then
    Ctrl-C (SIGINT): the open run is in the landing zone."""
    # `make test` exports AUTORETRAIN_HOME, which would override the file's `home` here too.
    monkeypatch.delenv("AUTORETRAIN_HOME", raising=False)
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from autoretrain.settings import load_settings
    from autoretrain_tests.servers import free_port

    _, url = upstream
    port = free_port()
    config = tmp_path / "autoretrain.yaml"
    config.write_text(
        f"home: {tmp_path / 'home'}\n"
        "gateway:\n"
        f"  port: {port}\n"
        "  targets:\n"
        f"    primary: {{base_url: '{url}', model: model-a}}\n"
    )
    env = {**os.environ, "AUTORETRAIN_CONFIG": str(config)}
    env.pop("AUTORETRAIN_HOME", None)
    binary = Path(sys.executable).with_name("autoretrain")
    process = subprocess.Popen(
        [str(binary), "gateway"], env=env, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                return False

        wait_for(up, timeout_s=60, what="the gateway to start")
        api = openai_client(f"{base}/v1")
        assert call(api, [SYSTEM, {"role": "user", "content": "cli"}])["content"] == "model-a: cli"
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    settings = load_settings(config_file=config)
    [run] = landed(settings).values()
    # Written at shutdown, long before run_idle_s (300 s by default).
    assert run.messages[-1].content == "model-a: cli"


def openai_client(base_url: str):
    import openai

    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)


def test_cost_comes_from_pricing_and_is_never_a_silent_zero(tmp_path, upstream):
    _, url = upstream
    pricing = {"model-a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    settings = make_settings(tmp_path, url, pricing=pricing)
    with running(settings) as server:
        call(
            client(server, **{"X-Autoretrain-Run": "priced"}),
            [SYSTEM, {"role": "user", "content": "hi"}],
        )
        call(
            client(server, **{"X-Autoretrain-Run": "unpriced"}),
            [SYSTEM, {"role": "user", "content": "hi"}],
            model="canary",
        )
    runs = landed(settings)
    priced = runs["priced"]
    expected = (priced.usage.prompt_tokens * 1.0 + priced.usage.completion_tokens * 2.0) / 1e6
    assert priced.cost_usd == pytest.approx(expected) and expected > 0
    assert runs["unpriced"].cost_usd is None and runs["unpriced"].tags["cost"] == "unpriced_model"
