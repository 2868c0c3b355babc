"""Canary analysis: two independent proportions, non-inferiority within a margin, enough traffic.

The statistical cases use runs with exactly chosen pass counts; the end-to-end cases send
self-play traffic through the real workflow to a canary and a primary model (deterministic
reference models), land it, ingest it into DuckDB and read it back read-only.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from autoretrain.agents.verifier import VerifierAgent
from autoretrain.evaluation.canary import (
    INSUFFICIENT,
    CanaryAnalysis,
    canary_analysis,
    farrington_manning,
    load_slot_runs,
)
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Run
from autoretrain.scenarios import load_catalog
from autoretrain.selfplay import SelfPlayRunner, SlotTarget
from autoretrain.settings import EvaluationLifts
from autoretrain_tests.evaluation.test_harness import ReferenceModel

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def runs(
    slot: str,
    n: int,
    passes: int,
    *,
    category: str = "arithmetic",
    latency: float = 1.0,
    cost: float | None = 0.001,
    model: str | None = None,
    traffic: str = "selfplay",
    start: datetime = T0,
) -> list[dict]:
    """`n` runs of one slot; the first `passes` pass. Rows shaped like the `runs` table."""
    return [
        {
            "slot": slot,
            "model": model or ("v2" if slot == "canary" else "v1"),
            "traffic": traffic,
            "verified": i < passes,
            "score": 1.0 if i < passes else 0.0,
            "n_recoveries": 0 if i < passes else 1,
            "n_escalations": 0 if i < passes else int(i % 3 == 0),
            "latency_s": latency * (1 + (i % 5) / 10),
            "prompt_tokens": 200,
            "completion_tokens": 40,
            "cost_usd": cost,
            "category": category,
            "started_at": start + timedelta(seconds=i),
        }
        for i in range(n)
    ]


def both(
    n: int, canary_rate: float, primary_rate: float, categories=("arithmetic", "lookup"), **kw
):
    """`n` runs per slot, spread evenly over `categories`, at the given pass rates."""
    out = []
    per = n // len(categories)
    for category in categories:
        out += runs("canary", per, round(per * canary_rate), category=category, **kw)
        out += runs("primary", per, round(per * primary_rate), category=category, **kw)
    return out


def gate(analysis: CanaryAnalysis, name: str):
    return next(g for g in analysis.reasons if g.name == name)


# ---------------------------------------------------------------- the test itself


def _constrained_mle_z(x1, n1, x2, n2, delta):
    """The score statistic with restricted MLEs found by brute force on a fine grid."""
    p2 = np.linspace(max(0.0, -delta), min(1.0, 1.0 - delta), 400_001)
    p1 = p2 + delta
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = [
            x1 * np.log(p1) if x1 else 0.0,
            (n1 - x1) * np.log1p(-p1) if n1 - x1 else 0.0,
            x2 * np.log(p2) if x2 else 0.0,
            (n2 - x2) * np.log1p(-p2) if n2 - x2 else 0.0,
        ]
    best = int(np.nanargmax(sum(terms)))
    r1, r2 = p1[best], p2[best]
    return (x1 / n1 - x2 / n2 - delta) / math.sqrt(r1 * (1 - r1) / n1 + r2 * (1 - r2) / n2)


@pytest.mark.parametrize(
    "case",
    [
        (50, 100, 55, 100, -0.05),
        (0, 40, 0, 60, -0.02),  # both at 0%: the Wald test has no variance here
        (300, 400, 310, 500, -0.02),
        (100, 100, 98, 100, -0.05),
        (10, 200, 30, 100, -0.1),
    ],
)
def test_farrington_manning_uses_the_restricted_maximum_likelihood(case):
    z, p = farrington_manning(*case)
    assert z == pytest.approx(_constrained_mle_z(*case), abs=1e-3)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)


# ---------------------------------------------------------------- decisions


def test_an_equal_canary_passes_non_inferiority_with_enough_runs():
    analysis = canary_analysis(both(8000, 0.8, 0.8))
    assert analysis.passed, analysis.summary()
    ni = gate(analysis, "canary_non_inferiority")
    assert ni.value < 0.05 and analysis.difference["pass_rate_diff"] == 0.0
    lo, hi = analysis.difference["pass_rate_diff_ci"]
    assert -0.03 < lo < 0 < hi < 0.03
    assert {c["category"] for c in analysis.categories} == {"arithmetic", "lookup"}
    assert gate(analysis, "canary_latency").value == pytest.approx(1.0)
    assert gate(analysis, "canary_cost").value == pytest.approx(1.0)
    data = json.loads(analysis.to_json())
    assert data["passed"] is True and data["slots"][0]["slot"] == "canary"
    assert data["slots"][0]["first_run"] == T0.isoformat()


def test_a_clearly_worse_canary_fails():
    analysis = canary_analysis(both(2000, 0.6, 0.8))
    assert not analysis.passed
    failed = {g.name for g in analysis.failed_gates}
    assert {"canary_non_inferiority", "canary_category_regression"} <= failed
    assert analysis.difference["pass_rate_diff"] == pytest.approx(-0.2)
    assert analysis.difference["pass_rate_diff_ci"][1] < -0.1
    assert "regressed: arithmetic" in gate(analysis, "canary_category_regression").detail


def test_an_equal_canary_with_modest_traffic_is_not_yet_shown_non_inferior():
    # Within a 2-point margin, 600 runs per slot cannot show it; within the default 5, they can.
    assert canary_analysis(both(600, 0.8, 0.8)).passed
    analysis = canary_analysis(both(600, 0.8, 0.8), lifts=EvaluationLifts(canary_margin=0.02))
    assert not analysis.passed
    ni = gate(analysis, "canary_non_inferiority")
    assert ni.passed is False and "runs per slot would be needed" in ni.detail
    assert gate(analysis, "canary_traffic").passed is True


@pytest.mark.parametrize("canary_runs", [0, 50])
def test_too_few_canary_runs_fail_as_insufficient_traffic(canary_runs):
    records = runs("primary", 5000, 4000) + runs("canary", canary_runs, canary_runs)
    analysis = canary_analysis(records)
    assert not analysis.passed
    assert [g.name for g in analysis.reasons] == ["canary_traffic"]
    assert analysis.reasons[0].detail.startswith(INSUFFICIENT)
    assert f"canary {canary_runs} runs" in analysis.reasons[0].detail
    # The minimum is a setting.
    assert canary_analysis(records, lifts=EvaluationLifts(min_canary_runs=10)).reasons[
        0
    ].passed is (canary_runs >= 10)


def test_one_bad_category_fails_even_when_the_total_is_fine():
    records = both(8000, 0.82, 0.8, categories=("arithmetic", "lookup", "text", "conversion"))
    records = [r for r in records if not (r["slot"] == "canary" and r["category"] == "text")]
    records += runs("canary", 2000, 1400, category="text")  # 70% where primary has 80%
    analysis = canary_analysis(records)
    category = gate(analysis, "canary_category_regression")
    assert category.passed is False and "text" in category.detail


def test_slower_or_costlier_canaries_fail_and_unpriced_runs_skip_the_cost_gate():
    slow = both(8000, 0.8, 0.8)
    for r in slow:
        if r["slot"] == "canary":
            r["latency_s"] *= 2
            r["cost_usd"] *= 3
    analysis = canary_analysis(slow)
    assert {g.name for g in analysis.failed_gates} == {"canary_latency", "canary_cost"}
    unpriced = canary_analysis(both(8000, 0.8, 0.8, cost=None))
    assert unpriced.passed and gate(unpriced, "canary_cost").passed is None
    assert any("unpriced" in note for note in unpriced.notes)


def test_window_models_and_traffic_filter_the_runs():
    good = both(8000, 0.8, 0.8)
    noise = (
        runs("canary", 3000, 0, model="v0")  # an earlier canary
        + runs("canary", 3000, 0, traffic="evaluation")  # replays are not canary traffic
        + runs("canary", 3000, 0, start=T0 - timedelta(days=2))  # before the window
    )
    analysis = canary_analysis(good + noise, since=T0, canary_model="v2", primary_model="v1")
    assert analysis.passed, analysis.summary()
    assert analysis.window["canary_model"] == "v2"
    assert [s["runs"] for s in analysis.slots] == [8000, 8000]


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("scenarios")


def _self_play(settings, catalog, primary_skill, canary_skill, n):
    archive = RunArchive(settings.paths.landing)
    instances = catalog.selfplay_instances(n, seed=7)
    primary = ReferenceModel(catalog, primary_skill, "v1", salt="p", extra=instances)
    canary = ReferenceModel(catalog, canary_skill, "v2", salt="c", extra=instances)
    runner = SelfPlayRunner(
        catalog,
        catalog.registry,
        VerifierAgent(),
        archive,
        SlotTarget("primary", primary, "local"),
        canary=SlotTarget("canary", canary, "local"),
        canary_share=0.5,
        progress=False,
    )
    report = runner.run(n, seed=7, instances=instances)
    assert report.by_status["error"] == 0
    assert report.by_slot["canary"] > 0.4 * n and report.by_slot["primary"] > 0.4 * n
    return archive


def test_self_play_traffic_of_a_worse_canary_fails(settings, catalog):
    archive = _self_play(settings, catalog, 0.9, 0.3, 400)
    records = [
        Run.model_validate_json(line)
        for day in archive.days()
        for path in archive.files(day)
        for line in path.read_text().splitlines()
    ]
    analysis = canary_analysis(records, lifts=EvaluationLifts(min_canary_runs=100))
    assert not analysis.passed
    assert analysis.difference["pass_rate_diff"] < -0.4
    assert gate(analysis, "canary_non_inferiority").passed is False
    too_strict = canary_analysis(records, lifts=EvaluationLifts(min_canary_runs=1000))
    assert INSUFFICIENT in too_strict.reasons[0].detail


def test_reads_the_run_store_read_only(settings, catalog):
    import duckdb

    from autoretrain.runs.store import RunStore

    archive = _self_play(settings, catalog, 0.6, 0.6, 400)
    with RunStore.from_settings(settings) as store:
        for day in archive.days():
            store.ingest_day(day, archive.files(day))
    con = duckdb.connect(str(settings.paths.database), read_only=True)
    try:
        loaded = load_slot_runs(con, since=T0, canary_model="v2")
        from_db = canary_analysis(con, lifts=EvaluationLifts(min_canary_runs=100))
    finally:
        con.close()
    assert len(loaded) == 400 and {r.slot for r in loaded} == {"canary", "primary"}
    records = [
        Run.model_validate_json(line)
        for day in archive.days()
        for path in archive.files(day)
        for line in path.read_text().splitlines()
    ]
    from_runs = canary_analysis(records, lifts=EvaluationLifts(min_canary_runs=100))
    assert from_db.difference["pass_rate_diff"] == pytest.approx(
        from_runs.difference["pass_rate_diff"]
    )
    assert from_db.slots[0]["runs"] == from_runs.slots[0]["runs"]
    assert [c["pass_rate_diff"] for c in from_db.categories] == pytest.approx(
        [c["pass_rate_diff"] for c in from_runs.categories]
    )
