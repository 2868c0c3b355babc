"""The review queue: needs_human runs, human decisions that win, and readable transcripts."""

from __future__ import annotations

import pytest

from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
from autoretrain.runs.review import (
    ReviewError,
    effective_decisions,
    load_run,
    promotable_run_ids,
    record_review,
    render_transcript,
    review_queue,
)
from autoretrain.runs.schema import Escalation, RecoveryAction, Verification
from autoretrain.runs.scoring import score_days
from autoretrain.runs.store import RunStore
from autoretrain.settings import PromotionGates
from autoretrain_tests.runs.test_scoring import DAY, ingest, make_run

NEXT_DAY = "2026-03-03"


@pytest.fixture
def store(settings):
    run_store = RunStore.from_settings(settings)
    yield run_store
    run_store.close()


@pytest.fixture
def decided(store):
    """Four runs over two days: promoted, rejected, needs_human (no final answer), evaluation."""
    ingest(
        store,
        [
            make_run("good"),
            make_run("escalated", escalations=[Escalation(reason="stuck")]),
            make_run("no-answer", final_answer=None),
            make_run("eval", traffic="evaluation"),
            make_run("good-later", day=NEXT_DAY),
        ],
    )
    gates = PromotionGates()
    score_days(store.con, DAY, NEXT_DAY, gates)
    decide_days(store.con, DAY, NEXT_DAY, PromotionGuardAgent(gates))
    return store.con


def test_queue_lists_needs_human_runs(decided):
    queue = review_queue(decided)
    assert queue["run_id"].to_list() == ["no-answer"]
    assert queue["gate"].to_list() == ["no_final_answer"]
    assert promotable_run_ids(decided) == ["good", "good-later"]
    assert promotable_run_ids(decided, NEXT_DAY, NEXT_DAY) == ["good-later"]
    assert promotable_run_ids(decided, DAY, DAY) == ["good"]


def test_human_decisions_win_and_the_latest_counts(decided):
    record_review(decided, "no-answer", "promote", "answer is in the last turn", "ana")
    assert review_queue(decided).is_empty()
    assert "no-answer" in promotable_run_ids(decided)
    # Humans may overrule a promote, and change their mind: the latest review wins.
    record_review(decided, "good", "reject", "answer right, reasoning copied", "ana")
    assert "good" not in promotable_run_ids(decided)
    record_review(decided, "no-answer", "reject", "on second look, no", "ben")
    assert "no-answer" not in promotable_run_ids(decided)
    row = effective_decisions(decided).filter(run_id="no-answer").row(0, named=True)
    assert (row["auto_decision"], row["human_decision"], row["reviewer"]) == (
        "needs_human",
        "reject",
        "ben",
    )
    history = decided.execute("SELECT count(*) FROM human_reviews").fetchone()
    assert history == (3,)  # append-only
    # Re-deciding the day (a new scorer, say) does not undo the humans.
    decide_days(decided, DAY, DAY, PromotionGuardAgent(PromotionGates()))
    assert promotable_run_ids(decided, DAY, DAY) == []


def test_bad_human_decisions_are_refused(decided):
    with pytest.raises(ReviewError, match="not in the run store"):
        record_review(decided, "nope", "promote", "", "ana")
    with pytest.raises(ReviewError, match="evaluation traffic"):
        record_review(decided, "eval", "promote", "", "ana")
    with pytest.raises(ReviewError, match="decision must be"):
        record_review(decided, "good", "needs_human", "", "ana")
    with pytest.raises(ReviewError, match="reviewer"):
        record_review(decided, "good", "reject", "", "  ")


def test_an_empty_database_has_an_empty_queue(store):
    assert review_queue(store.con).is_empty()
    assert promotable_run_ids(store.con) == []


def test_render_transcript_shows_roles_calls_results_and_feedback(store):
    run = make_run(
        "r",
        verifications=[
            Verification(
                verifier="exact", passed=False, score=0.0, feedback="expected 5", attempt=0
            ),
            Verification(verifier="exact", passed=True, score=1.0, attempt=1),
        ],
        recoveries=[RecoveryAction(attempt=1, reason="expected 5")],
    )
    ingest(store, [run])
    text = render_transcript(load_run(store.con, "r"))
    for expected in [
        "run r  (selfplay, succeeded)",
        "[1] system:",
        "[2] user:",
        '→ call add (id c1): {"a": 2, "b": 3}',
        "[4] tool result for c1 (add):",
        "attempt 0  exact: FAIL  score 0.00",
        "    expected 5",
        "attempt 1  exact: PASS  score 1.00",
        "recovery after attempt 1: retry_with_feedback — expected 5",
        "final answer: 5",
    ]:
        assert expected in text, expected
