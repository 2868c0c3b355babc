"""Clearance: may this candidate move into this slot? Read from the recorded decisions only.

Automation requests a deployment once the gate checks of *that candidate's* partition passed,
but a deployment step must not trust whoever asked for it (a second candidate in flight, a run
launched by hand in the UI, a stale request). So before any slot moves, the step re-reads its
own candidate's records in the store and refuses unless they say yes:

- canary: the candidate's latest evaluation decided `promote`, against the version that holds
  primary now (an evaluation against an earlier primary is stale);
- primary: the same, the candidate holds the canary slot, and its latest canary analysis,
  made while it held canary, passed.

The ledger entry then cites the evaluation that cleared it, never another candidate's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CANARY_ANALYSES_DDL = """
CREATE TABLE IF NOT EXISTS canary_analyses (
    candidate VARCHAR NOT NULL,
    primary_model VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    passed BOOLEAN NOT NULL,
    summary JSON NOT NULL
)
"""


class ClearanceRefused(RuntimeError):
    """The candidate's own records do not allow the move; nothing was changed."""


@dataclass(frozen=True)
class Clearance:
    candidate: str
    slot: str
    evaluation_id: str
    reason: str


@dataclass(frozen=True)
class EvaluationRecord:
    evaluation_id: str
    incumbent: str
    decision: str
    created_at: datetime


@dataclass(frozen=True)
class CanaryRecord:
    passed: bool
    primary_model: str | None
    created_at: datetime
    summary: str


def _has_table(con: Any, name: str) -> bool:
    query = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?"
    return bool(con.execute(query, [name]).fetchone()[0])


def latest_evaluation(con: Any, candidate: str) -> EvaluationRecord | None:
    """The candidate's most recent regression-gate evaluation."""
    if not _has_table(con, "evaluations"):
        return None
    row = con.execute(
        "SELECT id, incumbent, decision, created_at FROM evaluations WHERE candidate = ? "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        [candidate],
    ).fetchone()
    return EvaluationRecord(*row) if row else None


def save_canary_analysis(
    con: Any, candidate: str, primary_model: str | None, analysis: Any
) -> None:
    """Record a canary analysis of `candidate` (append-only: the latest one counts)."""
    con.execute(CANARY_ANALYSES_DDL)
    con.execute(
        "INSERT INTO canary_analyses VALUES (?, ?, ?, ?, ?)",
        [
            candidate,
            primary_model,
            datetime.fromisoformat(analysis.created_at),
            bool(analysis.passed),
            json.dumps({"summary": analysis.summary(), **analysis.to_dict()}),
        ],
    )


def latest_canary_analysis(con: Any, candidate: str) -> CanaryRecord | None:
    if not _has_table(con, "canary_analyses"):
        return None
    row = con.execute(
        "SELECT passed, primary_model, created_at, summary->>'summary' FROM canary_analyses "
        "WHERE candidate = ? ORDER BY created_at DESC LIMIT 1",
        [candidate],
    ).fetchone()
    return CanaryRecord(*row) if row else None


def clear(con: Any, registry: Any, candidate: str, slot: str) -> Clearance:
    """Clearance for `candidate` to enter `slot`, or ClearanceRefused saying why."""
    if slot not in ("canary", "primary"):
        raise ClearanceRefused(f"automation deploys to canary or primary, not {slot!r}")
    slots = registry.slots()
    primary = slots.get("primary")
    evaluation = latest_evaluation(con, candidate)
    if evaluation is None:
        raise ClearanceRefused(f"{candidate} has no recorded evaluation: the gate has not run")
    if evaluation.decision != "promote":
        raise ClearanceRefused(
            f"{candidate}'s evaluation {evaluation.evaluation_id} decided "
            f"{evaluation.decision!r}: the regression gate did not pass it"
        )
    if primary != evaluation.incumbent and primary != candidate:
        raise ClearanceRefused(
            f"{candidate} was evaluated against {evaluation.incumbent}, but primary is now "
            f"{primary}: evaluate it again before it moves"
        )
    if slot == "canary":
        return Clearance(
            candidate,
            slot,
            evaluation.evaluation_id,
            f"passed the regression gate ({evaluation.evaluation_id})",
        )
    if slots.get("canary") != candidate:
        raise ClearanceRefused(
            f"{candidate} does not hold the canary slot (canary: {slots.get('canary')}): "
            "it must pass canary analysis there first"
        )
    canary = latest_canary_analysis(con, candidate)
    entered = _entered_canary(registry, candidate)
    if canary is None or (entered is not None and canary.created_at < entered):
        raise ClearanceRefused(f"{candidate} has no canary analysis since it entered canary")
    if not canary.passed:
        raise ClearanceRefused(f"{candidate}'s canary analysis failed: {canary.summary}")
    return Clearance(
        candidate,
        slot,
        evaluation.evaluation_id,
        f"passed the regression gate ({evaluation.evaluation_id}) and canary analysis",
    )


def _entered_canary(registry: Any, candidate: str) -> datetime | None:
    for entry in registry.ledger(slot="canary"):  # newest first
        if entry.to_version == candidate:
            return entry.at
    return None
