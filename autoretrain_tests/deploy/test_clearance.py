"""Clearance: a deployment step re-reads its own candidate's recorded decisions before a slot
moves, whoever asked for it. Real DuckDB, real registry, real (tiny) model folders."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest

from autoretrain.deploy.clearance import ClearanceRefused, clear, save_canary_analysis
from autoretrain.evaluation.canary import CanaryAnalysis
from autoretrain.evaluation.compare import Comparison, Gate
from autoretrain.evaluation.report import save_comparison
from autoretrain.project import Project
from autoretrain.runs.store import RunStore
from autoretrain_tests.providers.tiny_models import cached_untrained_model


@pytest.fixture
def project(settings, tmp_path_factory):
    """v0 in primary; candidates A (rejected) and B (promoted) evaluated against v0."""
    model = cached_untrained_model(tmp_path_factory)
    with RunStore.from_settings(settings) as store:
        registry = Project(settings).registry(store)
        for version in ("v0", "cand-a", "cand-b"):
            folder = settings.paths.models / "embedded" / version
            shutil.copytree(model, folder)
            registry.register(version_id=version, base_model="tiny", kind="local", model_dir=folder)
        registry.promote("v0", "primary", reason="test")
        evaluate(store.con, settings, "cand-a", "reject")
        evaluate(store.con, settings, "cand-b", "promote")
    return settings


def evaluate(con, settings, candidate: str, decision: str, incumbent: str = "v0") -> str:
    gate = Gate("in_distribution_lift", decision == "promote", 0.05, 0.0, "")
    comparison = Comparison(
        candidate=candidate, incumbent=incumbent, decision=decision, reasons=[gate]
    )
    return save_comparison(con, comparison, settings.paths.reports, with_report=False)


def canary_verdict(con, candidate: str, passed: bool, at: datetime | None = None) -> None:
    analysis = CanaryAnalysis(passed=passed, reasons=[Gate("non_inferiority", passed, 0.0, 0.05)])
    if at is not None:
        analysis.created_at = at.isoformat()
    save_canary_analysis(con, candidate, "v0", analysis)


def slots_and_ledger(settings) -> tuple[dict, int]:
    with RunStore.from_settings(settings, read_only=True) as store:
        registry = Project(settings).registry(store, read_only=True)
        return registry.slots(), len(registry.ledger())


def test_a_rejected_candidate_is_refused_and_nothing_moves(project):
    before = slots_and_ledger(project)
    with pytest.raises(ClearanceRefused, match="decided 'reject'"):
        Project(project).deploy_candidate("cand-a", "canary")
    assert slots_and_ledger(project) == before


def test_the_ledger_cites_the_candidates_own_passing_evaluation(project):
    entry = Project(project).deploy_candidate("cand-b", "canary")
    with RunStore.from_settings(project, read_only=True) as store:
        decision = store.con.execute(
            "SELECT candidate, decision FROM evaluations WHERE id = ?", [entry.evaluation_id]
        ).fetchone()
    assert decision == ("cand-b", "promote")
    assert "passed the regression gate" in entry.reason


def test_an_evaluation_against_an_earlier_primary_is_stale(project):
    Project(project).deploy_candidate("cand-b", "canary")
    with RunStore.from_settings(project) as store:
        canary_verdict(store.con, "cand-b", True)
    Project(project).deploy_candidate("cand-b", "primary")
    # cand-a passes a later evaluation, but against v0, which no longer holds primary.
    with RunStore.from_settings(project) as store:
        evaluate(store.con, project, "cand-a", "promote", incumbent="v0")
    with pytest.raises(ClearanceRefused, match="primary is now cand-b"):
        Project(project).deploy_candidate("cand-a", "canary")


def test_primary_needs_canary_held_and_a_passing_analysis_made_there(project):
    with pytest.raises(ClearanceRefused, match="does not hold the canary slot"):
        Project(project).deploy_candidate("cand-b", "primary")
    Project(project).deploy_candidate("cand-b", "canary")
    with RunStore.from_settings(project) as store:
        # An analysis older than the candidate's arrival in canary says nothing about it.
        canary_verdict(store.con, "cand-b", True, at=datetime.now(UTC) - timedelta(days=1))
        with pytest.raises(ClearanceRefused, match="no canary analysis since"):
            clear(store.con, Project(project).registry(store), "cand-b", "primary")
        canary_verdict(store.con, "cand-b", False)
        with pytest.raises(ClearanceRefused, match="canary analysis failed"):
            clear(store.con, Project(project).registry(store), "cand-b", "primary")
        canary_verdict(store.con, "cand-b", True)
    entry = Project(project).deploy_candidate("cand-b", "primary")
    assert entry.to_version == "cand-b" and "canary analysis" in entry.reason
    assert slots_and_ledger(project)[0] == {"primary": "cand-b", "canary": "cand-b"}


def test_a_candidate_without_an_evaluation_is_refused(project):
    with pytest.raises(ClearanceRefused, match="no recorded evaluation"):
        Project(project).deploy_candidate("v0", "canary")


def test_the_canary_analysis_reads_only_traffic_since_both_slots_took_their_versions(project):
    from autoretrain.runs.archive import RunArchive
    from autoretrain_tests.defs.test_runs_assets import make_run

    Project(project).deploy_candidate("cand-b", "canary")
    now, before = datetime.now(UTC) + timedelta(seconds=1), datetime.now(UTC) - timedelta(hours=1)

    def runs(slot: str, model: str, n: int, passed: int, at: datetime) -> list:
        return [
            make_run(f"{slot}-{model}-{at:%H%M}-{i}", "2026-03-01", passed=i < passed).model_copy(
                update={
                    "slot": slot,
                    "model": model,
                    "started_at": at,
                    "ended_at": at + timedelta(seconds=1),
                }
            )
            for i in range(n)
        ]

    # Before the canary arrived, primary answered an easier mix: all passed. In the window the
    # canary passes 50% to primary's 40%; counting the old runs would fail it for no fault.
    RunArchive(project.paths.landing).write(
        runs("primary", "v0", 400, 400, before)
        + runs("primary", "v0", 300, 120, now)
        + runs("canary", "cand-b", 300, 150, now)
    )
    Project(project).ingest_days(RunArchive(project.paths.landing).days())
    analysis, primary = Project(project).analyze_canary("cand-b")
    assert primary == "v0"
    assert {s["slot"]: s["runs"] for s in analysis.slots} == {"primary": 300, "canary": 300}
    assert analysis.window["since"] is not None
    assert analysis.passed, analysis.summary()
