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
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from autoretrain.parallel import ordered_map
from autoretrain.providers.base import ChatModel, Sampling
from autoretrain.runs.review import (
    DecisionRow,
    ensure_promotion_decisions_table,
    render_transcript,
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
    # The facts `explain` reads: runs a gate decided that agree on them get one explanation,
    # so decide_days explains each distinct combination once and writes the rows in SQL.
    reads: tuple[str, ...] = ()

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
        reads=("category",),
    ),
    Gate(
        "unfinished",
        NEEDS_HUMAN,
        AnyOf((IsNull("status"), Is("status", "running"))),
        lambda f, g: f"run status is {f['status']!r}: the run never finished",
        reads=("status",),
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
        reads=("status", "verified"),
    ),
    Gate(
        "not_verified",
        REJECT,
        IsFalse("verified"),
        lambda f, g: f"the last verification failed (score {f['score']:.3f})",
        reads=("score",),
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
        reads=("score",),
    ),
    Gate(
        "min_quality_score",
        REJECT,
        AnyOf((IsNull("quality_score"), Below("quality_score", "min_quality_score"))),
        lambda f, g: f"quality score {f['quality_score']} is below {g.min_quality_score}",
        reads=("quality_score",),
    ),
    Gate(
        "max_escalations",
        REJECT,
        Above("n_escalations", "max_escalations"),
        lambda f, g: f"{f['n_escalations']} escalation(s), at most {g.max_escalations} allowed",
        reads=("n_escalations",),
    ),
    Gate(
        "max_recoveries",
        REJECT,
        Above("n_recoveries", "max_recoveries"),
        lambda f, g: f"{f['n_recoveries']} recoveries, at most {g.max_recoveries} allowed",
        reads=("n_recoveries",),
    ),
    Gate(
        "runtime_budget",
        REJECT,
        Above("latency_s", "max_runtime_s"),
        lambda f, g: f"ran {f['latency_s']:.1f}s, over the {g.max_runtime_s}s budget",
        reads=("latency_s",),
    ),
    Gate(
        "token_budget",
        REJECT,
        Above("total_tokens", "max_total_tokens"),
        lambda f, g: f"used {f['total_tokens']} tokens, over the {g.max_total_tokens} budget",
        reads=("total_tokens",),
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


# The decision of a run that cleared every gate and is not borderline: most runs.
ALL_GATES = Decision(PROMOTE, "all_gates", "verified and within every gate and budget")

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
        return ALL_GATES

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
    con: duckdb.DuckDBPyConnection,
    start_day: str,
    end_day: str,
    guard: PromotionGuardAgent,
    workers: int = 1,
) -> DecisionReport:
    """Decide every scored run of start_day..end_day (inclusive) and replace those days'
    decisions for the current scorer version, in one transaction.

    Python holds no row per run: runs a fact gate decided are written in SQL (each distinct
    explanation computed once, `_explain_fact_gates`), the survivors' transcripts are read in
    chunks, and of their decisions only the ones other than "promote, all gates" (the usual
    one, written in SQL at the end) wait, in a file, for the transaction. DuckDB's own memory
    (the temp facts table, the survivors' join, cached blocks) still grows with the day range
    (bench/results/curation-1000000.md). Past the first 50,000 survivors, their transcripts
    are parsed and gated in `workers` processes (autoretrain/parallel.py): the same decisions."""
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
        with tempfile.TemporaryDirectory(prefix="autoretrain-decisions-") as folder:
            spool = _RowSpool(Path(folder) / "decisions.parquet")
            try:
                _explain_fact_gates(con, guard.gates)
                survivors = _decide_survivors(con, days, guard, spool, workers)
                for row in _reviewed(guard, survivors.pending):
                    spool.add(row)
            finally:
                spool.close()
            counts = _write_decisions(con, days, spool.path)
    finally:
        con.execute("DROP TABLE IF EXISTS _guard_facts")
        con.execute("DROP TABLE IF EXISTS _guard_explained")
    by_decision: Counter[str] = Counter()
    by_gate: Counter[str] = Counter()
    for decision, gate, n in counts:
        by_decision[decision] += n
        by_gate[gate] += n
    # Borderline runs decided without a reviewer name the gate "borderline"; the rest wait for it.
    n_borderline = len(survivors.pending) + by_gate.get("borderline", 0)
    return DecisionReport(
        start_day=start_day,
        end_day=end_day,
        scorer_version=SCORER_VERSION,
        n_runs=sum(by_decision.values()),
        by_decision=dict(sorted(by_decision.items())),
        by_gate=dict(sorted(by_gate.items())),
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


# The facts a gate's explanation reads, as the text that tells their values apart: DuckDB
# writes a DOUBLE as its shortest round-trip text, so equal text is an equal value (0.0 and
# -0.0 apart), and a run's row finds its explanation by these keys.
_MAX_READS = 2


def _keys(gate: Gate, table: str) -> list[str]:
    return [f"CAST({table}.{fact} AS VARCHAR)" for fact in gate.reads]


def _explain_fact_gates(con: duckdb.DuckDBPyConnection, gates: PromotionGates) -> None:
    """`_guard_explained`: per fact gate, each distinct combination of the facts its
    explanation reads among the runs it decided, and that explanation. Explained from the
    facts, as one run is (`Gate.explain`); records are never parsed."""
    rows: list[tuple[Any, ...]] = []
    for gate in GATES:
        assert len(gate.reads) <= _MAX_READS, gate.name
        if not gate.reads:
            rows.append((gate.name, None, None, gate.explain({}, gates)))
            continue
        keys = _keys(gate, "f")
        values = ", ".join(f"any_value(f.{fact}) AS {fact}" for fact in gate.reads)
        named = ", ".join(f"{key} AS _k{i}" for i, key in enumerate(keys))
        # Read through Arrow, as the rows of one run were: the same Python values.
        distinct = con.sql(
            f"SELECT {values}, {named} FROM _guard_facts f WHERE f.failed_gate = $gate "
            "GROUP BY ALL",
            params={"gate": gate.name},
        ).to_arrow_table()
        for rec in distinct.to_pylist():
            padded = [rec[f"_k{i}"] for i in range(len(keys))]
            padded += [None] * (_MAX_READS - len(padded))
            rows.append((gate.name, *padded, gate.explain(rec, gates)))
    frame = pl.DataFrame(
        rows,
        schema={"gate": pl.String, "k0": pl.String, "k1": pl.String, "rationale": pl.String},
        orient="row",
    )
    con.register("_guard_explained_frame", frame)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _guard_explained AS FROM _guard_explained_frame")
    finally:
        con.unregister("_guard_explained_frame")


class _RowSpool:
    """Decision rows written to a Parquet file in chunks, read back by DuckDB in the
    transaction that replaces the days' decisions: memory holds one chunk."""

    SCHEMA = pa.schema(
        [
            ("run_id", pa.string()),
            ("day", pa.date32()),
            ("decision", pa.string()),
            ("gate", pa.string()),
            ("rationale", pa.string()),
        ]
    )

    def __init__(self, path: Path):
        self.path = path
        self._writer = pq.ParquetWriter(str(path), self.SCHEMA)
        self._rows: list[DecisionRow] = []

    def add(self, row: DecisionRow) -> None:
        self._rows.append(row)
        if len(self._rows) >= _SURVIVOR_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows, strict=True))
            self._writer.write_table(pa.Table.from_arrays(columns, schema=self.SCHEMA))
            self._rows = []

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None


def _write_decisions(
    con: duckdb.DuckDBPyConnection, days: dict[str, str], spooled: Path
) -> list[tuple[str, str, int]]:
    """Replace the days' decisions for this scorer version, in one transaction (a reader sees
    the old decisions or the new ones, never a mix): runs a fact gate decided, with their
    explanations; the survivors' spooled rows; every other survivor promoted by all gates.
    Returns (decision, gate, runs) for what was written."""
    params = {**days, "v": SCORER_VERSION}
    spool = f"read_parquet('{_sql_text(str(spooled))}')"
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM promotion_decisions WHERE day BETWEEN $start_day AND $end_day "
            "AND scorer_version = $v",
            params,
        )
        for gate in GATES:
            on = "".join(
                f" AND {key} IS NOT DISTINCT FROM e.k{i}" for i, key in enumerate(_keys(gate, "f"))
            )
            con.execute(
                "INSERT INTO promotion_decisions SELECT f.run_id, f.day, $verdict, f.failed_gate, "
                "e.rationale, $v, now() FROM _guard_facts f JOIN _guard_explained e "
                f"ON e.gate = f.failed_gate{on} WHERE f.failed_gate = $gate",
                {"verdict": gate.verdict, "gate": gate.name, "v": SCORER_VERSION},
            )
        con.execute(
            "INSERT INTO promotion_decisions SELECT run_id, day, decision, gate, rationale, $v, "
            f"now() FROM {spool}",
            {"v": SCORER_VERSION},
        )
        # The survivors `_decide_survivors` read (the same join), less those it spooled.
        con.execute(
            "INSERT INTO promotion_decisions SELECT f.run_id, f.day, $decision, $gate, "
            "$rationale, $v, now() FROM _guard_facts f JOIN runs r USING (run_id) "
            "WHERE f.failed_gate IS NULL AND r.day BETWEEN $start_day AND $end_day "
            f"AND NOT EXISTS (SELECT 1 FROM {spool} x WHERE x.run_id = f.run_id)",
            {**params, "decision": PROMOTE, "gate": ALL_GATES.gate,
             "rationale": ALL_GATES.rationale},
        )  # fmt: skip
        counts = con.execute(
            "SELECT decision, gate, count(*) FROM promotion_decisions "
            "WHERE day BETWEEN $start_day AND $end_day AND scorer_version = $v GROUP BY ALL",
            params,
        ).fetchall()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return [(d, g, int(n)) for d, g, n in counts]


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


@dataclass
class _Survivors:
    """What reading the transcripts of the runs that cleared every fact gate gave."""

    pending: list[tuple[Run, dict[str, Any], Decision]] = field(default_factory=list)  # reviewer's
    n_read: int = 0


def _decide_survivors(
    con: duckdb.DuckDBPyConnection,
    days: dict[str, str],
    guard: PromotionGuardAgent,
    spool: _RowSpool,
    workers: int = 1,
) -> _Survivors:
    """Runs that cleared every fact gate: read the transcript and gate it; the borderline ones
    wait for the reviewer when there is one. Streamed in chunks; a decision other than
    ALL_GATES goes to `spool`, and ALL_GATES ones are written in SQL afterwards."""
    # No ORDER BY: sorting would gather every survivor's record before the first row comes
    # out; only the reviewer's batches depend on the order, and `pending` is sorted below.
    cur = con.execute(
        "SELECT f.*, r.record FROM _guard_facts f JOIN runs r USING (run_id) "
        "WHERE f.failed_gate IS NULL AND r.day BETWEEN $start_day AND $end_day",
        days,
    )
    names = [d[0] for d in cur.description]

    def survivors() -> Iterator[dict[str, Any]]:
        while batch := cur.fetchmany(_SURVIVOR_CHUNK):
            for values in batch:
                yield dict(zip(names, values, strict=True))

    out = _Survivors()
    reviewing = guard.reviewer is not None
    for outcome in ordered_map(
        _gate_survivor,
        (guard, reviewing),
        survivors(),
        workers=workers,
        make_state=_gate_state,
        args=(guard.gates, reviewing),
    ):
        out.n_read += 1
        if outcome is None:
            continue
        kind, item = outcome
        if kind == "pending":
            out.pending.append(item)
        else:
            spool.add(item)
    # In run id order, as the reviewer has always been asked (DuckDB orders VARCHAR by bytes,
    # which for UTF-8 is code point order, as here).
    out.pending.sort(key=lambda item: item[0].run_id)
    return out


def _gate_state(gates: PromotionGates, reviewing: bool) -> tuple[PromotionGuardAgent, bool]:
    """A worker's guard: the gates alone (the reviewer, if any, is asked by the parent)."""
    return PromotionGuardAgent(gates), reviewing


def _gate_survivor(
    state: tuple[PromotionGuardAgent, bool], metrics: dict[str, Any]
) -> tuple[str, Any] | None:
    """One survivor: ("row", its decision row), ("pending", (run, metrics, decision)) for the
    reviewer, or None when all gates promote it (the usual case, written in SQL)."""
    guard, reviewing = state
    try:
        run = Run.model_validate_json(metrics.pop("record"))
    except ValueError as exc:
        why = f"the stored record does not parse as a Run: {str(exc)[:300]}"
        return "row", (metrics["run_id"], metrics["day"], NEEDS_HUMAN, "unreadable_record", why)
    decision = guard.gate(run, metrics)
    if decision.borderline and reviewing:
        return "pending", (run, metrics, decision)
    if decision != ALL_GATES:
        return "row", _row(run, metrics, decision)
    return None


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
