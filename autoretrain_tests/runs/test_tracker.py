"""RunTracker: transcript, latency, cost from the price table, and round trips."""

from __future__ import annotations

import time

import pytest

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import Run, Verification
from autoretrain.runs.tracker import RunTracker
from autoretrain.settings import Price

PRICES = PriceTable(
    prices={
        "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
        "ft:gpt-4o-mini:acme::abc123": Price(input_per_mtok=0.30, output_per_mtok=1.20),
    }
)


def test_run_records_transcript_latency_and_cost(tmp_path):
    archive = RunArchive(tmp_path)
    tracker = RunTracker(
        archive, PRICES, agent_version="1.0", provider="openai", model="gpt-4o-mini"
    )
    with tracker.start(scenario_id="calc", category="arithmetic") as active:
        active.message({"role": "user", "content": "2+2?"})
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "calc", "arguments": '{"e": "2+2"}'},
        }
        active.model_call(
            {"role": "assistant", "content": None, "tool_calls": [call]},
            prompt_tokens=1000,
            completion_tokens=100,
            latency_s=0.2,
        )
        active.tool_call("c1", "calc", '{"e": "2+2"}')
        active.tool_result("c1", "calc", "4", ok=True, duration_s=0.01)
        active.model_call(
            {"role": "assistant", "content": "4"},
            prompt_tokens=2000,
            completion_tokens=10,
            latency_s=0.1,
            model="ft:gpt-4o-mini:acme::abc123",
            agent="planner",
        )
        active.verification(Verification(verifier="exact", passed=True, score=1.0))
        time.sleep(0.02)
        finished = active.finish("succeeded", final_answer="4")
    # Mixed models: each call priced by its own entry; the fine-tune is not priced as its base.
    expected = (1000 * 0.15 + 100 * 0.60 + 2000 * 0.30 + 10 * 1.20) / 1e6
    assert finished.cost_usd == pytest.approx(expected)
    assert finished.latency_s >= 0.02
    assert finished.usage.total_tokens == 3110
    assert [m.role for m in finished.messages] == ["user", "assistant", "tool", "assistant"]
    types = [e.type for e in finished.events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.count("model_call") == 2 and "verification" in types
    (stored,) = [
        Run.model_validate_json(x) for x in archive.files(finished.day)[0].read_text().splitlines()
    ]
    assert stored == finished


def test_unpriced_model_gives_no_cost_not_zero(tmp_path):
    tracker = RunTracker([], PRICES, model="ft:gpt-4o-mini:other::zzz")
    with tracker.start() as active:
        active.model_call(None, prompt_tokens=10, completion_tokens=1, latency_s=0.1)
        active.model_call(
            None, prompt_tokens=10, completion_tokens=1, latency_s=0.1, model="gpt-4o-mini"
        )
        run = active.finish("failed")
    assert run.cost_usd is None
    assert run.tags["cost"] == "unpriced_model"
    assert tracker.sink == [run]


def test_crash_inside_the_app_still_records_the_run():
    sink: list[Run] = []
    tracker = RunTracker(sink, PRICES, model="gpt-4o-mini")
    with pytest.raises(ValueError), tracker.start(run_id="boom") as active:
        active.message({"role": "user", "content": "hi"})
        raise ValueError("tool exploded")
    (run,) = sink
    assert run.status == "error"
    assert any(e.type == "error" and "tool exploded" in e.payload["error"] for e in run.events)


def test_unknown_fields_survive_a_round_trip():
    raw = {
        "run_id": "x",
        "started_at": "2026-03-01T00:00:00Z",
        "custom_top": {"a": [1, 2]},
        "messages": [{"role": "assistant", "content": "hi", "weight": 0, "refusal": None}],
        "events": [{"type": "app_specific", "payload": {}, "span_id": "s1"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 5},
    }
    again = Run.model_validate_json(Run.model_validate(raw).to_json())
    assert again.model_extra["custom_top"] == {"a": [1, 2]}
    assert again.messages[0].model_extra["weight"] == 0
    assert again.events[0].model_extra["span_id"] == "s1"
    assert again.usage.model_extra["cached_tokens"] == 5
