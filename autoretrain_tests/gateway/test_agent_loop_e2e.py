"""The whole loop through an agent autoretrain did not write, against a real local model.

Four processes, as in production: `autoretrain serve` (the registry's versions, from
serving.json), `autoretrain gateway` (slots resolved live from the registry, a canary share of
primary traffic), the Python reference agent (examples/python-agent: its own prompt, its own
tools, the official `openai` client, whose base URL is the only link to autoretrain), and this
process, which drives the stages through `Project` as the CLI and the loop do:

1. self-play through the agent's `POST /run`; the gateway captures each run; ingest, score,
   decide, dataset, a small LoRA candidate, registered;
2. the evaluation replay through the agent, incumbent and candidate by version id (the
   candidate on the canary slot: `autoretrain serve` serves the versions slots hold);
3. the candidate cleared into canary; with no live traffic yet its canary analysis is
   insufficient and promotion is refused (nothing is promoted on missing data);
4. the agent's ordinary traffic asks for `primary`; the gateway routes a share of it to canary,
   sticky per run, and canary analysis decides on that routed traffic alone;
5. promotion to primary: the agent's next call is served by the candidate, with no restart;
6. rollback: the agent's next call is served by the previous version.

What is tested is plumbing, not efficacy. The embedded model was taught the built-in workflow's
tools, not the reference agent's, so through the agent it almost never gets the catalog's
answers right; this test's copy of the catalog grades every scenario with `plain_answer` (a
`python` grader, as a team would plug in its own): a short answer in plain words, not a tool
call spelled out as text. That gives verified runs, a dataset and gates with something to
measure, and the lifts are loosened to "not a collapse" as in test_daemon_e2e.py; the default
gate's verdicts are tested in test_loop_e2e.py. The candidate must still beat v0 on the sampled
replay, so its data is made to teach: 400 self-play runs, text answers capped at 24 (on the
same v0, 200 uncapped runs lifted +2 and +14 points, one a rejection; 400 capped, +17, +29 and +34).

The base model is the shared loop run's `v0` (conftest's `loop_run`, which CI builds anyway);
`AUTORETRAIN_E2E_BASE_MODEL=<a bootstrapped v0 folder>` uses another one, to run this module
alone without the loop's half hour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from autoretrain.deploy.clearance import ClearanceRefused
from autoretrain.evaluation.canary import INSUFFICIENT
from autoretrain.gateway.grouping import bucket
from autoretrain.project import Project, candidate_key
from autoretrain.runs.schema import Run
from autoretrain.settings import Settings, load_settings
from autoretrain.training.bootstrap import DEMOS_FILE
from autoretrain_tests.conftest import LOOSE_LIFTS
from autoretrain_tests.gateway.conftest import landed, wait_for
from autoretrain_tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.shared_loop, pytest.mark.timeout(4800)]

ROOT = Path(__file__).resolve().parents[2]
PYTHON_AGENT = ROOT / "examples" / "python-agent" / "agent.py"
CANARY_SHARE = 0.5
# Enough self-play that the categories the base model fails through the agent (arithmetic,
# conversion, multi-step: it writes its own tool calls out as text) each leave a few verified
# runs to learn from.
SELFPLAY_RUNS = 400
MIN_CANARY_RUNS = 15
GRADER = f"{__name__}:plain_answer"


def plain_answer(answer: str, instance: object) -> tuple[bool, float, str]:
    """This test's grader: a short answer in words, not a tool call written out as text (what
    the embedded model does with tools it was never shown)."""
    text = answer.strip()
    if "<tool_call" in text or "{" in text:
        return False, 0.0, "answer in plain words, not a tool call"
    if len(text) > 60:
        return False, 0.0, "answer briefly"
    return True, 1.0, "a plain answer"


SETTINGS = """
scenarios_dir: {catalog}
gateway:
  port: {gateway_port}
  serve_url: http://127.0.0.1:{serve_port}/v1
  canary_share: {share}
  flush_interval_s: 0.1
  registry_ttl_s: 0.2
agent:
  kind: http
  url: http://127.0.0.1:{agent_port}/run
  gateway_url: http://127.0.0.1:{gateway_port}/v1
  timeout_s: 120
  concurrency: 8
selfplay:
  canary_share: 0.0
evaluation:
  instances_per_scenario: 3
dataset:
  min_examples_per_category: 1
  # Text answers pass anyway and are most of the verified runs: capped, they do not drown the
  # few runs of the categories where the candidate has something to gain.
  max_examples_per_category: 24
training:
  method: lora
  epochs: 10
  learning_rate: 0.003
  early_stopping_patience: null
"""


def graded_catalog(target: Path) -> Path:
    """The project's catalog, every `expected` replaced by this test's grader (YAML anchors
    kept, so the aliases that reuse them still resolve)."""
    shutil.copytree(ROOT / "scenarios", target)
    pattern = re.compile(r"^(\s*expected: )(&\w+ )?\{.*\}\s*$", re.MULTILINE)
    for path in target.glob("*.yaml"):
        text = path.read_text()
        path.write_text(pattern.sub(rf"\g<1>\g<2>{{kind: python, function: {GRADER}}}", text))
    return target


class Process:
    """A child process in its own session, its output in a log file; stopped with SIGTERM (so
    the gateway writes its open runs), then SIGKILL."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, url: str, timeout_s: float = 120.0, any_answer: bool = False) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited: {self.tail()}"
            try:
                if httpx.get(url, timeout=2).status_code < 500 or any_answer:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready at {url} after {timeout_s:.0f} s")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class World:
    settings: Settings
    gateway_url: str  # .../v1
    agent_url: str  # .../run
    gateway: Process
    serve_url: str  # .../v1

    @property
    def project(self) -> Project:
        return Project(self.settings)

    def gateway_slots(self) -> dict[str, str]:
        """The slots the running gateway resolves now (its own /health)."""
        base = self.gateway_url.removesuffix("/v1")
        return httpx.get(f"{base}/health", timeout=10).json()["slots"]

    def ask_agent(self, prompt: str, *, routed_to_canary: bool) -> Run:
        """The agent's ordinary work, as a team's app calls it: `POST /run` asking for
        `primary`, then a close through the run API. The run id is picked on the side of the
        canary share wanted (the gateway's sticky rule is a hash of the run id), so which
        version serves the call is known in advance."""
        while True:
            run_id = uuid.uuid4().hex
            if (bucket(run_id) < CANARY_SHARE) == routed_to_canary:
                break
        answer = httpx.post(
            self.agent_url,
            json={"prompt": prompt, "run_id": run_id, "slot": "primary"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        closed = httpx.post(
            f"{self.gateway_url}/runs/{run_id}/events",
            json={"type": "close", "event_id": f"{run_id}:close"},
            timeout=30,
        )
        assert closed.status_code == 201, closed.text
        return wait_for(
            lambda: landed(self.settings).get(run_id), timeout_s=30, what=f"run {run_id} landed"
        )

    def wait_for_serve(self, version: str) -> None:
        """`autoretrain serve` re-reads serving.json by itself: wait until it names `version`."""

        def served() -> bool:
            listed = httpx.get(f"{self.serve_url}/models", timeout=10).json()["data"]
            return version in {m["id"] for m in listed}

        wait_for(served, timeout_s=30, what=f"serve to serve {version}")

    def wait_for_gateway(self, slot: str, version: str) -> None:
        """The gateway re-reads the registry by itself (no restart): wait until it has."""
        wait_for(
            lambda: self.gateway_slots().get(slot) == version,
            timeout_s=30,
            what=f"the gateway to see {slot} = {version}",
        )


def landed_where(settings: Settings, keep, at_least: int, what: str) -> list[Run]:
    """The landed runs `keep` accepts, once there are at least `at_least` of them (the gateway
    writes a closed run at its next flush, off the agent's path)."""

    def found() -> list[Run] | None:
        runs = [run for run in landed(settings).values() if keep(run)]
        return runs if len(runs) >= at_least else None

    return wait_for(found, timeout_s=30, what=f"{at_least} of {what} captured")


def served_by(run: Run) -> set[tuple[str, str, str]]:
    """(slot, recorded model, model sent upstream) of each of the run's model calls."""
    return {
        (e.payload["slot"], e.payload["model"], e.payload["upstream_model"])
        for e in run.events
        if e.type == "model_call"
    }


@pytest.fixture(scope="module")
def base_model(request) -> Path:
    override = os.environ.get("AUTORETRAIN_E2E_BASE_MODEL")
    if override:
        return Path(override)
    loop_run = request.getfixturevalue("loop_run")
    return loop_run.home / "models" / "embedded" / "v0"


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_model) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("agent-loop")
    home = tmp / "data"
    ports = {
        "serve_port": free_port(),
        "gateway_port": free_port(),
        "agent_port": free_port(),
    }
    config = tmp / "autoretrain.yaml"
    config.write_text(
        SETTINGS.format(
            catalog=graded_catalog(tmp / "scenarios"),
            share=CANARY_SHARE,
            **ports,
        )
        + LOOSE_LIFTS
        + f"    min_canary_runs: {MIN_CANARY_RUNS}\n"
    )
    env = {
        "AUTORETRAIN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "AUTORETRAIN_CONFIG": str(config),
    }
    processes: list[Process] = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = load_settings()
        # Without its demonstrations, which a candidate's training mixes back in: the
        # candidate learns from the agent's runs alone, a signal strong enough to clear the
        # gate on a few dozen runs (the replay samples, as the agent sends no temperature).
        shutil.copytree(
            base_model,
            settings.paths.models / "embedded" / "v0",
            ignore=shutil.ignore_patterns(DEMOS_FILE),
        )
        # Registers the copy as v0 in primary (no bootstrap): serving.json now names it.
        assert Project(settings).ensure_base_model() == "v0"
        child_env = {**os.environ, **env}
        cli = [sys.executable, "-c", "from autoretrain.cli import main; main()"]
        try:
            serve = Process(
                "autoretrain serve",
                [*cli, "serve", "--port", str(ports["serve_port"])],
                child_env,
                tmp / "serve.log",
            )
            processes.append(serve)
            gateway = Process("autoretrain gateway", [*cli, "gateway"], child_env, tmp / "gw.log")
            processes.append(gateway)
            gateway_url = f"http://127.0.0.1:{ports['gateway_port']}/v1"
            # The agent knows the gateway's base URL and nothing else of autoretrain.
            agent = Process(
                "python-agent",
                [sys.executable, str(PYTHON_AGENT), "--port", str(ports["agent_port"])],
                {**os.environ, "OPENAI_BASE_URL": gateway_url, "AGENT_MAX_TURNS": "3"},
                tmp / "agent.log",
            )
            processes.append(agent)
            serve.wait_ready(f"http://127.0.0.1:{ports['serve_port']}/health")
            gateway.wait_ready(f"http://127.0.0.1:{ports['gateway_port']}/health")
            agent_url = f"http://127.0.0.1:{ports['agent_port']}/run"
            # The agent answers only POST /run: any answer to a GET says it listens.
            agent.wait_ready(agent_url, any_answer=True)
            serve_url = f"http://127.0.0.1:{ports['serve_port']}/v1"
            yield World(settings, gateway_url, agent_url, gateway, serve_url)
        finally:
            for process in reversed(processes):
                process.stop()


def test_an_outside_agent_is_self_played_gated_promoted_and_rolled_back_live(world):
    project = world.project
    settings = project.settings
    started = time.monotonic()
    assert world.gateway_slots() == {"primary": "v0"}

    # -- 1. self-play through the agent's /run, captured by the gateway, down to a candidate --
    report = project.selfplay(SELFPLAY_RUNS, progress=False, seed=1)
    assert report.finished == SELFPLAY_RUNS and report.by_status.get("error", 0) == 0, (
        report.to_dict()
    )
    assert report.by_status.get("succeeded", 0) >= 20, report.to_dict()
    for run in landed_where(settings, lambda r: True, SELFPLAY_RUNS, "the self-play runs"):
        # The gateway's record: the agent's own prompt and tools, the version that served it,
        # tokens counted by serve, and autoretrain's verdict attached through the run API.
        assert run.traffic == "selfplay" and run.scenario_id and run.instance_hash
        assert run.messages[0].content.startswith("You are the support desk")
        assert served_by(run) == {("primary", "v0", "v0")}
        assert run.usage.completion_tokens > 0 and run.cost_usd == 0
        assert run.verifications[-1].verifier == "expected:python"
    days = project.archive.days()
    ingested = project.ingest_days(days)
    assert ingested.quarantined == 0 and ingested.inserted >= SELFPLAY_RUNS
    project.score_days(days[0], days[-1])
    decided = project.decide_days(days[0], days[-1])
    dataset = project.build_training_dataset(require_runs=True)
    candidate = candidate_key(dataset.version)
    # Every example is the agent's own conversation, as the gateway captured it.
    for line in (dataset.path / "train.jsonl").read_text(encoding="utf-8-sig").splitlines():
        example = json.loads(line)
        assert example["messages"][0]["content"].startswith("You are the support desk")
        assert {t["function"]["name"] for t in example["tools"]} == {"compute", "count_words"}
    trained = project.train_candidate(dataset.path, candidate)
    with project.store(read_only=True) as store:
        registered = project.registry(store, read_only=True).get(candidate)
    assert registered.parent_version == "v0" and registered.dataset_version == dataset.version
    assert project.slot_version("primary").id == "v0"
    assert decided.by_decision.get("promote", 0) >= 20, decided.by_decision
    print(f"\n[1] self-play {report.pass_rate:.0%} verified; {decided.by_decision}")
    print(f"    {candidate} trained in {trained.metrics.get('train_seconds')} s")

    # -- 2. the replay through the agent, both versions by id --------------------------------
    # Registered, the candidate is served by its id (serving.json lists every local version),
    # though it holds no slot: the agent reaches it through the gateway by that id.
    assert world.gateway_slots().get("canary") is None
    world.wait_for_serve(candidate)
    comparison = project.evaluate_candidate(candidate, progress=False)
    failed = {g.name: f"{g.value} vs {g.threshold}: {g.detail}" for g in comparison.failed_gates}
    assert comparison.decision == "promote", failed
    gates = {g.name: g for g in comparison.reasons}
    played = Counter()
    for row in comparison.tiers:  # per tier and role (and both tiers together)
        if row["tier"] in ("in_distribution", "held_out"):
            played[row["role"]] += row["runs"]
    assert played["incumbent"] == played["candidate"] > 0, comparison.tiers
    # The agent's tokens and cost, which only the gateway saw, reach the replay's rows: the
    # cost gate judges (a local model costs $0) instead of skipping unpriced runs.
    assert all(row["tokens_per_run"] > 0 and not row["unpriced_runs"] for row in comparison.tiers)
    assert gates["cost"].passed is True, gates["cost"]
    replayed = landed_where(
        settings, lambda r: r.traffic == "evaluation", played.total(), "the replay's runs"
    )
    assert Counter(r.tags["role"] for r in replayed) == played
    for run in replayed:  # each role's calls went, by version id, to that version
        version = {"incumbent": "v0", "candidate": candidate}[run.tags["role"]]
        assert {(m, u) for _, m, u in served_by(run)} == {(version, version)}
    print(f"[2] replay: {comparison.decision}, {dict(played)} runs")

    # -- 3. no live traffic yet: the canary analysis is insufficient, promotion refused --------
    entry = project.deploy_candidate(candidate, "canary")  # cleared by its evaluation
    assert entry.to_version == candidate and entry.evaluation_id == comparison.evaluation_id
    world.wait_for_gateway("canary", candidate)
    empty = project.canary_traffic(candidate, max_rounds=0)
    assert not empty.analysis.passed and empty.runs_played == 0
    assert any(INSUFFICIENT in (g.detail or "") for g in empty.analysis.failed_gates)
    with pytest.raises(ClearanceRefused, match=INSUFFICIENT):
        project.deploy_candidate(candidate, "primary")
    assert project.slot_version("primary").id == "v0" == world.gateway_slots()["primary"]

    # -- 4. the agent's ordinary traffic, routed by the gateway's canary share -----------------
    before = set(landed(settings))
    live = project.selfplay(2 * MIN_CANARY_RUNS + 40, progress=False, seed=2)
    assert live.by_slot == {"primary": live.finished}  # the agent was told primary, always
    live_runs = landed_where(
        settings, lambda r: r.run_id not in before, live.finished, "the live runs"
    )
    assert {run.traffic for run in live_runs} == {"selfplay"}
    routed = Counter(r.slot for r in live_runs)
    assert routed["canary"] >= MIN_CANARY_RUNS and routed["primary"] >= MIN_CANARY_RUNS, routed
    for run in live_runs:  # sticky: every call of a run on one slot, the version it held
        version = {"canary": candidate, "primary": "v0"}[run.slot]
        assert served_by(run) == {(run.slot, version, version)}
        assert (bucket(run.run_id) < CANARY_SHARE) == (run.slot == "canary")
    days = project.archive.days()
    project.ingest_days(days)
    canary = project.canary_traffic(candidate, max_rounds=0)
    # Decided on the routed traffic alone: the stage played nothing of its own.
    assert canary.runs_played == 0 and canary.analysis.passed, canary.analysis.summary()
    counted = {s["slot"]: s["runs"] for s in canary.analysis.slots}
    assert counted == {"canary": routed["canary"], "primary": routed["primary"]}, counted
    sticky = world.ask_agent("What is 3 plus 4?", routed_to_canary=True)
    assert served_by(sticky) == {("canary", candidate, candidate)}
    print(f"[4] routed {dict(routed)}; {canary.analysis.summary()}")

    # -- 5. promotion: the agent's next call is served by the candidate, no restart -----------
    pid = world.gateway.proc.pid
    entry = project.deploy_candidate(candidate, "primary")
    assert entry.to_version == candidate and entry.evaluation_id == comparison.evaluation_id
    world.wait_for_gateway("primary", candidate)
    after = world.ask_agent("What is 12 plus 30?", routed_to_canary=False)
    assert served_by(after) == {("primary", candidate, candidate)}
    assert after.model == candidate and after.slot == "primary"

    # -- 6. rollback: the agent's next call is served by the previous version -----------------
    # (Canary still holds the candidate: nothing empties a slot, so a run inside the canary
    # share would still be served by it. The call asked of the agent is outside that share.)
    rolled = project.roll_back_slot("primary", reason="e2e rollback", actor="e2e")
    assert rolled.entry.to_version == "v0" and rolled.entry.from_version == candidate
    world.wait_for_gateway("primary", "v0")
    back = world.ask_agent("What is 12 plus 30?", routed_to_canary=False)
    assert served_by(back) == {("primary", "v0", "v0")}
    assert back.model == "v0"
    assert world.gateway.proc.pid == pid and world.gateway.proc.poll() is None

    with project.store(read_only=True) as store:
        ledger = store.con.execute(
            "SELECT slot, action, to_version FROM promotion_ledger ORDER BY seq"
        ).fetchall()
    assert ledger[-3:] == [
        ("canary", "promote", candidate),
        ("primary", "promote", candidate),
        ("primary", "rollback", "v0"),
    ]
    print(f"    the whole loop took {time.monotonic() - started:.0f} s")
