"""What `autoretrain loop` prints at the end: incumbent vs candidate per category, the gates,
the decision and where every artifact is."""

from __future__ import annotations

from autoretrain.cli.loop import render
from autoretrain.evaluation.compare import compare
from autoretrain.loop import IterationResult
from autoretrain_tests.evaluation.synthetic import cell


def test_the_closing_table_shows_categories_gates_decision_and_artifacts():
    rows = cell("in_distribution", "arithmetic", 400, incumbent_passes=80, candidate_passes=140)
    rows += cell("held_out", "arithmetic", 200, incumbent_passes=40, candidate_passes=40)
    comparison = compare(rows, candidate="cand-1", incumbent="v0")
    result = IterationResult(
        iteration=1,
        candidate="cand-1",
        incumbent="v0",
        decision=comparison.decision,
        comparison=comparison.to_dict(),
        canary={"passed": True, "summary": "canary not worse than primary"},
        primary="cand-1",
        seconds={"selfplay": 12.5, "train_and_evaluate": 80.0},
        artifacts={"dataset": "/data/autoretrain/20260101T000000Z"},
    )
    text = render(result)
    assert "v0 → cand-1" in text
    assert "in_distribution  arithmetic" in text and "20.0%" in text and "35.0%" in text
    assert "+15.0%" in text
    assert "[  ok] in_distribution_significance" in text
    assert "decision: promote" in text and "primary is now cand-1" in text
    assert "/data/autoretrain/20260101T000000Z" in text


def test_a_stopped_cycle_says_which_gate_and_why():
    result = IterationResult(
        iteration=2,
        incumbent="v0",
        stopped_at="regression_gate",
        reason="in_distribution_lift: 0.001",
    )
    text = render(result)
    assert "(no candidate)" in text
    assert "stopped at regression_gate: in_distribution_lift: 0.001" in text
