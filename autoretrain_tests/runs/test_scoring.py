"""Scored runs: bulk metrics per run, stamped with the scorer version, replaced per day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Escalation, Message, RecoveryAction, Run, Usage, Verification
from autoretrain.runs.scoring import SCORER_VERSION, score_days, scored_metrics
from autoretrain.runs.store import RunStore
from autoretrain.settings import PromotionGates


def ingest(store: RunStore, runs: list[Run]) -> None:
    """Runs go the way production runs go: landing-zone files, then the run store's ingest."""
    assert store.landing is not None
    archive = RunArchive(store.landing)
    archive.write(runs)
    for day in sorted({r.day for r in runs}):
        store.ingest_day(day, archive.files(day))


DAY = "2026-03-02"


def make_run(run_id: str, day: str = DAY, **overrides) -> Run:
    """A clean, verified self-play run: one tool call, its result, then the answer."""
    started = datetime.fromisoformat(f"{day}T10:00:00+00:00")
    fields = dict(
        run_id=run_id,
        scenario_id="calc-add",
        category="arithmetic",
        model="tiny",
        slot="primary",
        traffic="selfplay",
        status="succeeded",
        started_at=started,
        ended_at=started + timedelta(seconds=2),
        latency_s=2.0,
        cost_usd=0.0,
        usage=Usage(prompt_tokens=100, completion_tokens=20),
        messages=[
            Message(role="system", content="You are a calculator agent."),
            Message(role="user", content="What is 2+3?"),
            Message(
                role="assistant",
                tool_calls=[
                    {"id": "c1", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
                ],
            ),
            Message(role="tool", tool_call_id="c1", name="add", content="5"),
            Message(role="assistant", content="5"),
        ],
        verifications=[Verification(verifier="exact", passed=True, score=1.0)],
        final_answer="5",
    )
    fields.update(overrides)
    return Run(**fields)


@pytest.fixture
def store(settings):
    run_store = RunStore.from_settings(settings)
    yield run_store
    run_store.close()


@pytest.fixture
def con(store):
    return store.con


def test_metrics_per_run(store, con):
    recovered = make_run(
        "r-recovered",
        verifications=[
            Verification(verifier="exact", passed=False, score=0.0, attempt=0),
            Verification(verifier="exact", passed=True, score=1.0, attempt=1),
            Verification(verifier="judge", passed=True, score=0.6, attempt=1),
        ],
        recoveries=[RecoveryAction(attempt=1, reason="wrong sum")],
        escalations=[Escalation(reason="asked a human")],
        usage=Usage(prompt_tokens=9000, completion_tokens=500),
        latency_s=None,
        ended_at=datetime.fromisoformat(f"{DAY}T10:05:00+00:00"),
    )
    unverified = make_run("r-none", verifications=[], status="failed")
    ingest(store, [make_run("r-clean"), recovered, unverified])

    report = score_days(con, DAY, DAY, PromotionGates(max_runtime_s=120, max_total_tokens=8192))

    assert (report.n_runs, report.n_verified, report.n_without_verification) == (3, 2, 1)
    assert report.runs_per_day == {DAY: 3}
    assert report.n_over_runtime_budget == 1 and report.n_over_token_budget == 1
    clean = scored_metrics(con, "r-clean")
    assert clean is not None
    assert clean["verified"] is True and clean["score"] == 1.0 and clean["quality_score"] == 1.0
    assert (clean["n_turns"], clean["total_tokens"], clean["latency_s"]) == (2, 120, 2.0)
    assert clean["over_runtime_budget"] is False and clean["scorer_version"] == SCORER_VERSION
    m = scored_metrics(con, "r-recovered")
    assert m is not None
    # The judge's 0.6 is the last verification; quality averages the last attempt's verdicts.
    assert m["score"] == 0.6 and m["quality_score"] == pytest.approx(0.8)
    assert (m["n_recoveries"], m["n_escalations"]) == (1, 1)
    assert m["latency_s"] == 300.0 and m["over_runtime_budget"] is True
    assert m["total_tokens"] == 9500 and m["over_token_budget"] is True
    none = scored_metrics(con, "r-none")
    assert none is not None
    assert none["verified"] is False and none["score"] is None and none["quality_score"] is None


def test_rescoring_replaces_the_days_rows_and_keeps_other_versions(store, con, monkeypatch):
    ingest(store, [make_run("a"), make_run("b"), make_run("c", day="2026-03-03")])
    gates = PromotionGates()
    score_days(con, DAY, "2026-03-03", gates)
    score_days(con, DAY, DAY, gates)
    counts = con.execute(
        "SELECT strftime(day, '%Y-%m-%d'), count(*) FROM scored_runs GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert counts == [(DAY, 2), ("2026-03-03", 1)]

    import autoretrain.runs.scoring as scoring

    monkeypatch.setattr(scoring, "SCORER_VERSION", "scorer-next")
    report = scoring.score_days(con, DAY, DAY, gates)
    assert report.scorer_version == "scorer-next" and report.n_runs == 2
    versions = con.execute(
        "SELECT scorer_version, count(*) FROM scored_runs GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert versions == [(SCORER_VERSION, 3), ("scorer-next", 2)]


def test_scoring_without_a_run_store_says_what_to_do(tmp_path):
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    with pytest.raises(RuntimeError, match="autoretrain ingest"):
        score_days(con, DAY, DAY, PromotionGates())


def test_scoring_is_bulk(con):
    """20k runs score in one statement; this bounds it loosely so a per-row loop would fail.
    The rows are copies of one ingested record made in SQL (ingesting 20k would dominate)."""
    base = make_run("x").to_json()
    con.execute(
        """INSERT INTO runs
           SELECT 'run-' || i, DATE '2026-03-02', 1, 'calc-add', NULL, 'arithmetic', 'executor',
                  'v', 'local', 'tiny', 'primary', 'selfplay', 'succeeded', now(), now(),
                  1.0 + (i % 7), 0.0, 100, 20, 5, 0, 0, true, 1.0,
                  replace(?, '"run_id":"x"', '"run_id":"run-' || i || '"'), 'bulk', i, now()
           FROM range(20000) t(i)""",
        [base],
    )
    started = datetime.now(UTC)
    report = score_days(con, DAY, DAY, PromotionGates())
    assert report.n_runs == 20000 and report.n_verified == 20000
    assert (datetime.now(UTC) - started).total_seconds() < 20
