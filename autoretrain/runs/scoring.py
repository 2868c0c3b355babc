"""Scored runs: one row of metrics per run, computed in bulk from the `runs` table.

Everything here is one SQL statement over DuckDB, so scoring 200k runs costs seconds, not a
Python loop. Each row carries SCORER_VERSION: when the verifier, the judge or these formulas
change, bump it and re-score history; rows of older versions stay beside the new ones.

Definitions (each score bounded to [0, 1] by the run schema):
- `verified`, `score`: the last verification of the run (the run store's columns).
- `quality_score`: the mean score of the verifications of the last attempt — the verifier plus
  the LLM judge when one ran. NULL when the run has no verification.
- `n_turns`: assistant messages in the transcript.
- `latency_s`: as recorded, else ended_at - started_at; NULL when neither is known.
- `over_runtime_budget`, `over_token_budget`: against the gates in force when scoring (the guard
  re-checks with its own gates, so changing a budget never needs a re-score).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from autoretrain.settings import PromotionGates

# Bump when a formula here, the verifier or the judge changes meaning.
SCORER_VERSION = "scorer-1"

SCORED_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS scored_runs (
    run_id VARCHAR NOT NULL,
    day DATE NOT NULL,
    scenario_id VARCHAR,
    category VARCHAR,
    model VARCHAR,
    slot VARCHAR,
    traffic VARCHAR,
    verified BOOLEAN NOT NULL,
    score DOUBLE,
    quality_score DOUBLE,
    n_recoveries INTEGER NOT NULL,
    n_escalations INTEGER NOT NULL,
    n_turns INTEGER NOT NULL,
    latency_s DOUBLE,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cost_usd DOUBLE,
    over_runtime_budget BOOLEAN,
    over_token_budget BOOLEAN NOT NULL,
    scorer_version VARCHAR NOT NULL,
    scored_at TIMESTAMPTZ NOT NULL
)
"""

# Only the fields the formulas need: from_json with a narrow type skips the rest of the record.
_VERIFICATIONS_TYPE = '[{"score": "DOUBLE", "attempt": "BIGINT"}]'

_SCORE_SQL = f"""
WITH src AS (
    SELECT
        r.*,
        from_json(json_extract(r.record, '$.verifications'), '{_VERIFICATIONS_TYPE}') AS vs,
        json_extract_string(r.record, '$.messages[*].role') AS roles
    FROM runs r
    WHERE r.day BETWEEN $start_day AND $end_day
),
metrics AS (
    SELECT
        run_id, day, scenario_id, category, model, slot, traffic,
        coalesce(verified, false) AS verified,
        score,
        list_avg(list_transform(
            list_filter(vs, lambda v: coalesce(v.attempt, 0)
                = list_max(list_transform(vs, lambda x: coalesce(x.attempt, 0)))),
            lambda v: v.score)) AS quality_score,
        coalesce(n_recoveries, 0) AS n_recoveries,
        coalesce(n_escalations, 0) AS n_escalations,
        coalesce(len(list_filter(roles, lambda x: x = 'assistant')), 0) AS n_turns,
        coalesce(latency_s, epoch(ended_at) - epoch(started_at)) AS latency_s,
        coalesce(prompt_tokens, 0) AS prompt_tokens,
        coalesce(completion_tokens, 0) AS completion_tokens,
        cost_usd
    FROM src
)
SELECT
    run_id, day, scenario_id, category, model, slot, traffic, verified, score, quality_score,
    n_recoveries, n_escalations, n_turns, latency_s, prompt_tokens, completion_tokens,
    prompt_tokens + completion_tokens AS total_tokens,
    cost_usd,
    latency_s > $max_runtime_s AS over_runtime_budget,
    prompt_tokens + completion_tokens > $max_total_tokens AS over_token_budget,
    $scorer_version AS scorer_version,
    now() AS scored_at
FROM metrics
"""


@dataclass
class ScoreReport:
    start_day: str
    end_day: str
    scorer_version: str
    n_runs: int
    n_verified: int
    n_without_verification: int
    n_over_runtime_budget: int
    n_over_token_budget: int
    mean_score: float | None
    mean_quality_score: float | None
    runs_per_day: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_scored_runs_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCORED_RUNS_DDL)


def _require_runs_table(con: duckdb.DuckDBPyConnection) -> None:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'"
    ).fetchone()
    if not found or found[0] == 0:
        raise RuntimeError(
            "the run store has no `runs` table in this database: ingest the landing zone first "
            "(`autoretrain ingest`)"
        )


def score_days(
    con: duckdb.DuckDBPyConnection, start_day: str, end_day: str, gates: PromotionGates
) -> ScoreReport:
    """Score every run of the days start_day..end_day (inclusive), replacing those days' rows
    for the current scorer version in one transaction."""
    t0 = time.perf_counter()
    _require_runs_table(con)
    ensure_scored_runs_table(con)
    params = {
        "start_day": start_day,
        "end_day": end_day,
        "max_runtime_s": gates.max_runtime_s,
        "max_total_tokens": gates.max_total_tokens,
        "scorer_version": SCORER_VERSION,
    }
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM scored_runs WHERE day BETWEEN $start_day AND $end_day "
            "AND scorer_version = $scorer_version",
            {k: params[k] for k in ("start_day", "end_day", "scorer_version")},
        )
        con.execute(f"INSERT INTO scored_runs {_SCORE_SQL}", params)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return _report(con, start_day, end_day, time.perf_counter() - t0)


def _report(
    con: duckdb.DuckDBPyConnection, start_day: str, end_day: str, seconds: float
) -> ScoreReport:
    where = "day BETWEEN $start_day AND $end_day AND scorer_version = $v"
    params = {"start_day": start_day, "end_day": end_day, "v": SCORER_VERSION}
    row = con.execute(
        f"""SELECT count(*), count(*) FILTER (verified), count(*) FILTER (score IS NULL),
                   count(*) FILTER (over_runtime_budget), count(*) FILTER (over_token_budget),
                   avg(score), avg(quality_score)
            FROM scored_runs WHERE {where}""",
        params,
    ).fetchone()
    assert row is not None
    per_day = con.execute(
        f"SELECT strftime(day, '%Y-%m-%d'), count(*) FROM scored_runs WHERE {where} "
        "GROUP BY day ORDER BY day",
        params,
    ).fetchall()
    return ScoreReport(
        start_day=start_day,
        end_day=end_day,
        scorer_version=SCORER_VERSION,
        n_runs=row[0],
        n_verified=row[1],
        n_without_verification=row[2],
        n_over_runtime_budget=row[3],
        n_over_token_budget=row[4],
        mean_score=row[5],
        mean_quality_score=row[6],
        runs_per_day=dict(per_day),
        seconds=round(seconds, 3),
    )


def scored_metrics(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any] | None:
    """The current scorer version's metrics row for one run, as a dict (None if unscored)."""
    cur = con.execute(
        "SELECT * FROM scored_runs WHERE run_id = ? AND scorer_version = ?",
        [run_id, SCORER_VERSION],
    )
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))
