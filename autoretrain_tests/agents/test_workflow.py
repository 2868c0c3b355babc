"""The workflow's control flow, driven by a scripted model over the real catalog, tools and
verifier. Every test reads the stored record back from the landing zone."""

from __future__ import annotations

import json
import time

import pytest

from autoretrain.agents.tools import default_registry
from autoretrain.agents.verifier import VerifierAgent
from autoretrain.agents.workflow import (
    FEEDBACK_PREFIX,
    WorkflowConfig,
    agent_run,
    run_many,
    run_one,
    start_run,
)
from autoretrain.providers.base import ProviderError
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import Run
from autoretrain.runs.tracker import RunTracker
from autoretrain.scenarios import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("scenarios")


@pytest.fixture
def env(settings, catalog):
    archive = RunArchive(settings.paths.landing)
    tracker = RunTracker(archive, PriceTable.from_settings(settings), model="scripted")
    tools = catalog.registry
    return archive, tracker, tools, VerifierAgent()


def call(name: str, arguments: dict | str, call_id: str | None = "c1") -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    tc = {"type": "function", "function": {"name": name, "arguments": args}}
    if call_id is not None:
        tc["id"] = call_id
    return {"role": "assistant", "content": None, "tool_calls": [tc]}


def stored(archive: RunArchive) -> list[Run]:
    runs = []
    for day in archive.days():
        for f in archive.files(day):
            runs += [Run.model_validate_json(line) for line in f.read_text().splitlines()]
    return runs


def execute(env, instance, script, config=WorkflowConfig()) -> Run:
    archive, tracker, tools, verifier = env
    model = ScriptedModel(script)
    run = run_one(agent_run(instance, start_run(tracker, instance), tools, verifier, config), model)
    (back,) = [r for r in stored(archive) if r.run_id == run.run_id]
    return back


def test_reference_solution_succeeds_and_is_stored_whole(env, catalog):
    instance = catalog.instance("arith_add", 7)
    ref = instance.reference_messages()
    script = [m for m in ref if m["role"] == "assistant"]
    run = execute(env, instance, script)
    assert run.status == "succeeded" and run.verified
    assert [m.role for m in run.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert run.messages[3].content == ref[3]["content"]
    assert run.scenario_id == "arith_add" and run.instance_hash == instance.instance_hash
    types = [e.type for e in run.events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert {"model_call", "tool_call", "tool_result", "verification"} <= set(types)
    assert run.usage.total_tokens > 0 and run.latency_s is not None and run.cost_usd == 0.0


def test_recovered_attempt_keeps_failure_feedback_recovery_and_success_in_order(env, catalog):
    instance = catalog.instance("arith_add", 11)
    answer = instance.reference_answer
    run = execute(env, instance, ["definitely not a number", answer])
    assert run.status == "succeeded"
    assert [v.passed for v in run.verifications] == [False, True]
    assert len(run.recoveries) == 1 and run.recoveries[0].attempt == 1
    contents = [m.content for m in run.messages]
    failed = contents.index("definitely not a number")
    feedback = next(i for i, c in enumerate(contents) if c and c.startswith(FEEDBACK_PREFIX))
    assert failed < feedback < contents.index(answer)
    order = [e.type for e in run.events if e.type in ("verification", "recovery")]
    assert order == ["verification", "recovery", "verification"]


def test_exhausted_recovery_escalates_with_a_reason(env, catalog):
    run = execute(env, catalog.instance("arith_add", 3), ["no", "still no"])
    assert run.status == "escalated"
    assert "after 1 recovery" in run.escalations[0].reason


@pytest.mark.parametrize(
    "bad_call, what",
    [
        (call("calculator", "{not json"), "not valid JSON"),
        (call("rm_rf", {"path": "/"}), "not available"),
        (call("calculator", {"expression": 12}), "calculator"),
    ],
)
def test_malformed_tool_calls_become_tool_errors_the_model_reads(env, catalog, bad_call, what):
    instance = catalog.instance("arith_add", 5)
    run = execute(env, instance, [bad_call, instance.reference_answer])
    tool_msg = next(m for m in run.messages if m.role == "tool")
    assert what.lower() in tool_msg.content.lower()
    result = next(e for e in run.events if e.type == "tool_result")
    assert result.payload["ok"] is False
    assert run.status == "succeeded"


def test_tool_call_without_id_gets_one_and_the_fix_is_recorded(env, catalog):
    instance = catalog.instance("arith_add", 5)
    ref_call = instance.reference_messages()[2]["tool_calls"][0]["function"]
    no_id = call(ref_call["name"], ref_call["arguments"], call_id=None)
    run = execute(env, instance, [no_id, instance.reference_answer])
    assistant = run.messages[2]
    assert assistant.tool_calls[0].id and run.messages[3].tool_call_id == assistant.tool_calls[0].id
    assert any(e.type == "error" and "id missing" in e.payload["error"] for e in run.events)


def test_empty_reply_fails_verification_not_the_run(env, catalog):
    instance = catalog.instance("arith_add", 5)
    run = execute(env, instance, ["", instance.reference_answer])
    assert [v.passed for v in run.verifications] == [False, True]
    assert run.status == "succeeded"


def test_endless_tool_calls_are_stopped_by_the_turn_budget(env, catalog):
    instance = catalog.instance("arith_add", 5)
    loop = call("calculator", {"expression": "1 + 1"})
    archive, tracker, tools, verifier = env
    model = ScriptedModel(
        [],
        default=lambda m, t: {
            **loop,
            "tool_calls": [{**loop["tool_calls"][0], "id": f"c{len(m)}"}],
        },
    )
    run = run_one(agent_run(instance, start_run(tracker, instance), tools, verifier), model)
    assert run.status == "escalated"
    assert "turn budget" in run.escalations[0].reason
    assert len(model.calls) == instance.budgets.max_turns


def test_a_hanging_tool_times_out_and_the_run_goes_on(env, catalog):
    from autoretrain.agents.tools import Tool

    archive, tracker, tools, verifier = env
    instance = catalog.instance("arith_add", 5)
    original = tools.get("calculator")
    slow = Tool(
        name="calculator",
        description=original.description,
        parameters=original.parameters,
        function=lambda **kw: time.sleep(3) or "0",
    )
    hanging = default_registry(catalog.root / "data")
    hanging.register(slow)
    model = ScriptedModel([call("calculator", {"expression": "1 + 1"}), instance.reference_answer])
    config = WorkflowConfig(tool_timeout_s=0.2)
    run = run_one(
        agent_run(instance, start_run(tracker, instance), hanging, verifier, config), model
    )
    tool_msg = next(m for m in run.messages if m.role == "tool")
    assert "timed out" in tool_msg.content.lower()
    assert run.status == "succeeded"


def test_provider_failure_is_recorded_and_escalated(env, catalog):
    instance = catalog.instance("arith_add", 5)
    run = execute(env, instance, [ProviderError("connection refused: 127.0.0.1:9")])
    assert run.status == "error"
    assert any(e.type == "error" and "connection refused" in e.payload["error"] for e in run.events)
    assert run.escalations


def test_planner_writes_a_plan_before_execution(env, catalog):
    instance = catalog.instance("arith_add", 5)
    ref = [m for m in instance.reference_messages() if m["role"] == "assistant"]
    run = execute(env, instance, ["1. add the numbers", *ref], WorkflowConfig(planner=True))
    assert run.status == "succeeded"
    planner = [e for e in run.events if e.type == "model_call" and e.agent == "planner"]
    assert len(planner) == 1 and run.messages[2].content == "1. add the numbers"


def test_batched_driver_matches_one_at_a_time(env, catalog):
    archive, tracker, tools, verifier = env
    instances = [catalog.instance(s.id, 9) for s in catalog.train_scenarios[:12]]

    class Reference:
        """Answers each conversation with its reference solution's next assistant turn."""

        name = "reference"
        batches: list[int] = []

        def chat_batch(self, conversations, tools_, sampling):
            self.batches.append(len(conversations))
            return [self._next(c) for c in conversations]

        def chat(self, messages, tools_=None, sampling=None):
            return self._next(messages)

        def _next(self, messages):
            from autoretrain.providers.base import ChatResponse

            inst = next(i for i in instances if i.user_prompt == messages[1]["content"])
            ref = [m for m in inst.reference_messages() if m["role"] == "assistant"]
            turn = sum(1 for m in messages if m["role"] == "assistant")
            return ChatResponse(message=ref[turn], prompt_tokens=1, completion_tokens=1)

    model = Reference()
    agents = (agent_run(i, start_run(tracker, i), tools, verifier) for i in instances)
    runs = list(run_many(agents, model, batch_size=5))
    assert len(runs) == 12 and all(r.status == "succeeded" for r in runs)
    assert max(model.batches) == 5
    solo = run_one(
        agent_run(instances[0], start_run(tracker, instances[0]), tools, verifier), model
    )
    batched = next(r for r in runs if r.instance_hash == instances[0].instance_hash)
    strip = lambda r: [m.model_dump(exclude_none=True) for m in r.messages]  # noqa: E731
    assert strip(solo) == strip(batched)
