from __future__ import annotations

import json

from autoretrain.curation.examples import Example, Exclusion, failed_turns, run_to_example
from autoretrain.curation.redact import Redactor
from autoretrain.curation.validate import validate_record
from autoretrain.runs.schema import Verification

from .factories import CALCULATOR, LOOKUP, call, make_run, recovered, solved


def _example(run, limit: int = 4000, redactor: Redactor | None = None) -> Example:
    result = run_to_example(run, limit, redactor)
    assert isinstance(result, Example), result
    assert validate_record(result.record) == []
    return result


def _excluded(run) -> Exclusion:
    result = run_to_example(run, 4000)
    assert isinstance(result, Exclusion), result
    return result


def test_solved_run_becomes_openai_chat_example():
    record = _example(make_run("r1", solved(2, 3))).record
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    calling = record["messages"][2]
    assert "content" not in calling
    assert calling["tool_calls"][0]["id"] == "call_0"
    assert json.loads(calling["tool_calls"][0]["function"]["arguments"]) == {"expression": "2 + 3"}
    assert record["messages"][3] == {"role": "tool", "tool_call_id": "call_0", "content": "5"}
    assert [m["weight"] for m in record["messages"] if m["role"] == "assistant"] == [1, 1]
    assert record["tools"] == [CALCULATOR]


def test_turns_of_a_failed_then_recovered_attempt_get_weight_zero():
    record = _example(make_run("r1", recovered(7, 5))).record
    weights = [(m.get("content"), m["weight"]) for m in record["messages"] if "weight" in m]
    assert weights == [(None, 0), ("2", 0), (None, 1), ("12", 1)]
    # The feedback stays in the conversation, as context for the recovered turns.
    assert record["messages"][5]["content"].startswith("Verification failed:")


def test_explicit_attempt_field_wins_over_the_transcript_rule():
    messages = solved(2, 3)
    # Another app's record: an extra assistant turn before the feedback-less retry, tagged.
    messages[2]["attempt"] = 0
    messages[4]["attempt"] = 1
    run = make_run(
        "r1",
        messages,
        verifications=[
            Verification(verifier="v", passed=False, score=0.0, attempt=0),
            Verification(verifier="v", passed=True, score=1.0, attempt=1),
        ],
    )
    assert failed_turns(run) == {2}


def test_a_failed_final_attempt_is_not_zeroed_when_a_human_approved_it():
    messages = solved(2, 3)
    run = make_run(
        "r1", messages, verifications=[Verification(verifier="v", passed=False, score=0)]
    )
    assert failed_turns(run) == set()


def test_run_without_transcript_is_excluded():
    assert _excluded(make_run("r1", [])).reason == "no_transcript"


def test_tool_message_with_no_call_is_excluded():
    messages = solved(2, 3)
    messages.insert(2, {"role": "tool", "tool_call_id": "call_9", "content": "5"})
    exclusion = _excluded(make_run("r1", messages))
    assert exclusion.reason == "orphan_tool_message"
    assert "call_9" in exclusion.detail


def test_assistant_turn_with_neither_content_nor_calls_is_excluded():
    messages = solved(2, 3)
    messages[-1] = {"role": "assistant", "content": "  "}
    assert _excluded(make_run("r1", messages)).reason == "empty_assistant_turn"


def test_unanswered_call_undeclared_tool_and_bad_arguments_are_excluded():
    unanswered = solved(2, 3)
    del unanswered[3]
    assert _excluded(make_run("a", unanswered)).reason == "unanswered_tool_call"
    undeclared = solved(2, 3)
    undeclared[2]["tool_calls"] = [call("call_0", "x", name="shell")]
    assert _excluded(make_run("b", undeclared)).reason == "undeclared_tool"
    bad_json = solved(2, 3)
    bad_json[2]["tool_calls"][0]["function"]["arguments"] = '{"expression": "2 + 3"'
    assert _excluded(make_run("c", bad_json)).reason == "invalid_tool_arguments"
    not_object = solved(2, 3)
    not_object[2]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"
    assert _excluded(make_run("d", not_object)).reason == "invalid_tool_arguments"


def test_lone_surrogates_are_replaced_and_counted():
    messages = solved(2, 3)
    messages[1]["content"] = "What is 2 plus 3? \ud800"
    messages[3]["content"] = "5 \udfff"
    example = _example(make_run("r1", messages))
    text = json.dumps(example.record, ensure_ascii=False)
    text.encode("utf-8")  # writable
    assert "\ufffd" in text
    assert example.cleaned["invalid_unicode"] == 2


def test_huge_tool_output_is_truncated_with_a_visible_marker():
    messages = solved(2, 3, tool_output="5" + "x" * 50_000)
    example = _example(make_run("r1", messages), limit=100)
    content = example.record["messages"][3]["content"]
    assert content.startswith("5xxx")
    assert content.endswith("[truncated 49901 characters]")
    assert len(content) < 200
    assert example.cleaned["truncated_tool_output"] == 1


def test_secrets_in_tool_output_and_arguments_are_scrubbed_before_truncation():
    key = "sk-proj-" + "A1b2C3d4" * 5
    messages = solved(2, 3, tool_output="x" * 90 + f" token={key} and more")
    messages[2]["tool_calls"][0]["function"]["arguments"] = json.dumps(
        {"expression": "2 + 3", "api_key": "hunter2!", "note": f"use {key}"}
    )
    redactor = Redactor()
    example = _example(make_run("r1", messages), limit=100, redactor=redactor)
    text = json.dumps(example.record)
    assert key[:12] not in text and "hunter2" not in text
    arguments = json.loads(example.record["messages"][2]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {
        "expression": "2 + 3",
        "api_key": "[REDACTED:named_secret]",
        "note": "use [REDACTED:openai_key]",
    }
    # The key in the tool output is caught by its shape first, so its name does not count again.
    assert redactor.counts == {"openai_key": 2, "named_secret": 1}


def test_planner_turn_is_merged_into_the_executor_turn():
    messages = solved(2, 3)
    messages.insert(2, {"role": "assistant", "content": "1. add the numbers"})
    record = _example(make_run("r1", messages)).record
    merged = record["messages"][2]
    assert merged["content"] == "1. add the numbers"
    assert merged["tool_calls"][0]["id"] == "call_0"


def test_tools_are_sorted_and_runs_without_a_scenario_split_by_prompt():
    run = make_run("r1", tools=[LOOKUP, CALCULATOR], scenario_id=None)
    example = _example(run)
    assert [t["function"]["name"] for t in example.record["tools"]] == ["calculator", "lookup"]
    assert example.split_key.startswith("prompt:")
    assert _example(make_run("r2", scenario_id=None)).split_key == example.split_key
