"""Paired comparison of a candidate against the incumbent, and the promotion decision.

Input: one row per (instance, sample, model role) — the replay harness's output — as a list of
mappings or anything with `.to_dicts()` (a polars DataFrame). Columns (RESULT_COLUMNS):
`instance_hash, scenario_id, category, tier, sample, role, passed, score, n_recoveries,
escalated, latency_s, total_tokens, cost_usd` (cost may be None: an unpriced model).

Rows pair on (tier, instance_hash, sample). When an instance is sampled k > 1 times, its samples
are not independent evidence: every test and interval works on per-instance means (a cluster
bootstrap, and a sign test that reduces to McNemar when k = 1), and the number of *distinct*
instances is reported beside the number of runs.

The decision promotes only when every gate passes; a gate that cannot be measured (cost with
unpriced runs) is skipped with a note, and an empty, partial or failed evaluation is a reject.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from autoretrain.evaluation.gates import (
    Gate,
    cost_gate,
    jsonable,
    latency_gate,
    regression_gate,
    round_diff,
    usage_stats,
)
from autoretrain.settings import EvaluationLifts

ROLES = ("incumbent", "candidate")
TIERS = ("in_distribution", "held_out")
RESULT_COLUMNS = (
    "instance_hash",
    "scenario_id",
    "category",
    "tier",
    "sample",
    "role",
    "passed",
    "score",
    "n_recoveries",
    "escalated",
    "latency_s",
    "total_tokens",
    "cost_usd",
)
ALL = "*"  # the category label of a whole-tier row
_MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class Result:
    instance_hash: str
    scenario_id: str
    category: str
    tier: str
    sample: int
    role: str
    passed: bool
    score: float
    n_recoveries: int
    escalated: bool
    latency_s: float
    total_tokens: int
    cost_usd: float | None


@dataclass
class Comparison:
    candidate: str
    incumbent: str
    decision: str  # "promote" | "reject"
    reasons: list[Gate]
    tiers: list[dict[str, Any]] = field(default_factory=list)  # per tier x role
    categories: list[dict[str, Any]] = field(default_factory=list)  # per tier x category x role
    paired: list[dict[str, Any]] = field(default_factory=list)  # per tier (x category) diffs
    notes: list[str] = field(default_factory=list)
    lifts: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    evaluation_id: str | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.reasons if g.passed is False]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        data = dict(data)
        data["reasons"] = [Gate(**g) for g in data.get("reasons", [])]
        return cls(**data)


def compare(
    results: Iterable[Mapping[str, Any]] | Any,
    *,
    candidate: str,
    incumbent: str,
    lifts: EvaluationLifts | None = None,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    error: str | None = None,
) -> Comparison:
    """Compare paired results and decide. `error` marks an evaluation that failed to run."""
    lifts = lifts or EvaluationLifts()
    base = {"candidate": candidate, "incumbent": incumbent, "lifts": lifts.model_dump()}
    if error:
        return Comparison(
            decision="reject",
            reasons=[Gate("evaluation_ran", False, None, None, f"evaluation failed: {error}")],
            **base,
        )
    rows = list(results.to_dicts()) if hasattr(results, "to_dicts") else list(results)
    parsed, problems = _parse(rows)
    integrity = _integrity_gates(parsed, problems, len(rows))
    if any(g.passed is False for g in integrity):
        return Comparison(decision="reject", reasons=integrity, **base)

    instances = _instances(parsed)
    confidence = 1.0 - lifts.significance
    paired = _paired_tables(instances, bootstrap_samples, confidence, seed)
    tiers, categories = _model_tables(parsed, paired)
    notes: list[str] = []
    gates = integrity + _decision_gates(parsed, paired, lifts, notes)
    if any(p["samples_per_instance"] > 1 for p in paired if p["category"] == ALL):
        notes.append(
            "several samples per instance: tests and intervals use per-instance means "
            "(cluster bootstrap; sign test over instances), so significance counts distinct "
            "instances, not runs"
        )
    decision = "promote" if all(g.passed is not False for g in gates) else "reject"
    return Comparison(
        decision=decision,
        reasons=gates,
        tiers=tiers,
        categories=categories,
        paired=paired,
        notes=notes,
        **base,
    )


# ---------------------------------------------------------------- exact tests


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    term, total = 1, 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return total / (1 << n)


def mcnemar(b: int, c: int) -> tuple[float, float]:
    """Two-sided exact and mid-p McNemar p-values from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0, 1.0
    k = min(b, c)
    tail = 2.0 * binomial_cdf_half(k, n)
    point = math.comb(n, k) / (1 << n)
    # mid-p counts half the probability of the observed table: 2 * (P(X < k) + P(X = k) / 2).
    return min(1.0, tail), min(1.0, tail - point)


# ---------------------------------------------------------------- parsing and integrity


def _parse(rows: list[Mapping[str, Any]]) -> tuple[list[Result], list[str]]:
    parsed: list[Result] = []
    problems: list[str] = []
    for i, row in enumerate(rows):
        missing = [c for c in RESULT_COLUMNS if c not in row]
        if missing:
            problems.append(f"row {i}: missing {', '.join(missing)}")
            continue
        if row["tier"] not in TIERS:
            problems.append(f"row {i}: tier {row['tier']!r} is not one of {TIERS}")
            continue
        if row["role"] not in ROLES:
            problems.append(f"row {i}: role {row['role']!r} is not one of {ROLES}")
            continue
        try:
            score = float(row["score"]) if row["score"] is not None else 0.0
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"score {score} outside [0, 1]")
            cost = row["cost_usd"]
            parsed.append(
                Result(
                    instance_hash=str(row["instance_hash"]),
                    scenario_id=str(row["scenario_id"]),
                    category=str(row["category"]),
                    tier=row["tier"],
                    sample=int(row["sample"]),
                    role=row["role"],
                    passed=bool(row["passed"]),
                    score=score,
                    n_recoveries=int(row["n_recoveries"] or 0),
                    escalated=bool(row["escalated"]),
                    latency_s=float(row["latency_s"]),
                    total_tokens=int(row["total_tokens"] or 0),
                    cost_usd=None if cost is None else float(cost),
                )
            )
        except (TypeError, ValueError) as exc:
            problems.append(f"row {i}: {exc}")
    return parsed, problems


def _integrity_gates(parsed: list[Result], problems: list[str], n_rows: int) -> list[Gate]:
    if n_rows == 0:
        return [Gate("non_empty", False, 0, None, "the evaluation produced no results")]
    gates = [Gate("non_empty", True, n_rows, None)]
    if problems:
        shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
        more = len(problems) - _MAX_PROBLEMS_SHOWN
        detail = shown + (f"; and {more} more" if more > 0 else "")
        gates.append(Gate("valid_rows", False, len(problems), 0, detail))
        return gates
    cells: dict[tuple[str, str, int], dict[str, Result]] = defaultdict(dict)
    duplicates, mismatched = [], []
    for r in parsed:
        key = (r.tier, r.instance_hash, r.sample)
        if r.role in cells[key]:
            duplicates.append(key)
            continue
        other = next(iter(cells[key].values()), None)
        if other is not None and (other.category, other.scenario_id) != (
            r.category,
            r.scenario_id,
        ):
            mismatched.append(key)
        cells[key][r.role] = r
    if duplicates or mismatched:
        detail = "; ".join(
            [f"duplicate row for {k}" for k in duplicates[:3]]
            + [f"roles disagree on scenario/category for {k}" for k in mismatched[:3]]
        )
        gates.append(Gate("valid_rows", False, len(duplicates) + len(mismatched), 0, detail))
        return gates
    gates.append(Gate("valid_rows", True, 0, 0))
    unpaired = [(k, next(iter(v))) for k, v in cells.items() if len(v) < len(ROLES)]
    if unpaired:
        examples = ", ".join(
            f"{t}/{h} sample {s} only by {role}" for (t, h, s), role in unpaired[:3]
        )
        gates.append(
            Gate(
                "paired",
                False,
                len(unpaired),
                0,
                f"{len(unpaired)} instance samples answered by one model only ({examples})",
            )
        )
    else:
        gates.append(Gate("paired", True, 0, 0))
    present = {r.tier for r in parsed}
    missing = [t for t in TIERS if t not in present]
    gates.append(
        Gate(
            "tiers_present",
            not missing,
            len(present),
            len(TIERS),
            f"missing tier(s): {', '.join(missing)}" if missing else "",
        )
    )
    return gates


# ---------------------------------------------------------------- statistics


@dataclass
class _Instance:
    tier: str
    category: str
    n_samples: int
    pass_mean: dict[str, float]
    score_mean: dict[str, float]


def _instances(parsed: list[Result]) -> list[_Instance]:
    grouped: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in parsed:
        grouped[(r.tier, r.instance_hash)].append(r)
    out = []
    for (tier, _), rows in sorted(grouped.items()):
        by_role = {role: [r for r in rows if r.role == role] for role in ROLES}
        out.append(
            _Instance(
                tier=tier,
                category=rows[0].category,
                n_samples=len(by_role["candidate"]),
                pass_mean={k: sum(r.passed for r in v) / len(v) for k, v in by_role.items()},
                score_mean={k: sum(r.score for r in v) / len(v) for k, v in by_role.items()},
            )
        )
    return out


def _paired_tables(
    instances: list[_Instance], bootstrap_samples: int, confidence: float, seed: int
) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[_Instance]] = defaultdict(list)
    for inst in instances:
        groups[(inst.tier, ALL)].append(inst)
        groups[(inst.tier, inst.category)].append(inst)
    return [
        _paired(tier, category, members, bootstrap_samples, confidence, seed)
        for (tier, category), members in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def _paired(
    tier: str,
    category: str,
    members: list[_Instance],
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    inc_pass = np.array([m.pass_mean["incumbent"] for m in members])
    cand_pass = np.array([m.pass_mean["candidate"] for m in members])
    inc_score = np.array([m.score_mean["incumbent"] for m in members])
    cand_score = np.array([m.score_mean["candidate"] for m in members])
    # A stable per-group stream: intervals do not depend on the order groups are computed in.
    rng = np.random.default_rng([seed, zlib.crc32(f"{tier}/{category}".encode())])
    boot = _cluster_bootstrap(
        np.stack([inc_pass, cand_pass, cand_pass - inc_pass, cand_score - inc_score]),
        bootstrap_samples,
        rng,
    )
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def interval(i: int) -> list[float]:
        return [float(np.quantile(boot[i], lo_q)), float(np.quantile(boot[i], hi_q))]

    b = int(np.sum(inc_pass > cand_pass))  # instances where the incumbent did better
    c = int(np.sum(cand_pass > inc_pass))
    p_exact, p_mid = mcnemar(b, c)
    return {
        "tier": tier,
        "category": category,
        "instances": len(members),
        "runs_per_model": int(sum(m.n_samples for m in members)),
        "samples_per_instance": max(m.n_samples for m in members),
        "incumbent_pass_rate": float(inc_pass.mean()),
        "incumbent_pass_rate_ci": interval(0),
        "candidate_pass_rate": float(cand_pass.mean()),
        "candidate_pass_rate_ci": interval(1),
        "pass_rate_diff": float(cand_pass.mean() - inc_pass.mean()),
        "pass_rate_diff_ci": interval(2),
        "score_diff": float(cand_score.mean() - inc_score.mean()),
        "score_diff_ci": interval(3),
        "incumbent_better": b,
        "candidate_better": c,
        "p_value_exact": p_exact,
        "p_value_mid": p_mid,
        "confidence": confidence,
    }


def _cluster_bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `values` (series x instances) over instances resampled with replacement; the
    same resample is used for every series, which keeps the pairing."""
    n = values.shape[1]
    out = np.empty((values.shape[0], n_boot))
    chunk = max(1, 2_000_000 // max(n, 1))  # bound memory for large evaluations
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[:, start:stop] = values[:, idx].mean(axis=2)
    return out


def _model_stats(rows: list[Result]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "instances": len({r.instance_hash for r in rows}),
        "pass_rate": float(np.mean([r.passed for r in rows])),
        "mean_score": float(np.mean([r.score for r in rows])),
        "recovery_rate": float(np.mean([r.n_recoveries > 0 for r in rows])),
        "recoveries_per_run": float(np.mean([r.n_recoveries for r in rows])),
        "escalation_rate": float(np.mean([r.escalated for r in rows])),
        **usage_stats(
            [r.latency_s for r in rows], [r.total_tokens for r in rows], [r.cost_usd for r in rows]
        ),
    }


def _model_tables(
    parsed: list[Result], paired: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cis = {
        (p["tier"], p["category"], role): p[f"{role}_pass_rate_ci"]
        for p in paired
        for role in ROLES
    }
    groups: dict[tuple[str, str, str], list[Result]] = defaultdict(list)
    for r in parsed:
        groups[(r.tier, ALL, r.role)].append(r)
        groups[("all", ALL, r.role)].append(r)
        groups[(r.tier, r.category, r.role)].append(r)
    tiers, categories = [], []
    for (tier, category, role), rows in sorted(groups.items()):
        row = {"tier": tier, "category": category, "role": role, **_model_stats(rows)}
        row["pass_rate_ci"] = cis.get((tier, category, role))
        (tiers if category == ALL else categories).append(row)
    return tiers, categories


# ---------------------------------------------------------------- the decision


def _decision_gates(
    parsed: list[Result],
    paired: list[dict[str, Any]],
    lifts: EvaluationLifts,
    notes: list[str],
) -> list[Gate]:
    whole = {p["tier"]: p for p in paired if p["category"] == ALL}
    ind, held = whole["in_distribution"], whole["held_out"]
    p_key = "p_value_mid" if lifts.significance_test == "mid_p" else "p_value_exact"
    ind_diff = round_diff(ind["pass_rate_diff"])
    held_diff = round_diff(held["pass_rate_diff"])
    gates = [
        Gate(
            "in_distribution_lift",
            ind_diff >= lifts.min_lift,
            ind_diff,
            lifts.min_lift,
            f"pass rate {ind['incumbent_pass_rate']:.3f} -> {ind['candidate_pass_rate']:.3f} "
            f"over {ind['instances']} distinct instances",
        ),
        Gate(
            "in_distribution_significance",
            ind["candidate_better"] > ind["incumbent_better"] and ind[p_key] <= lifts.significance,
            ind[p_key],
            lifts.significance,
            f"{lifts.significance_test} McNemar (two-sided): candidate better on "
            f"{ind['candidate_better']} instances, incumbent on {ind['incumbent_better']}",
        ),
        Gate(
            "held_out_regression",
            held_diff >= -lifts.max_heldout_regression,
            held_diff,
            -lifts.max_heldout_regression,
            f"pass rate {held['incumbent_pass_rate']:.3f} -> {held['candidate_pass_rate']:.3f} "
            f"over {held['instances']} distinct instances",
        ),
        _category_gate(paired, lifts, notes),
        _latency_gate(parsed, lifts),
        _cost_gate(parsed, lifts, notes),
    ]
    return gates


def _category_gate(paired: list[dict[str, Any]], lifts: EvaluationLifts, notes: list[str]) -> Gate:
    cells = [p for p in paired if p["category"] != ALL]
    small = [p for p in cells if p["instances"] < lifts.small_category_instances]
    if small:
        notes.append(
            f"{len(small)} category cell(s) have fewer than {lifts.small_category_instances} "
            "distinct instances; their regression check uses the point estimate and is noisy: "
            + ", ".join(f"{p['tier']}/{p['category']} (n={p['instances']})" for p in small)
        )
    return regression_gate(
        "category_regression",
        cells,
        lifts.max_category_regression,
        worst=lambda p: f"{p['tier']}/{p['category']} ({p['instances']} instances)",
        regressed=lambda p: (
            f"{p['tier']}/{p['category']} {p['pass_rate_diff']:+.3f} (n={p['instances']})"
        ),
    )


def _latency_gate(parsed: list[Result], lifts: EvaluationLifts) -> Gate:
    return latency_gate(
        "latency",
        {role: [r.latency_s for r in parsed if r.role == role] for role in ROLES},
        candidate="candidate",
        incumbent="incumbent",
        max_ratio=lifts.max_latency_ratio,
    )


def _cost_gate(parsed: list[Result], lifts: EvaluationLifts, notes: list[str]) -> Gate:
    return cost_gate(
        "cost",
        {role: [r.cost_usd for r in parsed if r.role == role] for role in ROLES},
        candidate="candidate",
        incumbent="incumbent",
        max_ratio=lifts.max_cost_ratio,
        notes=notes,
    )


__all__ = [
    "ALL",
    "RESULT_COLUMNS",
    "ROLES",
    "TIERS",
    "Comparison",
    "Gate",  # defined in gates.py; imported from here by the deploy and stage code
    "Result",
    "binomial_cdf_half",
    "compare",
    "mcnemar",
]
