"""PromotionGuardAgent: decides whether a run becomes training data.

A run is `promote`d only when every gate passes; `reject` when it clearly fails one; and
`needs_human` when its data is missing or contradicts itself (a person looks at it in
`autoretrain review`). The first gate that fails decides, and the decision names it.

Gates come in two kinds, checked in this order:
- fact gates (GATES), on columns of `runs` and `scored_runs`: for a day range they run as one
  SQL CASE over every run, so most runs are decided without parsing their record; one run is
  checked in Python. Each gate's condition is written once (a `Condition`), and both its SQL
  and its Python check are read off it;
- transcript gates, in Python, for the runs that cleared every fact gate: the transcript must
  hold together (every tool message answers a call, every call is answered, it ends on an answer).

A borderline run (cleared everything, but only just) goes to the optional LLM reviewer, which may
promote it, reject it or ask for a human, and writes the rationale. A reviewer that fails or
answers nonsense makes the run needs_human: its failure never promotes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from autoretrain.providers.base import ChatModel, Sampling
from autoretrain.runs.review import (
    DecisionRow,
    ensure_promotion_decisions_table,
    render_transcript,
    replace_decisions,
)
from autoretrain.runs.schema import Run
from autoretrain.runs.scoring import SCORER_VERSION
from autoretrain.settings import PromotionGates

log = logging.getLogger(__name__)

PROMOTE, REJECT, NEEDS_HUMAN = "promote", "reject", "needs_human"


@dataclass(frozen=True)
class Decision:
    decision: str  # promote | reject | needs_human
    gate: str  # the gate that decided ("all_gates" when every gate passed)
    rationale: str
    borderline: bool = False


Facts = dict[str, Any]


# -- conditions: each written once, read both as SQL (a day range) and in Python (one run) ------
#
# A gate's condition is a small tree of these. `sql` renders it for the bulk CASE over every run
# of a day range, `holds` evaluates it on one run's facts: a gate is written once, and the two
# readings live only in the few condition kinds below (the agreement test over random facts
# still holds them equal). `$name` in SQL is a PromotionGates setting, bound by `gate_params`.
# Earlier gates guarantee what later ones read is not NULL (so Python never compares None).


class Condition:
    @property
    def sql(self) -> str:
        raise NotImplementedError

    @property
    def settings(self) -> tuple[str, ...]:
        """The PromotionGates fields the condition reads."""
        return ()

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        raise NotImplementedError


def _literal(value: str | int) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class IsNull(Condition):
    fact: str

    @property
    def sql(self) -> str:
        return f"{self.fact} IS NULL"

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return facts[self.fact] is None


@dataclass(frozen=True)
class Is(Condition):
    fact: str
    value: str | int

    @property
    def sql(self) -> str:
        return f"{self.fact} = {_literal(self.value)}"

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return facts[self.fact] == self.value


@dataclass(frozen=True)
class IsIn(Condition):
    fact: str
    values: tuple[str, ...]

    @property
    def sql(self) -> str:
        return f"{self.fact} IN ({', '.join(_literal(v) for v in self.values)})"

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return facts[self.fact] in self.values


@dataclass(frozen=True)
class IsTrue(Condition):
    fact: str

    @property
    def sql(self) -> str:
        return self.fact

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return bool(facts[self.fact])


@dataclass(frozen=True)
class IsFalse(Condition):
    fact: str

    @property
    def sql(self) -> str:
        return f"NOT {self.fact}"

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return not facts[self.fact]


@dataclass(frozen=True)
class Below(Condition):
    """fact < the setting (a minimum the run falls short of)."""

    fact: str
    setting: str

    @property
    def sql(self) -> str:
        return f"{self.fact} < ${self.setting}"

    @property
    def settings(self) -> tuple[str, ...]:
        return (self.setting,)

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return facts[self.fact] < getattr(gates, self.setting)


@dataclass(frozen=True)
class Above(Condition):
    """fact > the setting (a maximum the run exceeds)."""

    fact: str
    setting: str

    @property
    def sql(self) -> str:
        return f"{self.fact} > ${self.setting}"

    @property
    def settings(self) -> tuple[str, ...]:
        return (self.setting,)

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return facts[self.fact] > getattr(gates, self.setting)


@dataclass(frozen=True)
class NotListed(Condition):
    """The setting lists the allowed values (None: any) and the fact is not among them."""

    fact: str
    setting: str

    @property
    def sql(self) -> str:
        s, f = self.setting, self.fact
        return f"${s} IS NOT NULL AND ({f} IS NULL OR NOT list_contains(${s}::VARCHAR[], {f}))"

    @property
    def settings(self) -> tuple[str, ...]:
        return (self.setting,)

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        allowed = getattr(gates, self.setting)
        return allowed is not None and facts[self.fact] not in allowed


def _grouped(condition: Condition) -> str:
    compound = isinstance(condition, AnyOf | AllOf)
    return f"({condition.sql})" if compound else condition.sql


@dataclass(frozen=True)
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    @property
    def sql(self) -> str:
        return " OR ".join(_grouped(c) for c in self.parts)

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(s for c in self.parts for s in c.settings)

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return any(c.holds(facts, gates) for c in self.parts)


@dataclass(frozen=True)
class AllOf(Condition):
    parts: tuple[Condition, ...]

    @property
    def sql(self) -> str:
        return " AND ".join(_grouped(c) for c in self.parts)

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(s for c in self.parts for s in c.settings)

    def holds(self, facts: Facts, gates: PromotionGates) -> bool:
        return all(c.holds(facts, gates) for c in self.parts)


@dataclass(frozen=True)
class Gate:
    """One rule: the run fails it when `when` holds. Its SQL (bulk decisions) and its Python
    check (one run) are both read off `when`; a test still holds them to agreement on random
    facts."""

    name: str
    verdict: str
    when: Condition
    explain: Callable[[Facts, PromotionGates], str]

    @property
    def sql(self) -> str:
        return self.when.sql

    def fails(self, facts: Facts, gates: PromotionGates) -> bool:
        return self.when.holds(facts, gates)


GATES: tuple[Gate, ...] = (
    Gate(
        "evaluation_traffic",
        REJECT,
        Is("traffic", "evaluation"),
        lambda f, g: "evaluation traffic never enters a training set",
    ),
    Gate(
        "category",
        REJECT,
        NotListed("category", "categories"),
        lambda f, g: f"category {f['category']!r} is not among the included {g.categories}",
    ),
    Gate(
        "unfinished",
        NEEDS_HUMAN,
        AnyOf((IsNull("status"), Is("status", "running"))),
        lambda f, g: f"run status is {f['status']!r}: the run never finished",
    ),
    Gate(
        "no_verification",
        NEEDS_HUMAN,
        IsNull("score"),
        lambda f, g: "the run has no verification: nothing says its answer is right",
    ),
    Gate(
        "status_contradiction",
        NEEDS_HUMAN,
        AnyOf(
            (
                AllOf((Is("status", "succeeded"), IsFalse("verified"))),
                AllOf((IsTrue("verified"), IsIn("status", ("failed", "error")))),
            )
        ),
        lambda f, g: (
            f"status {f['status']!r} contradicts the last verification "
            f"({'passed' if f['verified'] else 'failed'})"
        ),
    ),
    Gate(
        "not_verified",
        REJECT,
        IsFalse("verified"),
        lambda f, g: f"the last verification failed (score {f['score']:.3f})",
    ),
    Gate(
        "no_final_answer",
        NEEDS_HUMAN,
        IsFalse("has_final_answer"),
        lambda f, g: "verified, but the run recorded no final answer",
    ),
    Gate(
        "no_assistant_turn",
        NEEDS_HUMAN,
        Is("n_turns", 0),
        lambda f, g: "the transcript has no assistant turn to learn from",
    ),
    Gate(
        "missing_metrics",
        NEEDS_HUMAN,
        IsNull("latency_s"),
        lambda f, g: "no latency recorded, so the runtime budget cannot be checked",
    ),
    Gate(
        "min_score",
        REJECT,
        Below("score", "min_score"),
        lambda f, g: f"score {f['score']:.3f} is below min_score {g.min_score}",
    ),
    Gate(
        "min_quality_score",
        REJECT,
        AnyOf((IsNull("quality_score"), Below("quality_score", "min_quality_score"))),
        lambda f, g: f"quality score {f['quality_score']} is below {g.min_quality_score}",
    ),
    Gate(
        "max_escalations",
        REJECT,
        Above("n_escalations", "max_escalations"),
        lambda f, g: f"{f['n_escalations']} escalation(s), at most {g.max_escalations} allowed",
    ),
    Gate(
        "max_recoveries",
        REJECT,
        Above("n_recoveries", "max_recoveries"),
        lambda f, g: f"{f['n_recoveries']} recoveries, at most {g.max_recoveries} allowed",
    ),
    Gate(
        "runtime_budget",
        REJECT,
        Above("latency_s", "max_runtime_s"),
        lambda f, g: f"ran {f['latency_s']:.1f}s, over the {g.max_runtime_s}s budget",
    ),
    Gate(
        "token_budget",
        REJECT,
        Above("total_tokens", "max_total_tokens"),
        lambda f, g: f"used {f['total_tokens']} tokens, over the {g.max_total_tokens} budget",
    ),
)
GATES_BY_NAME = {g.name: g for g in GATES}

FACT_NAMES = (
    "traffic",
    "category",
    "status",
    "verified",
    "score",
    "quality_score",
    "has_final_answer",
    "n_turns",
    "latency_s",
    "n_escalations",
    "n_recoveries",
    "total_tokens",
)


def gate_params(gates: PromotionGates) -> dict[str, Any]:
    """The settings the gates' SQL names (`$min_score`, ...), bound from `gates`."""
    return {name: getattr(gates, name) for gate in GATES for name in gate.when.settings}


def gate_case_sql() -> str:
    """A CASE expression naming the first fact gate each row fails (NULL: cleared them all)."""
    whens = "\n".join(f"    WHEN {g.sql} THEN '{g.name}'" for g in GATES)
    return f"CASE\n{whens}\n    ELSE NULL END"


def run_facts(run: Run, metrics: dict[str, Any]) -> Facts:
    """The facts the gates read: identity and outcome from the record, numbers from metrics."""
    return {
        "traffic": run.traffic,
        "category": run.category,
        "status": run.status,
        "verified": bool(metrics.get("verified")),
        "score": metrics.get("score"),
        "quality_score": metrics.get("quality_score"),
        "has_final_answer": bool((run.final_answer or "").strip()),
        "n_turns": sum(1 for m in run.messages if m.role == "assistant"),
        "latency_s": metrics.get("latency_s"),
        "n_escalations": metrics.get("n_escalations") or 0,
        "n_recoveries": metrics.get("n_recoveries") or 0,
        "total_tokens": metrics.get("total_tokens") or 0,
    }


def first_failed_gate(facts: Facts, gates: PromotionGates) -> Gate | None:
    for gate in GATES:
        if gate.fails(facts, gates):
            return gate
    return None


def transcript_problem(run: Run, metrics: dict[str, Any]) -> tuple[str, str] | None:
    """(gate, rationale) for a transcript that does not hold together, else None."""
    if bool(metrics.get("verified")) != run.verified:
        return (
            "metrics_mismatch",
            "the scored metrics and the run record disagree on verification: re-score the day",
        )
    open_calls: dict[str, str] = {}
    for i, msg in enumerate(run.messages, start=1):
        if msg.role == "assistant":
            for call in msg.tool_calls or []:
                open_calls[call.id] = call.function.name
        elif msg.role == "tool":
            if msg.tool_call_id not in open_calls:
                return (
                    "orphan_tool_message",
                    f"message {i} is a tool result for {msg.tool_call_id!r}, "
                    "which no earlier assistant turn called",
                )
            del open_calls[msg.tool_call_id]
    if open_calls:
        names = ", ".join(f"{n} ({i})" for i, n in sorted(open_calls.items()))
        return "unanswered_tool_call", f"tool call(s) with no result: {names}"
    last = run.messages[-1]
    if last.role != "assistant" or last.tool_calls:
        return (
            "answer_not_last",
            f"the transcript ends with a {last.role} message, not the assistant's answer",
        )
    return None


def borderline_reasons(facts: Facts, gates: PromotionGates) -> list[str]:
    reasons = []
    # A perfect score is never borderline, however close min_score is to 1.
    if facts["score"] < min(1.0, gates.min_score + gates.borderline_score_margin):
        reasons.append(
            f"score {facts['score']:.3f} within {gates.borderline_score_margin} "
            f"of min_score {gates.min_score}"
        )
    if gates.borderline_recoveries > 0 and facts["n_recoveries"] >= gates.borderline_recoveries:
        reasons.append(f"needed {facts['n_recoveries']} recovery(ies)")
    return reasons


REVIEWER_PROMPT = """You review runs of an AI agent before they become fine-tuning data.
A run that is promoted teaches the model to behave exactly as in the transcript, so promote only
runs whose every assistant turn is worth imitating. This run cleared the automatic gates, but
only just ({reasons}).

Answer with one JSON object and nothing else:
{{"decision": "promote" | "reject" | "needs_human", "rationale": "<one or two sentences>"}}"""


class PromotionGuardAgent:
    """Decides promote | reject | needs_human for a run from its transcript and its metrics."""

    def __init__(
        self,
        gates: PromotionGates,
        reviewer: ChatModel | None = None,
        *,
        max_transcript_chars: int = 12_000,
        reviewer_batch: int = 16,
    ):
        self.gates = gates
        self.reviewer = reviewer
        self.max_transcript_chars = max_transcript_chars
        self.reviewer_batch = reviewer_batch
        self.reviewer_calls = 0
        self.reviewer_failures = 0

    # -- deterministic part -------------------------------------------------------------------
    def gate(self, run: Run, metrics: dict[str, Any]) -> Decision:
        """Every gate, no reviewer. A borderline run that passes comes back with
        `borderline=True` and the decision the configuration gives it without a reviewer."""
        if metrics.get("run_id") not in (None, run.run_id):
            raise ValueError(f"metrics are for {metrics.get('run_id')!r}, not {run.run_id!r}")
        facts = run_facts(run, metrics)
        failed = first_failed_gate(facts, self.gates)
        if failed is not None:
            return Decision(failed.verdict, failed.name, failed.explain(facts, self.gates))
        problem = transcript_problem(run, metrics)
        if problem is not None:
            return Decision(NEEDS_HUMAN, problem[0], problem[1])
        reasons = borderline_reasons(facts, self.gates)
        if reasons:
            fallback = self.gates.borderline_without_reviewer
            return Decision(
                fallback,
                "borderline",
                f"borderline ({'; '.join(reasons)}); no reviewer configured",
                borderline=True,
            )
        return Decision(PROMOTE, "all_gates", "verified and within every gate and budget")

    def decide(self, run: Run, metrics: dict[str, Any]) -> Decision:
        decision = self.gate(run, metrics)
        if decision.borderline and self.reviewer is not None:
            return self.review([(run, metrics, decision)])[0]
        return decision

    # -- the optional LLM reviewer ------------------------------------------------------------
    def review(self, items: Sequence[tuple[Run, dict[str, Any], Decision]]) -> list[Decision]:
        """Ask the reviewer about borderline runs, in batches; any failure is needs_human."""
        assert self.reviewer is not None
        out: list[Decision] = []
        for start in range(0, len(items), self.reviewer_batch):
            chunk = items[start : start + self.reviewer_batch]
            conversations = [self._reviewer_messages(run, m, d) for run, m, d in chunk]
            self.reviewer_calls += len(chunk)
            try:
                responses = self.reviewer.chat_batch(
                    conversations, [None] * len(chunk), Sampling(temperature=0.0, max_tokens=300)
                )
                if len(responses) != len(chunk):
                    raise ValueError(f"{len(responses)} replies for {len(chunk)} conversations")
            except Exception as exc:  # a reviewer outage must not stop or promote anything
                log.warning("promotion reviewer failed: %s", exc)
                self.reviewer_failures += len(chunk)
                out += [self._reviewer_failed(f"reviewer call failed: {exc}") for _ in chunk]
                continue
            for response in responses:
                out.append(self._parse_review(response.message.get("content")))
        return out

    def _reviewer_messages(
        self, run: Run, metrics: dict[str, Any], decision: Decision
    ) -> list[dict[str, Any]]:
        reasons = decision.rationale.removeprefix("borderline (").split("); ")[0]
        transcript = render_transcript(run)
        if len(transcript) > self.max_transcript_chars:
            half = self.max_transcript_chars // 2
            transcript = f"{transcript[:half]}\n[... cut ...]\n{transcript[-half:]}"
        shown = {k: metrics.get(k) for k in ("score", "quality_score", "n_recoveries", "n_turns")}
        return [
            {"role": "system", "content": REVIEWER_PROMPT.format(reasons=reasons)},
            {"role": "user", "content": f"Metrics: {json.dumps(shown)}\n\n{transcript}"},
        ]

    def _reviewer_failed(self, why: str) -> Decision:
        return Decision(NEEDS_HUMAN, "reviewer_failed", why, borderline=True)

    def _parse_review(self, content: Any) -> Decision:
        text = str(content or "")
        match = re.search(r"\{.*\}", text, re.DOTALL)
        try:
            data = json.loads(match.group(0)) if match else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self.reviewer_failures += 1
            return self._reviewer_failed(f"reviewer reply is not a JSON object: {text[:200]!r}")
        verdict, rationale = data.get("decision"), str(data.get("rationale") or "").strip()
        if verdict not in (PROMOTE, REJECT, NEEDS_HUMAN) or not rationale:
            self.reviewer_failures += 1
            return self._reviewer_failed(
                f"reviewer reply lacks a valid decision and rationale: {text[:200]!r}"
            )
        return Decision(verdict, "reviewer", rationale, borderline=True)


# -- decisions for a day range ----------------------------------------------------------------


@dataclass
class DecisionReport:
    start_day: str
    end_day: str
    scorer_version: str
    n_runs: int
    by_decision: dict[str, int] = field(default_factory=dict)
    by_gate: dict[str, int] = field(default_factory=dict)
    n_transcripts_read: int = 0
    n_borderline: int = 0
    reviewer_calls: int = 0
    reviewer_failures: int = 0
    seconds: float = 0.0

    @property
    def runs_per_s(self) -> float:
        return self.n_runs / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runs_per_s": round(self.runs_per_s, 1)}


_FACTS_SQL = """
CREATE OR REPLACE TEMP TABLE _guard_facts AS
WITH facts AS (
    SELECT s.*, r.status,
           regexp_matches(coalesce(json_extract_string(r.record, '$.final_answer'), ''), '\S')
               AS has_final_answer
    FROM scored_runs s JOIN runs r USING (run_id)
    -- r.day too: without it DuckDB reads every row group of `runs` (records included), so the
    -- cost of deciding one day grew with history (bench/incremental.py).
    WHERE s.day BETWEEN $start_day AND $end_day AND s.scorer_version = $scorer_version
      AND r.day BETWEEN $start_day AND $end_day
)
SELECT *, {case} AS failed_gate FROM facts
"""

_SURVIVOR_CHUNK = 2_000


def decide_days(
    con: duckdb.DuckDBPyConnection, start_day: str, end_day: str, guard: PromotionGuardAgent
) -> DecisionReport:
    """Decide every scored run of start_day..end_day (inclusive) and replace those days'
    decisions for the current scorer version, in one transaction."""
    t0 = time.perf_counter()
    calls0, failures0 = guard.reviewer_calls, guard.reviewer_failures
    ensure_promotion_decisions_table(con)
    days = {"start_day": start_day, "end_day": end_day}
    _refuse_unscored(con, start_day, end_day)
    con.execute(
        _FACTS_SQL.format(case=gate_case_sql()),
        {**days, "scorer_version": SCORER_VERSION, **gate_params(guard.gates)},
    )
    try:
        rows = _decided_by_fact_gates(con, guard.gates)
        survivors = _decide_survivors(con, days, guard)
    finally:
        con.execute("DROP TABLE IF EXISTS _guard_facts")
    rows += survivors.rows
    # Borderline runs decided without a reviewer name the gate "borderline"; the rest wait for it.
    n_borderline = len(survivors.pending) + sum(1 for r in rows if r[3] == "borderline")
    rows += _reviewed(guard, survivors.pending)
    replace_decisions(con, start_day, end_day, SCORER_VERSION, rows)
    return DecisionReport(
        start_day=start_day,
        end_day=end_day,
        scorer_version=SCORER_VERSION,
        n_runs=len(rows),
        by_decision=dict(Counter(r[2] for r in rows)),
        by_gate=dict(Counter(r[3] for r in rows)),
        n_transcripts_read=survivors.n_read,
        n_borderline=n_borderline,
        reviewer_calls=guard.reviewer_calls - calls0,
        reviewer_failures=guard.reviewer_failures - failures0,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _refuse_unscored(con: duckdb.DuckDBPyConnection, start_day: str, end_day: str) -> None:
    """Deciding a run needs its scored metrics: a day range with unscored runs is refused."""
    unscored = con.execute(
        """SELECT count(*) FROM runs r WHERE r.day BETWEEN $start_day AND $end_day
           AND NOT EXISTS (SELECT 1 FROM scored_runs s
                           WHERE s.run_id = r.run_id AND s.scorer_version = $v
                             AND s.day BETWEEN $start_day AND $end_day)""",
        {"start_day": start_day, "end_day": end_day, "v": SCORER_VERSION},
    ).fetchone()
    if unscored and unscored[0]:
        raise RuntimeError(
            f"{unscored[0]} run(s) of {start_day}..{end_day} have no scored_runs row for "
            f"scorer version {SCORER_VERSION}: score those days first (score_days)"
        )


def _decided_by_fact_gates(
    con: duckdb.DuckDBPyConnection, gates: PromotionGates
) -> list[DecisionRow]:
    """Runs a fact gate decided: explained from their facts, records never parsed."""
    decided = con.sql(
        f"SELECT run_id, day, failed_gate, {', '.join(FACT_NAMES)} FROM _guard_facts "
        "WHERE failed_gate IS NOT NULL"
    ).to_arrow_table()
    rows: list[DecisionRow] = []
    for rec in decided.to_pylist():
        gate = GATES_BY_NAME[rec["failed_gate"]]
        rows.append((rec["run_id"], rec["day"], gate.verdict, gate.name, gate.explain(rec, gates)))
    return rows


@dataclass
class _Survivors:
    """What reading the transcripts of the runs that cleared every fact gate gave."""

    rows: list[DecisionRow] = field(default_factory=list)  # decided here
    pending: list[tuple[Run, dict[str, Any], Decision]] = field(default_factory=list)  # reviewer's
    n_read: int = 0


def _decide_survivors(
    con: duckdb.DuckDBPyConnection, days: dict[str, str], guard: PromotionGuardAgent
) -> _Survivors:
    """Runs that cleared every fact gate: read the transcript and gate it; the borderline ones
    wait for the reviewer when there is one. Streamed in chunks, so memory does not grow with
    the day range."""
    cur = con.execute(
        "SELECT f.*, r.record FROM _guard_facts f JOIN runs r USING (run_id) "
        "WHERE f.failed_gate IS NULL AND r.day BETWEEN $start_day AND $end_day ORDER BY f.run_id",
        days,
    )
    names = [d[0] for d in cur.description]
    out = _Survivors()
    while batch := cur.fetchmany(_SURVIVOR_CHUNK):
        for values in batch:
            metrics = dict(zip(names, values, strict=True))
            out.n_read += 1
            try:
                run = Run.model_validate_json(metrics.pop("record"))
            except ValueError as exc:
                why = f"the stored record does not parse as a Run: {str(exc)[:300]}"
                out.rows.append(
                    (metrics["run_id"], metrics["day"], NEEDS_HUMAN, "unreadable_record", why)
                )
                continue
            decision = guard.gate(run, metrics)
            if decision.borderline and guard.reviewer is not None:
                out.pending.append((run, metrics, decision))
            else:
                out.rows.append(_row(run, metrics, decision))
    return out


def _reviewed(
    guard: PromotionGuardAgent, pending: list[tuple[Run, dict[str, Any], Decision]]
) -> list[DecisionRow]:
    """The reviewer's decisions on the borderline runs (none asked when there are none)."""
    if not pending:
        return []
    return [
        _row(run, metrics, decision)
        for (run, metrics, _), decision in zip(pending, guard.review(pending), strict=True)
    ]


def _row(run: Run, metrics: dict[str, Any], decision: Decision) -> DecisionRow:
    return (run.run_id, metrics["day"], decision.decision, decision.gate, decision.rationale)
