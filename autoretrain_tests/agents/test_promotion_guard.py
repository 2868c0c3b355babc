"""PromotionGuardAgent: gates, contradictions, the reviewer, and bulk decisions over days."""

from __future__ import annotations

import json
import random
import time

import duckdb
import pytest

from autoretrain.agents.promotion_guard import (
    GATES,
    NEEDS_HUMAN,
    PROMOTE,
    REJECT,
    PromotionGuardAgent,
    decide_days,
    first_failed_gate,
    gate_case_sql,
    gate_params,
)
from autoretrain.providers.base import ProviderError
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.runs.review import load_run
from autoretrain.runs.schema import Escalation, Message, RecoveryAction, Run, Usage, Verification
from autoretrain.runs.scoring import score_days, scored_metrics
from autoretrain.runs.store import RunStore
from autoretrain.settings import PromotionGates
from autoretrain_tests.runs.test_scoring import DAY, ingest, make_run


@pytest.fixture
def store(settings):
    run_store = RunStore.from_settings(settings)
    yield run_store
    run_store.close()


@pytest.fixture
def con(store):
    return store.con


def scored(store, runs: list[Run], gates: PromotionGates) -> list[tuple[Run, dict]]:
    """Ingest through the run store, score, and return each run as stored with its metrics."""
    ingest(store, runs)
    score_days(store.con, DAY, DAY, gates)
    return [(load_run(store.con, r.run_id), scored_metrics(store.con, r.run_id)) for r in runs]


def ask(store, run: Run, gates: PromotionGates | None = None, reviewer=None):
    gates = gates or PromotionGates()
    [(run, metrics)] = scored(store, [run], gates)
    return PromotionGuardAgent(gates, reviewer).decide(run, metrics)


def test_a_clean_verified_run_is_promoted(store):
    d = ask(store, make_run("ok"))
    assert (d.decision, d.gate) == (PROMOTE, "all_gates")


REJECTED = [
    ({"traffic": "evaluation"}, "evaluation_traffic"),
    (
        {
            "status": "failed",
            "verifications": [Verification(verifier="x", passed=False, score=0.2)],
        },
        "not_verified",
    ),
    ({"escalations": [Escalation(reason="stuck")]}, "max_escalations"),
    ({"latency_s": 500.0}, "runtime_budget"),
    ({"usage": Usage(prompt_tokens=9000, completion_tokens=10)}, "token_budget"),
    ({"category": "poetry"}, "category"),
]


def test_numeric_and_config_gates_reject(store):
    gates = PromotionGates(categories=["arithmetic"])
    runs = [make_run(f"r{i}", **overrides) for i, (overrides, _) in enumerate(REJECTED)]
    guard = PromotionGuardAgent(gates)
    decided = [guard.decide(run, m) for run, m in scored(store, runs, gates)]
    assert [(d.decision, d.gate) for d in decided] == [(REJECT, gate) for _, gate in REJECTED]
    assert all(d.rationale for d in decided)


def test_evaluation_traffic_is_rejected_even_when_perfect(store):
    d = ask(store, make_run("e", traffic="evaluation"))
    assert (d.decision, d.gate) == (REJECT, "evaluation_traffic")


def _orphan_tool() -> list[Message]:
    return [
        Message(role="user", content="2+3?"),
        Message(role="tool", tool_call_id="nobody", content="5"),
        Message(role="assistant", content="5"),
    ]


DOUBTFUL = [
    # succeeded, but the last verification failed
    (
        {"verifications": [Verification(verifier="x", passed=False, score=0.0)]},
        "status_contradiction",
    ),
    # verified, but the run failed
    ({"status": "failed"}, "status_contradiction"),
    ({"final_answer": None}, "no_final_answer"),
    ({"final_answer": "  \n"}, "no_final_answer"),
    ({"verifications": [], "status": "failed"}, "no_verification"),
    ({"messages": [Message(role="user", content="2+3?")]}, "no_assistant_turn"),
    ({"messages": _orphan_tool()}, "orphan_tool_message"),
    ({"status": "running"}, "unfinished"),
]


def test_missing_or_contradictory_data_needs_a_human(store):
    runs = [make_run(f"r{i}", **overrides) for i, (overrides, _) in enumerate(DOUBTFUL)]
    guard = PromotionGuardAgent(PromotionGates())
    decided = [guard.decide(run, m) for run, m in scored(store, runs, PromotionGates())]
    assert [(d.decision, d.gate) for d in decided] == [(NEEDS_HUMAN, g) for _, g in DOUBTFUL]


def test_a_run_with_no_timing_needs_a_human(store, con):
    ingest(store, [make_run("r")])
    # As an app that logs neither latency nor end time would store it.
    con.execute("UPDATE runs SET latency_s = NULL, ended_at = NULL")
    score_days(con, DAY, DAY, PromotionGates())
    d = PromotionGuardAgent(PromotionGates()).decide(load_run(con, "r"), scored_metrics(con, "r"))
    assert (d.decision, d.gate) == (NEEDS_HUMAN, "missing_metrics")


def test_unanswered_call_and_answer_not_last(store):
    run = make_run("r")
    unanswered = run.model_copy(update={"messages": run.messages[:3] + run.messages[4:]})
    ends_on_tool = run.model_copy(update={"messages": run.messages[:4]})
    [(a, ma), (b, mb)] = scored(
        store,
        [
            unanswered.model_copy(update={"run_id": "a"}),
            ends_on_tool.model_copy(update={"run_id": "b"}),
        ],
        PromotionGates(),
    )
    guard = PromotionGuardAgent(PromotionGates())
    assert guard.decide(a, ma).gate == "unanswered_tool_call"
    assert guard.decide(b, mb).gate == "answer_not_last"


def test_metrics_that_disagree_with_the_record_need_a_human(store):
    [(run, metrics)] = scored(store, [make_run("r")], PromotionGates())
    d = PromotionGuardAgent(PromotionGates()).decide(run, {**metrics, "verified": False})
    assert d.decision == NEEDS_HUMAN  # never promote on data that contradicts itself


def _borderline_run(run_id: str = "b") -> Run:
    return make_run(
        run_id,
        verifications=[
            Verification(verifier="x", passed=False, score=0.0, attempt=0),
            Verification(verifier="x", passed=True, score=1.0, attempt=1),
        ],
        recoveries=[RecoveryAction(attempt=1, reason="wrong")],
    )


def test_borderline_without_reviewer_follows_configuration(store):
    [(run, metrics)] = scored(store, [_borderline_run()], PromotionGates())
    d = PromotionGuardAgent(PromotionGates()).decide(run, metrics)
    assert (d.decision, d.gate, d.borderline) == (PROMOTE, "borderline", True)
    cautious = PromotionGates(borderline_without_reviewer="needs_human")
    assert PromotionGuardAgent(cautious).decide(run, metrics).decision == NEEDS_HUMAN


def test_reviewer_writes_the_rationale_for_borderline_runs_only(store):
    reply = json.dumps({"decision": "reject", "rationale": "The first attempt guessed."})
    reviewer = ScriptedModel([reply])
    [(b, mb), (ok, mok)] = scored(store, [_borderline_run(), make_run("ok")], PromotionGates())
    guard = PromotionGuardAgent(PromotionGates(), reviewer)
    d = guard.decide(b, mb)
    assert (d.decision, d.gate, d.rationale) == (REJECT, "reviewer", "The first attempt guessed.")
    assert guard.decide(ok, mok).gate == "all_gates"
    assert len(reviewer.calls) == 1  # the clean run never reached the reviewer
    prompt = reviewer.calls[0][-1]["content"]
    assert "tool result for c1" in prompt and "attempt 0" in prompt


@pytest.mark.parametrize(
    "reply",
    [
        ProviderError("endpoint down"),
        "looks fine to me",
        json.dumps({"decision": "yes please", "rationale": "x"}),
        json.dumps({"decision": "promote", "rationale": ""}),
    ],
)
def test_a_failing_reviewer_never_promotes(store, reply):
    [(run, metrics)] = scored(store, [_borderline_run()], PromotionGates())
    d = PromotionGuardAgent(PromotionGates(), ScriptedModel([reply])).decide(run, metrics)
    assert (d.decision, d.gate) == (NEEDS_HUMAN, "reviewer_failed")


def test_reviewer_cannot_promote_a_run_a_gate_rejected(store):
    reviewer = ScriptedModel([], default=json.dumps({"decision": "promote", "rationale": "ok"}))
    d = ask(store, make_run("r", escalations=[Escalation(reason="x")]), reviewer=reviewer)
    assert d.decision == REJECT and reviewer.calls == []


def test_sql_gates_agree_with_python_gates_on_random_facts():
    """The CASE run in bulk and the per-run check are one rule written twice: hold them equal."""
    rng = random.Random(7)
    con = duckdb.connect()
    gates = PromotionGates(
        min_score=0.8,
        min_quality_score=0.5,
        max_recoveries=1,
        categories=["a", "b"],
        max_runtime_s=10,
        max_total_tokens=500,
    )
    facts = []
    for _ in range(3000):
        score = rng.choice([None, 0.0, 0.5, 0.79, 0.8, 1.0])
        facts.append(
            {
                "traffic": rng.choice(["selfplay", "evaluation", "production"]),
                "category": rng.choice(["a", "b", "c", None]),
                "status": rng.choice(["succeeded", "failed", "error", "escalated", "running"]),
                "verified": score is not None and rng.random() < 0.7,
                "score": score,
                "quality_score": None if score is None else rng.choice([0.3, 0.5, 0.9]),
                "has_final_answer": rng.random() < 0.9,
                "n_turns": rng.choice([0, 1, 3]),
                "latency_s": rng.choice([None, 1.0, 10.0, 10.5]),
                "n_escalations": rng.choice([0, 0, 1]),
                "n_recoveries": rng.choice([0, 1, 2]),
                "total_tokens": rng.choice([100, 500, 501]),
            }
        )
    import polars as pl

    frame = pl.DataFrame(
        facts,
        schema={
            "traffic": pl.String,
            "category": pl.String,
            "status": pl.String,
            "verified": pl.Boolean,
            "score": pl.Float64,
            "quality_score": pl.Float64,
            "has_final_answer": pl.Boolean,
            "n_turns": pl.Int64,
            "latency_s": pl.Float64,
            "n_escalations": pl.Int64,
            "n_recoveries": pl.Int64,
            "total_tokens": pl.Int64,
        },
    ).with_row_index("i")
    con.register("facts", frame)
    sql_gates = con.execute(
        f"SELECT {gate_case_sql()} FROM facts ORDER BY i", gate_params(gates)
    ).fetchall()
    py_gates = [(g.name if (g := first_failed_gate(f, gates)) else None,) for f in facts]
    assert sql_gates == py_gates
    assert {g for (g,) in py_gates} >= {g.name for g in GATES}  # every gate was exercised


def test_each_explanation_reads_only_the_facts_its_gate_names():
    """decide_days explains each distinct combination of a gate's `reads` once and gives it to
    every run that shares it: an explanation must depend on nothing else."""
    rng = random.Random(5)
    gates = PromotionGates(categories=["a"], min_quality_score=0.5)
    for _ in range(500):
        facts = {
            "traffic": "selfplay",
            "category": rng.choice(["a", "it's", None]),
            "status": rng.choice(["succeeded", "failed", None]),
            "verified": rng.random() < 0.5,
            "score": rng.random(),
            "quality_score": rng.choice([None, 0.25]),
            "has_final_answer": True,
            "n_turns": 1,
            "latency_s": rng.uniform(0, 500),
            "n_escalations": rng.randrange(3),
            "n_recoveries": rng.randrange(4),
            "total_tokens": rng.randrange(10_000),
        }
        for gate in GATES:
            only = {fact: facts[fact] for fact in gate.reads}
            assert gate.explain(only, gates) == gate.explain(facts, gates), gate.name


def _mixed_runs(n: int, seed: int = 3) -> list[Run]:
    rng = random.Random(seed)
    kinds = [
        {},
        {},
        {"traffic": "evaluation"},
        {
            "status": "failed",
            "verifications": [Verification(verifier="x", passed=False, score=0.1)],
        },
        {"escalations": [Escalation(reason="x")]},
        {"final_answer": None},
        {"messages": _orphan_tool()},
        {
            "verifications": [
                Verification(verifier="x", passed=False, score=0.0, attempt=0),
                Verification(verifier="x", passed=True, score=1.0, attempt=1),
            ],
            "recoveries": [RecoveryAction(attempt=1, reason="wrong")],
        },
    ]
    return [make_run(f"run-{i:05d}", **rng.choice(kinds)) for i in range(n)]


def test_decide_days_matches_decide_run_by_run(store, con):
    gates = PromotionGates()
    runs = _mixed_runs(300)
    pairs = scored(store, runs, gates)
    reply = json.dumps({"decision": "promote", "rationale": "Recovered cleanly."})
    guard = PromotionGuardAgent(gates, ScriptedModel([], default=reply))
    report = decide_days(con, DAY, DAY, guard)
    stored = dict(
        (
            (r, (d, g))
            for r, d, g in con.execute(
                "SELECT run_id, decision, gate FROM promotion_decisions"
            ).fetchall()
        )
    )
    one_by_one = PromotionGuardAgent(gates, ScriptedModel([], default=reply))
    expected = {r.run_id: (x.decision, x.gate) for r, m in pairs for x in [one_by_one.decide(r, m)]}
    assert stored == expected
    assert report.n_runs == 300 and sum(report.by_decision.values()) == 300
    assert report.by_gate["reviewer"] == report.n_borderline == report.reviewer_calls
    # Only runs that cleared the fact gates had their record parsed.
    read = ("all_gates", "reviewer", "orphan_tool_message")
    assert report.n_transcripts_read == sum(report.by_gate.get(g, 0) for g in read)
    assert report.n_transcripts_read < 300
    # Re-deciding replaces the day's rows.
    decide_days(con, DAY, DAY, PromotionGuardAgent(gates))
    assert con.execute("SELECT count(*) FROM promotion_decisions").fetchone() == (300,)


def test_decide_days_refuses_unscored_runs(store, con):
    ingest(store, [make_run("a")])
    score_days(con, "2026-01-01", "2026-01-01", PromotionGates())
    with pytest.raises(RuntimeError, match="score those days first"):
        decide_days(con, DAY, DAY, PromotionGuardAgent(PromotionGates()))


def test_decisions_are_bulk(store, con):
    """bench/promotion_guard.py measures 20k runs; here a loose bound that a loop of one query
    per run, or parsing every record, would miss on this machine."""
    gates = PromotionGates()
    ingest(store, _mixed_runs(2000))
    score_days(con, DAY, DAY, gates)
    t0 = time.perf_counter()
    report = decide_days(con, DAY, DAY, PromotionGuardAgent(gates))
    assert report.n_runs == 2000
    assert time.perf_counter() - t0 < 10
