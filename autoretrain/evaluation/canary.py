"""Canary analysis: is the model in the canary slot at least as good as primary on live traffic?

Once a candidate holds the canary slot, a share of self-play (and production) traffic goes to it
and its runs are tagged `slot="canary"`. Unlike the replay, canary and primary answer *different*
instances, so nothing is paired: pass rates are compared as two independent proportions.

- The difference in pass rate (canary - primary) gets a bootstrap interval (each slot resampled
  on its own; for pass/fail data that is a binomial draw per slot).
- Non-inferiority is a one-sided Farrington-Manning score test of H0: diff <= -margin against
  H1: diff > -margin, at `lifts.significance`. The margin is `canary_margin` overall and
  `max_category_regression` per category (categories are checked on the point estimate, as in
  the replay: per-category significance would need far more traffic than a canary gets).
- Latency (p50) and cost (mean per run) are compared as ratios against the replay's budgets.

The verdict passes only when every gate does. Too few runs in either slot is a failure with the
reason "insufficient canary traffic", never a pass by default.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from autoretrain.evaluation.compare import ALL
from autoretrain.evaluation.gates import (
    Gate,
    cost_gate,
    jsonable,
    latency_gate,
    regression_gate,
    usage_stats,
)
from autoretrain.settings import EvaluationLifts

SLOTS = ("canary", "primary")
# Live traffic the slots serve; evaluation replays and imports are not canary evidence.
CANARY_TRAFFIC = ("selfplay", "production")
INSUFFICIENT = "insufficient canary traffic"
_POWER_Z = 0.8416  # z for 80% power, used to say how much traffic a verdict would need


@dataclass(frozen=True)
class SlotRun:
    """The facts of one run the analysis uses (a row of the `runs` table)."""

    slot: str
    model: str
    passed: bool
    score: float
    n_recoveries: int
    n_escalations: int
    latency_s: float
    total_tokens: int
    cost_usd: float | None
    category: str
    started_at: datetime | None = None


@dataclass
class CanaryAnalysis:
    passed: bool
    reasons: list[Gate]
    slots: list[dict[str, Any]] = field(default_factory=list)  # per slot
    categories: list[dict[str, Any]] = field(default_factory=list)  # per category x slot diff
    difference: dict[str, Any] = field(default_factory=dict)  # overall canary - primary
    notes: list[str] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)
    lifts: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.reasons if g.passed is False]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    def summary(self) -> str:
        verdict = "pass" if self.passed else "fail"
        failed = "; ".join(f"{g.name}: {g.detail}" for g in self.failed_gates)
        return f"canary {verdict}" + (f" ({failed})" if failed else "")


# ---------------------------------------------------------------- loading runs


_QUERY = """
SELECT slot, model, coalesce(verified, false) AS passed, coalesce(score, 0.0) AS score,
       coalesce(n_recoveries, 0), coalesce(n_escalations, 0), coalesce(latency_s, 0.0),
       coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) AS total_tokens,
       cost_usd, coalesce(category, '?') AS category, started_at
FROM runs
WHERE slot IN ('canary', 'primary') AND status <> 'running'
"""


def load_slot_runs(
    con: Any,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    canary_model: str | None = None,
    primary_model: str | None = None,
    traffic: Sequence[str] = CANARY_TRAFFIC,
    provider: str | None = None,
) -> list[SlotRun]:
    """Canary and primary runs in [since, until) from the DuckDB `runs` table (read only).

    Naming the models keeps runs of an earlier canary (or primary) out of the window."""
    sql, params = _QUERY, []
    if traffic:
        sql += f" AND traffic IN ({', '.join('?' for _ in traffic)})"
        params += list(traffic)
    for column, value, op in (
        ("started_at", since, ">="),
        ("started_at", until, "<"),
        ("provider", provider, "="),
    ):
        if value is not None:
            sql += f" AND {column} {op} ?"
            params.append(value)
    for slot, model in (("canary", canary_model), ("primary", primary_model)):
        if model is not None:
            sql += " AND (slot <> ? OR model = ?)"
            params += [slot, model]
    rows = con.execute(sql, params).fetchall()
    return [
        SlotRun(
            slot=r[0],
            model=r[1] or "unknown",
            passed=bool(r[2]),
            score=float(r[3]),
            n_recoveries=int(r[4]),
            n_escalations=int(r[5]),
            latency_s=float(r[6]),
            total_tokens=int(r[7]),
            cost_usd=None if r[8] is None else float(r[8]),
            category=r[9],
            started_at=r[10],
        )
        for r in rows
    ]


def slot_run(record: Any) -> SlotRun:
    """A `Run` record, or a mapping with the `runs` table's columns, as a SlotRun."""
    if isinstance(record, SlotRun):
        return record
    if isinstance(record, Mapping):
        tokens = record.get("total_tokens")
        if tokens is None:
            tokens = (record.get("prompt_tokens") or 0) + (record.get("completion_tokens") or 0)
        passed = record.get("passed", record.get("verified"))
        return SlotRun(
            slot=str(record["slot"]),
            model=str(record.get("model") or "unknown"),
            passed=bool(passed),
            score=float(record.get("score") or 0.0),
            n_recoveries=int(record.get("n_recoveries") or 0),
            n_escalations=int(record.get("n_escalations") or 0),
            latency_s=float(record.get("latency_s") or 0.0),
            total_tokens=int(tokens or 0),
            cost_usd=None if record.get("cost_usd") is None else float(record["cost_usd"]),
            category=str(record.get("category") or "?"),
            started_at=record.get("started_at"),
        )
    last = record.verifications[-1] if record.verifications else None
    return SlotRun(
        slot=str(record.slot),
        model=record.model,
        passed=record.verified,
        score=last.score if last is not None else 0.0,
        n_recoveries=len(record.recoveries),
        n_escalations=len(record.escalations),
        latency_s=record.latency_s or 0.0,
        total_tokens=record.usage.total_tokens,
        cost_usd=record.cost_usd,
        category=record.category or "?",
        started_at=record.started_at,
    )


# ---------------------------------------------------------------- the analysis


def canary_analysis(
    runs: Any,
    *,
    lifts: EvaluationLifts | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    canary_model: str | None = None,
    primary_model: str | None = None,
    traffic: Sequence[str] = CANARY_TRAFFIC,
    min_runs: int | None = None,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> CanaryAnalysis:
    """Compare canary and primary runs over a window and decide.

    `runs` is a DuckDB connection (its `runs` table is read) or an iterable of `Run` records,
    mappings with the table's columns, or SlotRuns; `since`, `until`, the model names and
    `traffic` filter both alike."""
    lifts = lifts or EvaluationLifts()
    min_runs = lifts.min_canary_runs if min_runs is None else min_runs
    # A connection's `runs` table is filtered in SQL; records in hand, here.
    select = load_slot_runs if hasattr(runs, "execute") else _filter
    records = select(
        runs,
        since=since,
        until=until,
        canary_model=canary_model,
        primary_model=primary_model,
        traffic=traffic,
    )
    window = {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "canary_model": canary_model,
        "primary_model": primary_model,
        "traffic": list(traffic),
    }
    by_slot = {slot: [r for r in records if r.slot == slot] for slot in SLOTS}
    base = {"window": window, "lifts": lifts.model_dump()}
    slots = [_slot_stats(slot, by_slot[slot]) for slot in SLOTS if by_slot[slot]]

    traffic_gate = _traffic_gate({slot: len(by_slot[slot]) for slot in SLOTS}, min_runs)
    if not traffic_gate.passed:
        return CanaryAnalysis(passed=False, reasons=[traffic_gate], slots=slots, **base)

    notes: list[str] = []
    overall, categories = _differences(records, by_slot, lifts, bootstrap_samples, seed)
    gates = [
        traffic_gate,
        _non_inferiority_gate(overall, lifts),
        _category_gate(categories, lifts, notes),
        _latency_gate(by_slot, lifts),
        _cost_gate(by_slot, lifts, notes),
    ]
    return CanaryAnalysis(
        passed=all(g.passed is not False for g in gates),
        reasons=gates,
        slots=slots,
        categories=categories,
        difference=overall,
        notes=notes,
        **base,
    )


def _traffic_gate(counts: dict[str, int], min_runs: int) -> Gate:
    """Enough runs on both slots for the analysis to mean something."""
    enough = all(n >= min_runs for n in counts.values()) and min(counts.values()) > 0
    return Gate(
        "canary_traffic",
        enough,
        min(counts.values()),
        min_runs,
        ("" if enough else f"{INSUFFICIENT}: ")
        + f"canary {counts['canary']} runs, primary {counts['primary']} (need {min_runs} each)",
    )


def _differences(
    records: list[SlotRun],
    by_slot: dict[str, list[SlotRun]],
    lifts: EvaluationLifts,
    bootstrap_samples: int,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Canary minus primary pass rate: over all (against the non-inferiority margin) and per
    category of the window's runs (against the category-regression limit)."""
    confidence = 1.0 - lifts.significance
    canary, primary = by_slot["canary"], by_slot["primary"]
    overall = _difference(
        ALL, canary, primary, lifts.canary_margin, bootstrap_samples, confidence, seed
    )
    categories = [
        _difference(
            category,
            [r for r in canary if r.category == category],
            [r for r in primary if r.category == category],
            lifts.max_category_regression,
            bootstrap_samples,
            confidence,
            seed,
        )
        for category in sorted({r.category for r in records})
    ]
    return overall, categories


def _filter(
    runs: Iterable[Any],
    *,
    since: datetime | None,
    until: datetime | None,
    canary_model: str | None,
    primary_model: str | None,
    traffic: Sequence[str],
) -> list[SlotRun]:
    models = {"canary": canary_model, "primary": primary_model}
    out = []
    for record in runs:
        kind = _traffic_of(record)
        if traffic and kind is not None and kind not in traffic:
            continue
        run = slot_run(record)
        if run.slot not in SLOTS:
            continue
        if models[run.slot] is not None and run.model != models[run.slot]:
            continue
        if run.started_at is not None:
            if since is not None and run.started_at < since:
                continue
            if until is not None and run.started_at >= until:
                continue
        out.append(run)
    return out


def _traffic_of(record: Any) -> str | None:
    if isinstance(record, SlotRun):
        return None
    if isinstance(record, Mapping):
        return record.get("traffic")
    return getattr(record, "traffic", None)


# ---------------------------------------------------------------- statistics


def farrington_manning(x1: int, n1: int, x2: int, n2: int, delta: float) -> tuple[float, float]:
    """One-sided score test of H0: p1 - p2 <= delta against H1: p1 - p2 > delta.

    Returns (z, p-value). The variance uses the maximum-likelihood estimates of p1 and p2
    restricted to p1 - p2 = delta (Farrington & Manning 1990, closed form of the cubic), which
    keeps the test sound at pass rates of 0 or 1, where the plain Wald test is not defined."""
    p1, p2 = x1 / n1, x2 / n2
    theta = n2 / n1
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + delta * (theta + 2.0))
    c = delta * delta + delta * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    d = -p1 * delta * (1.0 + delta)
    v = b**3 / (27.0 * a**3) - b * c / (6.0 * a * a) + d / (2.0 * a)
    u_sq = b * b / (9.0 * a * a) - c / (3.0 * a)
    u = math.copysign(math.sqrt(max(u_sq, 0.0)), v) if v != 0 else math.sqrt(max(u_sq, 0.0))
    if u == 0.0:
        r1 = -b / (3.0 * a)
    else:
        w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3.0
        r1 = 2.0 * u * math.cos(w) - b / (3.0 * a)
    r1 = min(1.0, max(0.0, r1))
    r2 = min(1.0, max(0.0, r1 - delta))
    variance = r1 * (1.0 - r1) / n1 + r2 * (1.0 - r2) / n2
    diff = p1 - p2 - delta
    if variance <= 0.0:
        z = math.inf if diff > 0 else (-math.inf if diff < 0 else 0.0)
    else:
        z = diff / math.sqrt(variance)
    return z, _upper_tail(z)


def _upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _z_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (bisection on erfc; precise enough for reporting)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 1.0 - _upper_tail(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _difference(
    category: str,
    canary: list[SlotRun],
    primary: list[SlotRun],
    margin: float,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    n1, n2 = len(canary), len(primary)
    row: dict[str, Any] = {
        "category": category,
        "canary_runs": n1,
        "primary_runs": n2,
        "margin": margin,
    }
    if n1 == 0 or n2 == 0:
        row.update(
            canary_pass_rate=_rate(canary),
            primary_pass_rate=_rate(primary),
            pass_rate_diff=None,
            pass_rate_diff_ci=None,
            z=None,
            p_value=None,
        )
        return row
    x1, x2 = sum(r.passed for r in canary), sum(r.passed for r in primary)
    p1, p2 = x1 / n1, x2 / n2
    # A stable stream per category: intervals do not depend on the order they are computed in.
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    boot = (
        rng.binomial(n1, p1, bootstrap_samples) / n1 - rng.binomial(n2, p2, bootstrap_samples) / n2
    )
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    z, p_value = farrington_manning(x1, n1, x2, n2, -margin)
    row.update(
        canary_pass_rate=p1,
        primary_pass_rate=p2,
        pass_rate_diff=p1 - p2,
        pass_rate_diff_ci=[float(np.quantile(boot, lo_q)), float(np.quantile(boot, hi_q))],
        # The one-sided bound matching the test's level: non-inferior when it is above -margin.
        pass_rate_diff_lower=float(np.quantile(boot, 1 - confidence)),
        z=z,
        p_value=p_value,
        score_diff=float(np.mean([r.score for r in canary]) - np.mean([r.score for r in primary])),
    )
    return row


def _rate(runs: list[SlotRun]) -> float | None:
    return sum(r.passed for r in runs) / len(runs) if runs else None


def _slot_stats(slot: str, runs: list[SlotRun]) -> dict[str, Any]:
    return {
        "slot": slot,
        "models": sorted({r.model for r in runs}),
        "runs": len(runs),
        "pass_rate": float(np.mean([r.passed for r in runs])),
        "mean_score": float(np.mean([r.score for r in runs])),
        "recovery_rate": float(np.mean([r.n_recoveries > 0 for r in runs])),
        "escalation_rate": float(np.mean([r.n_escalations > 0 for r in runs])),
        **usage_stats(
            [r.latency_s for r in runs], [r.total_tokens for r in runs], [r.cost_usd for r in runs]
        ),
        "first_run": min((r.started_at for r in runs if r.started_at), default=None),
        "last_run": max((r.started_at for r in runs if r.started_at), default=None),
    }


# ---------------------------------------------------------------- gates


def _non_inferiority_gate(overall: dict[str, Any], lifts: EvaluationLifts) -> Gate:
    margin, alpha = overall["margin"], lifts.significance
    passed = overall["p_value"] <= alpha
    detail = (
        f"pass rate {overall['primary_pass_rate']:.3f} (primary, n={overall['primary_runs']}) -> "
        f"{overall['canary_pass_rate']:.3f} (canary, n={overall['canary_runs']}), diff "
        f"{overall['pass_rate_diff']:+.3f}; Farrington-Manning one-sided p={overall['p_value']:.3g} "
        f"for H0 diff <= -{margin:g}"
    )
    if not passed and overall["pass_rate_diff"] > -margin:
        # Not shown worse, just not shown good enough yet: say how much traffic would settle it.
        pooled = (
            overall["canary_pass_rate"] * overall["canary_runs"]
            + overall["primary_pass_rate"] * overall["primary_runs"]
        ) / (overall["canary_runs"] + overall["primary_runs"])
        z = _z_quantile(1 - alpha) + _POWER_Z
        gap = max(overall["pass_rate_diff"] + margin, 1e-9)
        needed = math.ceil(z * z * 2 * max(pooled * (1 - pooled), 1e-6) / (gap * gap))
        detail += f"; about {needed} runs per slot would be needed at this difference"
    return Gate("canary_non_inferiority", passed, overall["p_value"], alpha, detail)


def _category_gate(
    categories: list[dict[str, Any]], lifts: EvaluationLifts, notes: list[str]
) -> Gate:
    cells = [c for c in categories if c["pass_rate_diff"] is not None]
    one_sided = [c["category"] for c in categories if c["pass_rate_diff"] is None]
    if one_sided:
        notes.append("categories served by one slot only (not compared): " + ", ".join(one_sided))
    small = [
        c
        for c in cells
        if min(c["canary_runs"], c["primary_runs"]) < lifts.small_category_instances
    ]
    if small:
        notes.append(
            f"{len(small)} category cell(s) have fewer than {lifts.small_category_instances} runs "
            "in a slot; their regression check uses the point estimate and is noisy: "
            + ", ".join(
                f"{c['category']} (canary {c['canary_runs']}, primary {c['primary_runs']})"
                for c in small
            )
        )
    if not cells:
        return Gate(
            "canary_category_regression",
            None,
            None,
            -lifts.max_category_regression,
            "skipped: no category served by both slots",
        )
    return regression_gate(
        "canary_category_regression",
        cells,
        lifts.max_category_regression,
        worst=lambda c: f"{c['category']} {c['pass_rate_diff']:+.3f}",
        regressed=lambda c: (
            f"{c['category']} {c['pass_rate_diff']:+.3f} (canary n={c['canary_runs']}, "
            f"primary n={c['primary_runs']})"
        ),
    )


def _latency_gate(by_slot: dict[str, list[SlotRun]], lifts: EvaluationLifts) -> Gate:
    return latency_gate(
        "canary_latency",
        {s: [r.latency_s for r in by_slot[s]] for s in SLOTS},
        candidate="canary",
        incumbent="primary",
        max_ratio=lifts.max_latency_ratio,
        label_groups=True,
    )


def _cost_gate(by_slot: dict[str, list[SlotRun]], lifts: EvaluationLifts, notes: list[str]) -> Gate:
    return cost_gate(
        "canary_cost",
        {s: [r.cost_usd for r in by_slot[s]] for s in SLOTS},
        candidate="canary",
        incumbent="primary",
        max_ratio=lifts.max_cost_ratio,
        notes=notes,
        label_groups=True,
    )


__all__ = [
    "CANARY_TRAFFIC",
    "INSUFFICIENT",
    "CanaryAnalysis",
    "SlotRun",
    "canary_analysis",
    "farrington_manning",
    "load_slot_runs",
    "slot_run",
]
