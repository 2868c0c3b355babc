"""The promotion decision on synthetic paired results."""

from __future__ import annotations

import json
import math

import pytest

from autoretrain.evaluation.compare import binomial_cdf_half, compare, mcnemar
from autoretrain.settings import EvaluationLifts
from autoretrain_tests.evaluation.synthetic import cell, evaluation

LIFTS = EvaluationLifts(min_lift=0.03)  # significance 0.05, held-out 0.02, category 0.05


def decide(rows, **kw):
    return compare(
        rows, candidate="cand", incumbent="inc", lifts=LIFTS, bootstrap_samples=400, **kw
    )


def gate(comparison, name):
    return next(g for g in comparison.reasons if g.name == name)


def test_clearly_better_candidate_is_promoted():
    c = decide(evaluation(ind=(100, 160), held=(100, 104)))
    assert c.decision == "promote", [g for g in c.reasons if g.passed is False]
    lift = gate(c, "in_distribution_lift")
    assert lift.value == pytest.approx(0.30) and lift.threshold == 0.03
    assert gate(c, "in_distribution_significance").value < 1e-10
    ind = next(p for p in c.paired if p["tier"] == "in_distribution" and p["category"] == "*")
    assert ind["instances"] == 400 and ind["candidate_better"] == 120
    lo, hi = ind["pass_rate_diff_ci"]
    assert lo < 0.30 < hi and lo > 0.2


def test_clearly_worse_candidate_is_rejected():
    c = decide(evaluation(ind=(160, 100), held=(160, 100)))
    assert c.decision == "reject"
    assert gate(c, "in_distribution_lift").passed is False
    assert gate(c, "held_out_regression").passed is False


def test_identical_candidate_is_rejected_for_no_lift():
    c = decide(evaluation(ind=(120, 120), held=(120, 120)))
    assert c.decision == "reject"
    assert gate(c, "in_distribution_lift").value == 0.0
    assert gate(c, "in_distribution_significance").value == 1.0
    # everything else is fine: the missing lift alone rejects it
    assert {g.name for g in c.failed_gates} == {
        "in_distribution_lift",
        "in_distribution_significance",
    }


def test_empty_evaluation_is_rejected():
    c = decide([])
    assert c.decision == "reject"
    assert gate(c, "non_empty").passed is False


def test_failed_evaluation_is_rejected_with_its_reason():
    c = decide(evaluation(), error="candidate server did not start")
    assert c.decision == "reject" and "did not start" in c.reasons[0].detail


def test_one_broken_category_rejects_an_overall_improvement():
    rows = cell("in_distribution", "calc", 200, incumbent_passes=100, candidate_passes=180)
    rows += cell("in_distribution", "convert", 200, incumbent_passes=100, candidate_passes=80)
    rows += cell("held_out", "calc", 200, incumbent_passes=100, candidate_passes=100)
    c = decide(rows)
    assert gate(c, "in_distribution_lift").passed and gate(c, "in_distribution_significance").passed
    broken = gate(c, "category_regression")
    assert broken.passed is False and broken.value == pytest.approx(-0.10)
    assert "in_distribution/convert" in broken.detail
    assert c.decision == "reject"


def test_held_out_regression_rejects_an_in_distribution_lift():
    c = decide(evaluation(ind=(100, 160), held=(100, 94)))  # -3 points on held-out
    assert gate(c, "in_distribution_lift").passed
    assert gate(c, "held_out_regression").passed is False
    assert gate(c, "held_out_regression").value == pytest.approx(-0.03)
    assert gate(c, "category_regression").passed  # within the category epsilon
    assert c.decision == "reject"


def test_partial_evaluation_is_rejected():
    rows = evaluation()
    dropped = rows.pop(5)
    assert dropped["role"] == "candidate"
    c = decide(rows)
    assert c.decision == "reject"
    assert gate(c, "paired").passed is False and "only by incumbent" in gate(c, "paired").detail


def test_missing_tier_is_rejected():
    rows = [r for r in evaluation() if r["tier"] == "in_distribution"]
    c = decide(rows)
    assert c.decision == "reject" and "held_out" in gate(c, "tiers_present").detail


def test_bad_rows_are_rejected_with_where_and_what():
    rows = evaluation()
    rows[3] = {**rows[3], "tier": "train"}
    del rows[8]["latency_s"]
    c = decide(rows)
    detail = gate(c, "valid_rows").detail
    assert (
        c.decision == "reject"
        and "row 3: tier 'train'" in detail
        and "row 8: missing latency_s" in detail
    )


def test_mcnemar_matches_known_values():
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, airway example:
    # discordant pairs 1 and 7 -> exact p = 0.070, mid-p = 0.039.
    exact, mid = mcnemar(1, 7)
    assert exact == pytest.approx(18 / 256) and mid == pytest.approx(10 / 256)
    assert round(exact, 3) == 0.070 and round(mid, 3) == 0.039
    assert mcnemar(7, 1) == mcnemar(1, 7)
    assert mcnemar(5, 5) == (1.0, 1.0)
    assert mcnemar(0, 0) == (1.0, 1.0)
    # Large counts stay exact and finite (normal approximation: z = 6.3 -> p ~ 2.5e-10).
    exact, _ = mcnemar(400, 600)
    assert 1e-12 < exact < 1e-9 and binomial_cdf_half(500, 1000) == pytest.approx(
        0.5 + math.comb(1000, 500) / 2**1001
    )


def test_repeated_samples_count_distinct_instances():
    # 20 instances x 5 identical samples: the candidate is better on 8 *instances*, not 40 runs.
    rows = cell("in_distribution", "calc", 20, incumbent_passes=4, candidate_passes=12, samples=5)
    rows += cell("held_out", "calc", 20, incumbent_passes=10, candidate_passes=10, samples=5)
    c = decide(rows)
    ind = next(p for p in c.paired if p["tier"] == "in_distribution" and p["category"] == "*")
    assert (
        ind["instances"] == 20 and ind["runs_per_model"] == 100 and ind["samples_per_instance"] == 5
    )
    assert ind["candidate_better"] == 8 and ind["incumbent_better"] == 0
    assert ind["p_value_exact"] == pytest.approx(2 / 2**8)
    assert any("distinct instances" in n for n in c.notes)
    assert any("fewer than 30 distinct instances" in n for n in c.notes)


def test_latency_over_budget_is_rejected():
    c = decide(evaluation(latency=(1.0, 2.0)))
    assert gate(c, "latency").passed is False and gate(c, "latency").value == pytest.approx(2.0)
    assert c.decision == "reject"


def test_cost_gate_enforced_when_priced_and_skipped_with_a_note_when_not():
    priced = decide(evaluation(cost=(0.001, 0.002)))
    assert gate(priced, "cost").passed is False and priced.decision == "reject"
    unpriced = decide(evaluation(cost=(0.001, None)))
    assert gate(unpriced, "cost").passed is None and unpriced.decision == "promote"
    assert any("cost gate skipped" in n for n in unpriced.notes)


def test_stricter_environment_layer_changes_the_decision(settings):
    layered = settings.model_copy(
        update={
            "lifts": {"default": {"min_lift": 0.03}, "environments": {"local": {"min_lift": 0.5}}}
        }
    )
    c = compare(
        evaluation(),
        candidate="c",
        incumbent="i",
        lifts=layered.evaluation_lifts(),
        bootstrap_samples=200,
    )
    assert c.decision == "reject" and gate(c, "in_distribution_lift").threshold == 0.5


def test_seeded_bootstrap_is_reproducible_and_json_clean():
    a = decide(evaluation(), seed=7).to_dict()
    b = decide(evaluation(), seed=7).to_dict()
    a.pop("created_at"), b.pop("created_at")
    assert a == b
    json.dumps(a, allow_nan=False)
    tiers = {(t["tier"], t["role"]) for t in decide(evaluation()).tiers}
    assert ("all", "candidate") in tiers and ("held_out", "incumbent") in tiers


def test_accepts_a_polars_frame_from_the_harness():
    import polars as pl

    rows = evaluation()
    from_frame = decide(pl.DataFrame(rows)).to_dict()
    from_rows = decide(rows).to_dict()
    from_frame.pop("created_at"), from_rows.pop("created_at")
    assert from_frame == from_rows and from_frame["decision"] == "promote"
