"""The review queue: runs the guard could not decide, and the human decisions that settle them.

`human_reviews` is append-only (who decided what, when, and why); the latest review of a run
wins over every automatic decision. The automatic decision in force for a run is its latest
`promotion_decisions` row, whatever scorer version wrote it, so a scorer upgrade does not empty
the training pool before history is re-decided.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import polars as pl

from autoretrain.runs.schema import Run

HUMAN_DECISIONS = ("promote", "reject")

PROMOTION_DECISIONS_DDL = """
CREATE TABLE IF NOT EXISTS promotion_decisions (
    run_id VARCHAR NOT NULL,
    day DATE NOT NULL,
    decision VARCHAR NOT NULL,
    gate VARCHAR NOT NULL,
    rationale VARCHAR NOT NULL,
    scorer_version VARCHAR NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL
)
"""

HUMAN_REVIEWS_DDL = """
CREATE TABLE IF NOT EXISTS human_reviews (
    run_id VARCHAR NOT NULL,
    decision VARCHAR NOT NULL,
    note VARCHAR NOT NULL,
    reviewer VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL
)
"""


class ReviewError(ValueError):
    """A human decision that cannot be recorded: the message says why and what to do."""


def ensure_human_reviews_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(HUMAN_REVIEWS_DDL)


def ensure_promotion_decisions_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(PROMOTION_DECISIONS_DDL)


# (run_id, day, decision, gate, rationale): one automatic decision, as the guard makes it.
DecisionRow = tuple[str, Any, str, str, str]


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }


def _effective_sql(tables: set[str]) -> str:
    """Per run: the latest automatic decision, the latest human review, and which one wins.
    Missing tables read as empty, so a fresh database has an empty queue, not an error."""
    auto = (
        "SELECT run_id, decision, gate, rationale, scorer_version, decided_at "
        "FROM promotion_decisions QUALIFY row_number() OVER "
        "(PARTITION BY run_id ORDER BY decided_at DESC, scorer_version DESC) = 1"
        if "promotion_decisions" in tables
        else "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS decision, NULL::VARCHAR AS gate, "
        "NULL::VARCHAR AS rationale, NULL::VARCHAR AS scorer_version, "
        "NULL::TIMESTAMPTZ AS decided_at WHERE false"
    )
    human = (
        "SELECT run_id, decision, note, reviewer, reviewed_at FROM human_reviews "
        "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY reviewed_at DESC, rowid DESC) = 1"
        if "human_reviews" in tables
        else "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS decision, NULL::VARCHAR AS note, "
        "NULL::VARCHAR AS reviewer, NULL::TIMESTAMPTZ AS reviewed_at WHERE false"
    )
    return f"""
    SELECT r.run_id, r.day, r.scenario_id, r.category, r.model, r.traffic, r.status,
           r.verified, r.score,
           a.decision AS auto_decision, a.gate, a.rationale, a.scorer_version, a.decided_at,
           h.decision AS human_decision, h.note, h.reviewer, h.reviewed_at,
           coalesce(h.decision, a.decision) AS decision
    FROM runs r
    LEFT JOIN ({auto}) a USING (run_id)
    LEFT JOIN ({human}) h USING (run_id)
    WHERE a.run_id IS NOT NULL OR h.run_id IS NOT NULL
    """


def review_queue(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Runs whose automatic decision is needs_human and that no human has decided yet."""
    tables = _tables(con)
    columns = (
        "run_id, strftime(day, '%Y-%m-%d') AS day, scenario_id, category, model, traffic, "
        "status, score, gate, rationale, scorer_version, decided_at"
    )
    if "runs" not in tables:
        return pl.from_arrow(
            con.sql(
                f"SELECT {columns} FROM (SELECT NULL::VARCHAR AS run_id, NULL::DATE AS day, "
                "NULL::VARCHAR AS scenario_id, NULL::VARCHAR AS category, NULL::VARCHAR AS model, "
                "NULL::VARCHAR AS traffic, NULL::VARCHAR AS status, NULL::DOUBLE AS score, "
                "NULL::VARCHAR AS gate, NULL::VARCHAR AS rationale, NULL::VARCHAR AS scorer_version, "
                "NULL::TIMESTAMPTZ AS decided_at) WHERE false"
            ).to_arrow_table()
        )
    return pl.from_arrow(
        con.sql(
            f"SELECT {columns} FROM ({_effective_sql(tables)}) "
            "WHERE auto_decision = 'needs_human' AND human_decision IS NULL ORDER BY day, run_id"
        ).to_arrow_table()
    )


def effective_decisions(
    con: duckdb.DuckDBPyConnection, start_day: str | None = None, end_day: str | None = None
) -> pl.DataFrame:
    """One row per decided run: automatic and human decisions side by side, and the winner."""
    tables = _tables(con)
    if "runs" not in tables:
        raise ReviewError("no `runs` table in this database: ingest runs first")
    return pl.from_arrow(
        con.sql(
            f"SELECT * FROM ({_effective_sql(tables)}) "
            "WHERE ($start IS NULL OR day >= $start::DATE) AND ($end IS NULL OR day <= $end::DATE) "
            "ORDER BY day, run_id",
            params={"start": start_day, "end": end_day},
        ).to_arrow_table()
    )


def promotable_run_ids(
    con: duckdb.DuckDBPyConnection, start_day: str | None = None, end_day: str | None = None
) -> list[str]:
    """Runs whose effective decision (human over automatic) is promote. Evaluation traffic is
    excluded here too, whatever anyone decided: it must never reach a training set."""
    tables = _tables(con)
    if "runs" not in tables:
        return []
    rows = con.execute(
        f"SELECT run_id FROM ({_effective_sql(tables)}) "
        "WHERE decision = 'promote' AND traffic IS DISTINCT FROM 'evaluation' "
        "AND ($start IS NULL OR day >= $start::DATE) AND ($end IS NULL OR day <= $end::DATE) "
        "ORDER BY day, run_id",
        {"start": start_day, "end": end_day},
    ).fetchall()
    return [r[0] for r in rows]


def record_review(
    con: duckdb.DuckDBPyConnection, run_id: str, decision: str, note: str, reviewer: str
) -> dict[str, Any]:
    """Append a human decision for a run; returns the stored row."""
    if decision not in HUMAN_DECISIONS:
        raise ReviewError(f"decision must be one of {HUMAN_DECISIONS}, got {decision!r}")
    if not reviewer.strip():
        raise ReviewError("a human decision needs the reviewer's name (--reviewer)")
    if "runs" not in _tables(con):
        raise ReviewError("no `runs` table in this database: ingest runs first")
    found = con.execute("SELECT traffic FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if found is None:
        raise ReviewError(
            f"run {run_id!r} is not in the run store; check the id (`autoretrain review`)"
        )
    if decision == "promote" and found[0] == "evaluation":
        raise ReviewError(
            f"run {run_id!r} is evaluation traffic: it can never be promoted into training data"
        )
    ensure_human_reviews_table(con)
    row = con.execute(
        "INSERT INTO human_reviews VALUES (?, ?, ?, ?, now()) RETURNING *",
        [run_id, decision, note, reviewer.strip()],
    )
    names = [d[0] for d in row.description]
    values = row.fetchone()
    assert values is not None
    return dict(zip(names, values, strict=True))


def load_run(con: duckdb.DuckDBPyConnection, run_id: str) -> Run:
    """A run's full record from the run store."""
    if "runs" not in _tables(con):
        raise ReviewError("no `runs` table in this database: ingest runs first")
    found = con.execute("SELECT record FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if found is None:
        raise ReviewError(
            f"run {run_id!r} is not in the run store; check the id (`autoretrain review`)"
        )
    from autoretrain.runs.validate import judge

    run, why = judge(found[0])
    if run is None:
        # Ingest stores only what the schema accepts; a store built by an older version may
        # hold records it refuses. Say so, and how to mend it, instead of a traceback.
        raise ReviewError(
            f"the stored record of run {run_id!r} does not load: {why}. It was stored by an "
            "older autoretrain; ingest its day again to quarantine it (`autoretrain ingest "
            "--date DAY`)"
        )
    return run


# -- the transcript, for a person at a terminal ---------------------------------------------


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in (text or "").splitlines() or [""])


def _arguments(raw: str) -> str:
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        return f"{raw}  (not valid JSON)"


def render_transcript(run: Run) -> str:
    """One run as plain text: header, each turn with its role, tool calls and results, then the
    verifier's verdicts, recoveries, escalations and the final answer."""
    usage = run.usage
    lines = [
        f"run {run.run_id}  ({run.traffic}, {run.status})",
        f"scenario {run.scenario_id or '-'}  category {run.category or '-'}  "
        f"model {run.model}{f' [{run.slot}]' if run.slot else ''}  agent {run.agent_version}",
        f"started {run.started_at.isoformat()}  latency "
        f"{'-' if run.latency_s is None else f'{run.latency_s:.2f}s'}  tokens "
        f"{usage.prompt_tokens}+{usage.completion_tokens}  cost "
        f"{'-' if run.cost_usd is None else f'${run.cost_usd:.4f}'}",
        "",
        "── transcript " + "─" * 50,
    ]
    call_names: dict[str, str] = {}
    for i, msg in enumerate(run.messages, start=1):
        if msg.role == "tool":
            name = msg.name or call_names.get(msg.tool_call_id or "", "?")
            lines.append(f"[{i}] tool result for {msg.tool_call_id or '(no call id)'} ({name}):")
            lines.append(_indent(msg.content or ""))
            continue
        lines.append(f"[{i}] {msg.role}:")
        if msg.content:
            lines.append(_indent(msg.content))
        for call in msg.tool_calls or []:
            call_names[call.id] = call.function.name
            lines.append(
                f"    → call {call.function.name} (id {call.id}): {_arguments(call.function.arguments)}"
            )
    if not run.messages:
        lines.append("(no messages)")
    lines += ["", "── verification " + "─" * 48]
    for v in run.verifications:
        verdict = "PASS" if v.passed else "FAIL"
        lines.append(f"attempt {v.attempt}  {v.verifier}: {verdict}  score {v.score:.2f}")
        if v.feedback:
            lines.append(_indent(v.feedback))
    if not run.verifications:
        lines.append("(no verification)")
    for r in run.recoveries:
        lines.append(f"recovery after attempt {r.attempt}: {r.action} — {r.reason}")
    for e in run.escalations:
        lines.append(f"escalated: {e.reason}")
    lines += ["", f"final answer: {run.final_answer if run.final_answer is not None else '(none)'}"]
    return "\n".join(lines)
