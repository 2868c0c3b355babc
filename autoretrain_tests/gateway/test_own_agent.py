"""Your own agent in the loop, end to end: the Python reference agent (examples/python-agent, its
own process, the official `openai` client) does self-play's work through the capture gateway
via `POST /run`; autoretrain verifies each answer and attaches the scenario, traffic,
verification and final answer to the run the gateway captured; the runs ingest cleanly. Faults
of the agent (a timeout, a 500, garbage, nothing listening) are recorded runs, counted, and
never crash self-play. The Node.js agent (examples/node-agent) is captured by its base URL
alone.

The model behind the gateway is the gateway tests' deterministic upstream (upstream.py): with
tools offered it calls the first one with the user's text, and after the tool's result it
answers `<model>: <result>`, so the reference agent's own `compute` tool decides the answer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autoretrain.project import Project
from autoretrain.runs.archive import RunArchive
from autoretrain.serve import ServerThread
from autoretrain.settings import Settings
from autoretrain_tests.gateway.conftest import landed, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON_AGENT = ROOT / "examples" / "python-agent" / "agent.py"
NODE_AGENT = ROOT / "examples" / "node-agent"
TOKEN = "agent-secret-token"
OTHERS = ("clarify", "conversion", "decline", "lookup", "multi_step", "text")


def settings_for(home: Path, upstream_url: str, **agent) -> Settings:
    return Settings(
        home=home,
        scenarios_dir=ROOT / "scenarios",
        provider="up",
        providers={"up": {"kind": "openai_compatible", "base_url": upstream_url}},
        gateway={
            "targets": {
                "primary": {"base_url": upstream_url, "model": "model-a"},
                "canary": {"base_url": upstream_url, "model": "model-b"},
            },
            "flush_interval_s": 0.05,
            "run_idle_s": 60.0,
            # The slots are fixed targets: the gateway need not re-read the registry, and in
            # this process its read-only connection would clash with ingest's writer (DuckDB
            # allows one configuration per file per process; in production they are two).
            "registry_ttl_s": 3600.0,
        },
        # Arithmetic only for the happy path's pass rate; fewer evaluation instances to
        # exclude keeps the test quick.
        selfplay={"category_weights": {**{c: 0.0 for c in OTHERS}, "arithmetic": 1.0}},
        evaluation={"instances_per_scenario": 5},
        agent=agent,
    )


@pytest.fixture(scope="module")
def gateway_settings(tmp_path_factory, upstream) -> Iterator[tuple[Settings, str]]:
    """A gateway over the upstream; yields its settings and base URL (…/v1)."""
    _, upstream_url = upstream
    settings = settings_for(tmp_path_factory.mktemp("own-agent"), upstream_url)
    with running(settings) as server:
        yield settings, server.url


@pytest.fixture(scope="module")
def python_agent(gateway_settings) -> Iterator[str]:
    """The reference agent as its own process, pointed at the gateway; yields its /run URL."""
    _, gateway_url = gateway_settings
    env = {**os.environ, "OPENAI_BASE_URL": gateway_url, "AGENT_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, str(PYTHON_AGENT), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), f"the agent did not start: {line!r}"
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def project_for(gateway_settings, url: str, **agent) -> Project:
    settings, gateway_url = gateway_settings
    block = {
        "kind": "http",
        "url": url,
        "gateway_url": gateway_url,
        "concurrency": 4,
        "timeout_s": 10,
        **agent,
    }
    return Project(settings.model_copy(update={"agent": Settings(agent=block).agent}))


def captured(settings: Settings, run_ids: set[str]) -> dict:
    """The landed runs of `run_ids`, once the gateway has written every one of them."""
    return wait_for(
        lambda: (
            found
            if run_ids <= set(found := {k: v for k, v in landed(settings).items() if k in run_ids})
            else None
        ),
        timeout_s=10,
        what=f"{len(run_ids)} runs in the landing zone",
    )


def test_selfplay_through_the_python_agent_is_captured_verified_and_ingests(
    gateway_settings, python_agent, monkeypatch
):
    monkeypatch.setenv("MY_AGENT_TOKEN", TOKEN)
    project = project_for(gateway_settings, python_agent, auth_env="MY_AGENT_TOKEN")
    before = set(landed(project.settings))
    report = project.selfplay(20, progress=False, seed=7)
    assert report.finished == 20 and report.by_slot == {"primary": 20}
    assert report.by_status["error"] == 0, report.to_dict()
    # The agent's own tool does the arithmetic: every answer checks out.
    assert report.by_status["succeeded"] == 20, report.to_dict()

    runs = wait_for(
        lambda: r if len(r := set(landed(project.settings)) - before) >= 20 else None,
        timeout_s=10,
        what="20 runs captured",
    )
    found = captured(project.settings, runs)
    assert len(found) == 20
    for run in found.values():
        # The scenario's identity and the traffic, from autoretrain through the run API.
        assert run.traffic == "selfplay" and run.category == "arithmetic"
        assert run.scenario_id and run.instance_hash and run.instance_seed is not None
        assert run.tags["selfplay_seed"] == str(run.instance_seed)
        assert run.tags["grouped_by"] == "header" and run.slot == "primary"
        # The agent's own verification, then autoretrain's, which decides.
        verifiers = [v.verifier for v in run.verifications]
        assert verifiers == ["python-agent:self-check", "expected:numeric"], verifiers
        assert run.status == "succeeded" and run.verified
        # The agent's model calls and its own tool, as the gateway saw them.
        calls = [e for e in run.events if e.type == "model_call"]
        assert len(calls) == 2 and all(c.payload["model"] == "model-a" for c in calls)
        tool_calls = [c.function.name for m in run.messages for c in m.tool_calls or []]
        assert tool_calls == ["compute"]
        assert run.messages[0].content.startswith("You are the support desk")
        assert run.final_answer and run.final_answer.startswith("model-a: ")
        assert {t["function"]["name"] for t in run.tools} == {"compute", "count_words"}

    summary = project.ingest_days(RunArchive(project.settings.paths.landing).days())
    assert summary.quarantined == 0 and summary.read >= 20


async def _slow(request):
    await asyncio.sleep(5)
    return JSONResponse({"final_answer": "late"})


async def _boom(request):
    return JSONResponse({"error": "the agent crashed"}, status_code=500)


async def _garbage(request):
    return Response("<html>not an answer</html>", media_type="text/html")


async def _wrong_shape(request):
    return JSONResponse({"answer": 42})


@pytest.fixture(scope="module")
def faulty_agents() -> Iterator[str]:
    """An HTTP server whose /run endpoints misbehave, one way each."""
    app = Starlette(
        routes=[
            Route("/slow/run", _slow, methods=["POST"]),
            Route("/boom/run", _boom, methods=["POST"]),
            Route("/garbage/run", _garbage, methods=["POST"]),
            Route("/wrong-shape/run", _wrong_shape, methods=["POST"]),
        ]
    )
    with ServerThread(app) as server:
        yield server.url.removesuffix("/v1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("path", "fault", "reason"),
    [
        ("/slow/run", "timeout", "timed out after 1 s"),
        ("/boom/run", "http_error", "answered HTTP 500"),
        ("/garbage/run", "garbage", "not JSON"),
        ("/wrong-shape/run", "garbage", "no final_answer"),
        (None, "unreachable", "unreachable"),
    ],
)
def test_agent_faults_are_recorded_counted_and_never_crash(
    gateway_settings, faulty_agents, path, fault, reason
):
    url = f"{faulty_agents}{path}" if path else f"http://127.0.0.1:{_free_port()}/run"
    project = project_for(gateway_settings, url, timeout_s=1)
    before = set(landed(project.settings))
    report = project.selfplay(3, progress=False, seed=11)
    assert report.finished == 3 and report.by_status == {"error": 3}, report.to_dict()

    def faulted() -> list | None:
        # This case's runs, by the agent's URL in their error (other tests' may be landing).
        runs = [
            r
            for k, r in landed(project.settings).items()
            if k not in before
            and any(url in str(e.payload.get("error")) for e in r.events if e.type == "error")
        ]
        return runs if len(runs) >= 3 else None

    runs = wait_for(faulted, timeout_s=10, what="3 failed runs captured")
    assert len(runs) == 3
    for run in runs:
        assert run.status == "error" and run.traffic == "selfplay" and run.scenario_id
        assert run.tags["agent_fault"] == fault
        errors = [e.payload["error"] for e in run.events if e.type == "error"]
        assert len(errors) == 1 and reason in errors[0], errors
        # The harness counts it as a provider failure: trouble never helps a candidate.
        assert errors[0].startswith("model call failed")
        assert not run.verifications
    summary = project.ingest_days(RunArchive(project.settings.paths.landing).days())
    assert summary.quarantined == 0


def test_without_a_gateway_autoretrain_records_the_runs_itself(upstream, faulty_agents, tmp_path):
    """No gateway_url: the run (here a 500 from the agent) lands through self-play's own
    writer, so nothing is lost."""
    _, upstream_url = upstream
    settings = settings_for(tmp_path, upstream_url, kind="http", url=f"{faulty_agents}/boom/run")
    report = Project(settings).selfplay(2, progress=False)
    assert report.by_status == {"error": 2}
    runs = landed(settings)
    assert len(runs) == 2
    assert all(r.tags["agent_fault"] == "http_error" for r in runs.values())
    assert all(r.traffic == "selfplay" and r.scenario_id for r in runs.values())


def test_the_node_agent_is_captured_by_its_base_url_alone(upstream, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Node.js reference agent cannot run")
    if not (NODE_AGENT / "node_modules" / "openai").exists():
        pytest.skip("examples/node-agent is not installed: run `make node-agent` (npm ci)")
    _, upstream_url = upstream
    settings = settings_for(tmp_path, upstream_url)
    questions = ["How many letters in 'hello world'?", "Count the letters of 'abc'"]
    answers = []
    # The gateway's shutdown writes the runs still open (the agent closes none: it knows
    # nothing of the run API).
    with running(settings) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.url}
        for question in questions:
            done = subprocess.run(
                ["node", str(NODE_AGENT / "agent.mjs"), question],
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            answers.append(json.loads(done.stdout))
    assert [a["tool_calls"] for a in answers] == [1, 1]
    runs = list(landed(settings).values())
    assert len(runs) == 2  # one run per question: its two calls stitched together
    for run, question, answer in zip(
        sorted(runs, key=lambda r: r.started_at), questions, answers, strict=True
    ):
        calls = [e.payload["grouped_by"] for e in run.events if e.type == "model_call"]
        assert calls == ["new", "stitched"]
        assert run.messages[1].content == question
        assert [c.function.name for m in run.messages for c in m.tool_calls or []] == [
            "letter_count"
        ]
        assert run.final_answer == answer["final_answer"] and run.traffic == "production"


def test_the_replay_plays_both_versions_through_the_agent(gateway_settings, python_agent):
    """The evaluation replay through /run: each role's runs ask the agent for that role's
    slot, land as evaluation traffic with the replay's tags, and tabulate as the built-in
    workflow's do."""
    from autoretrain.agents.http_agent import AgentSlot, HttpAgent
    from autoretrain.evaluation.harness import replay

    settings, gateway_url = gateway_settings
    project = Project(settings)
    agent = HttpAgent(python_agent, gateway_url=gateway_url, auth_env=None, concurrency=4)
    # The agent demands its token: this one sends it from the environment the test sets.
    agent.auth_env = "OWN_AGENT_REPLAY_TOKEN"
    os.environ["OWN_AGENT_REPLAY_TOKEN"] = TOKEN
    try:
        before = set(landed(settings))
        result = replay(
            AgentSlot("primary"),
            AgentSlot("canary"),
            project.catalog,
            project.replay_setup(),
            instances_per_scenario=1,
            progress=False,
            agent=agent,
        )
    finally:
        del os.environ["OWN_AGENT_REPLAY_TOKEN"]
    assert result.error is None and not result.provider_failures
    n = sum(result.instances.values())
    assert result.runs == {"incumbent": n, "candidate": n} and len(result.rows) == 2 * n
    assert {r["role"] for r in result.rows} == {"incumbent", "candidate"}
    # Arithmetic is the agent's strength; the rest fail on their verdict, not on faults.
    passed = [r for r in result.rows if r["passed"]]
    assert passed and {r["category"] for r in passed} == {"arithmetic"}
    new = wait_for(
        lambda: r if len(r := set(landed(settings)) - before) >= 2 * n else None,
        timeout_s=10,
        what="the replay's runs captured",
    )
    runs = captured(settings, new)
    assert {r.traffic for r in runs.values()} == {"evaluation"}
    by_role = {r.tags["role"]: r for r in runs.values()}
    # Each role's calls went to its own slot's target (primary: model-a, canary: model-b).
    assert by_role["incumbent"].slot == "primary" and by_role["candidate"].slot == "canary"
    assert by_role["candidate"].final_answer.startswith("model-b: ")
    assert all(r.tags["evaluation_id"] == result.evaluation_id for r in runs.values())


def test_an_agent_in_trouble_fails_the_replay(gateway_settings, faulty_agents):
    from autoretrain.agents.http_agent import AgentSlot, HttpAgent
    from autoretrain.evaluation.harness import evaluate

    settings, gateway_url = gateway_settings
    agent = HttpAgent(f"{faulty_agents}/boom/run", gateway_url=gateway_url)
    comparison = evaluate(
        AgentSlot("primary"),
        AgentSlot("canary"),
        Project(settings).catalog,
        Project(settings).replay_setup(),
        instances_per_scenario=1,
        progress=False,
        agent=agent,
    )
    assert comparison.decision == "reject"
    [why] = [g.detail for g in comparison.reasons if g.name == "evaluation_ran"]
    assert "failed at the provider" in why and "HTTP 500" in why, why
    assert agent.faults["http_error"] > 0


def test_the_run_api_takes_traffic_seed_tags_and_errors():
    """The scenario event's fields for runs autoretrain drives, and what it refuses."""
    from autoretrain.gateway.grouping import RunBook
    from autoretrain.runs.schema import Run

    book = RunBook()
    ok = {"type": "scenario", "scenario_id": "arith_add"}
    assert book.apply("r1", {**ok, "traffic": "replay"})[0] == 400
    assert book.apply("r1", {**ok, "instance_seed": "7"})[0] == 400
    assert book.apply("r1", {**ok, "instance_seed": True})[0] == 400
    assert book.apply("r1", {**ok, "tags": ["a"]})[0] == 400
    assert book.apply("r1", {"type": "error", "error": ""})[0] == 400
    event = {**ok, "instance_seed": 7, "traffic": "selfplay", "tags": {"seed": 7, "k": "v"}}
    assert book.apply("r1", event) == (201, "applied")
    assert book.apply("r1", {"type": "error", "error": "the agent timed out", "reason": "t"})[0]
    assert book.apply("r1", {"type": "close", "status": "error"})[0] == 201
    [record] = book.due(idle_s=60)
    run = Run.model_validate(record)
    assert run.traffic == "selfplay" and run.instance_seed == 7 and run.status == "error"
    assert run.tags["seed"] == "7" and run.tags["k"] == "v"
    [error] = [e for e in run.events if e.type == "error"]
    assert error.payload == {"error": "the agent timed out", "reason": "t"}
    # A run that never says what it is stays production traffic.
    book.apply("r2", ok)
    book.apply("r2", {"type": "close"})
    assert Run.model_validate(book.due(idle_s=60)[0]).traffic == "production"


def test_canary_share_sends_the_agent_to_the_canary_slot(gateway_settings, python_agent):
    """Self-play's canary share through /run: the agent is told `slot: canary` for its share,
    and the gateway serves and records those runs on canary's target."""
    os.environ["OWN_AGENT_CANARY_TOKEN"] = TOKEN
    try:
        project = project_for(gateway_settings, python_agent, auth_env="OWN_AGENT_CANARY_TOKEN")
        before = set(landed(project.settings))
        report = project.selfplay(12, progress=False, seed=5, canary_share=0.5)
    finally:
        del os.environ["OWN_AGENT_CANARY_TOKEN"]
    assert report.finished == 12 and report.by_status == {"succeeded": 12}, report.to_dict()
    assert report.by_slot["canary"] > 0 and report.by_slot["primary"] > 0

    def played() -> list | None:
        # This test's runs: other tests' runs may still be landing (an agent fault has no
        # model call, so no slot; the replay's are evaluation traffic).
        runs = [
            r
            for k, r in landed(project.settings).items()
            if k not in before and r.traffic == "selfplay" and r.slot is not None
        ]
        return runs if len(runs) >= 12 else None

    runs = wait_for(played, timeout_s=10, what="12 runs captured")
    slots = Counter(r.slot for r in runs)
    assert slots == Counter({k: v for k, v in report.by_slot.items()})
    for run in runs:
        model = {"primary": "model-a", "canary": "model-b"}[run.slot]
        assert run.model == model and run.final_answer.startswith(f"{model}: ")


def test_a_real_local_model_behind_the_gateway(tmp_path_factory, tmp_path):
    """The same loop with a real model: `autoretrain serve`'s app with the trained tiny
    tool-calling model (autoretrain_tests/providers/tiny_models.py) as the gateway's primary.
    The tiny model knows one conversation (a calculator call for 2 + 3), not the reference
    agent's tools, so its answers fail verification: what is tested is that real model output,
    the agent's handling of it, and autoretrain's verdict all land in one captured run."""
    from autoretrain.deploy.serving import ServingEntry
    from autoretrain.serve import ModelPool
    from autoretrain.serve import create_app as serve_app
    from autoretrain_tests.providers.tiny_models import cached_tool_model

    pool = ModelPool(static={"primary": ServingEntry(cached_tool_model(tmp_path_factory))})
    with ServerThread(serve_app(pool)) as serve:
        settings = settings_for(tmp_path, serve.url)
        settings.gateway.targets.pop("canary")
        settings.gateway.targets["primary"].model = "primary"
        with running(settings) as gateway:
            env = {**os.environ, "OPENAI_BASE_URL": gateway.url, "AGENT_MAX_TURNS": "2"}
            env.pop("AGENT_TOKEN", None)
            proc = subprocess.Popen(
                [sys.executable, str(PYTHON_AGENT), "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            try:
                url = proc.stdout.readline().split()[-1]
                block = {"kind": "http", "url": url, "gateway_url": gateway.url, "timeout_s": 60}
                project = Project(
                    settings.model_copy(update={"agent": Settings(agent=block).agent})
                )
                report = project.selfplay(3, progress=False, seed=3)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    assert report.finished == 3 and report.by_status["error"] == 0, report.to_dict()
    runs = list(landed(settings).values())
    assert len(runs) == 3
    for run in runs:
        assert run.traffic == "selfplay" and run.scenario_id and run.instance_hash
        calls = [e for e in run.events if e.type == "model_call"]
        assert calls and all(c.payload["http_status"] == 200 for c in calls)
        assert all(c.payload["upstream_model"] == "primary" for c in calls)
        assert run.usage.completion_tokens > 0  # generated by the model, counted by serve
        assert run.verifications[-1].verifier.startswith("expected:")
        assert run.status in {"succeeded", "failed", "escalated"}


def test_the_agents_runs_carry_the_tokens_the_gateway_counted(gateway_settings, python_agent):
    """The agent's model calls go to the gateway, not through autoretrain: the gateway answers
    the run's close with what its calls added up to, and the run autoretrain tabulates (the
    replay's rows, self-play's report) carries those tokens. The upstream has no price here, so
    the cost stays unknown (never $0)."""
    from autoretrain.agents.http_agent import HttpAgent
    from autoretrain.plugins import verifier_from_settings
    from autoretrain.runs.tracker import RunTracker

    settings, gateway_url = gateway_settings
    project = Project(settings)
    agent = HttpAgent(python_agent, gateway_url=gateway_url, auth_env="OWN_AGENT_TOTALS_TOKEN")
    os.environ["OWN_AGENT_TOTALS_TOKEN"] = TOKEN
    try:
        instances = project.catalog.eval_instances("in_distribution", 1)[:3]
        runs = list(
            agent.play(
                instances,
                tracker=RunTracker(None, model="primary", traffic="evaluation"),
                verifier=verifier_from_settings(settings),
                slot="primary",
            )
        )
    finally:
        del os.environ["OWN_AGENT_TOTALS_TOKEN"]
    assert len(runs) == 3
    captured_runs = captured(settings, {r.run_id for r in runs})
    for run in runs:
        gateway_copy = captured_runs[run.run_id]
        assert run.usage.total_tokens > 0
        assert run.usage == gateway_copy.usage  # the gateway's count, two calls each
        assert run.cost_usd is None and gateway_copy.cost_usd is None
