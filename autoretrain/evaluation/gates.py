"""Promotion gates shared by the replay comparison and the canary analysis.

A `Gate` is one criterion of a verdict; the replay (`compare.py`, candidate against incumbent)
and the canary (`canary.py`, canary slot against primary) check the same kinds of gate against
the same budgets: a pass-rate regression per category, a latency ratio and a cost ratio. The
helpers here build those gates once, so both verdicts round, skip and word them alike, and turn
a report into plain JSON the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np


@dataclass
class Gate:
    """One promotion criterion. `passed` is None when the gate was skipped (see `detail`)."""

    name: str
    passed: bool | None
    value: float | None
    threshold: float | None
    detail: str = ""


def ratio(candidate: float, incumbent: float) -> float:
    """A budget ratio (candidate / incumbent); a free incumbent makes any cost infinite."""
    if incumbent > 0:
        return candidate / incumbent
    return 1.0 if candidate <= 0 else math.inf


def round_diff(x: float) -> float:
    # Differences of rates are sums of fractions: round away float noise before comparing
    # with thresholds such as 0.03, so an exact 3-point lift is not a 2.9999999 miss.
    return round(x, 12)


def regression_gate(
    name: str,
    cells: Sequence[Mapping[str, Any]],
    max_regression: float,
    *,
    worst: Callable[[Mapping[str, Any]], str],
    regressed: Callable[[Mapping[str, Any]], str],
) -> Gate:
    """Fails when any cell's `pass_rate_diff` (a point estimate) is below -max_regression;
    the value is the worst cell's difference. `worst` and `regressed` word one cell."""
    worst_cell = min(cells, key=lambda c: c["pass_rate_diff"])
    broken = [c for c in cells if round_diff(c["pass_rate_diff"]) < -max_regression]
    detail = f"worst: {worst(worst_cell)}"
    if broken:
        detail = "regressed: " + ", ".join(regressed(c) for c in broken)
    return Gate(name, not broken, round_diff(worst_cell["pass_rate_diff"]), -max_regression, detail)


def latency_gate(
    name: str,
    latencies: Mapping[str, Sequence[float]],
    *,
    candidate: str,
    incumbent: str,
    max_ratio: float,
    label_groups: bool = False,
) -> Gate:
    """p50 latency of `candidate` over `incumbent` (keys of `latencies`) within `max_ratio`.
    `label_groups` names each side in the detail ("0.120s (primary)")."""
    p50 = {key: float(np.percentile(values, 50)) for key, values in latencies.items()}
    value = ratio(p50[candidate], p50[incumbent])

    def shown(key: str) -> str:
        return f"{p50[key]:.3f}s" + (f" ({key})" if label_groups else "")

    return Gate(
        name,
        value <= max_ratio,
        value,
        max_ratio,
        f"p50 latency {shown(incumbent)} -> {shown(candidate)}",
    )


def cost_gate(
    name: str,
    costs: Mapping[str, Sequence[float | None]],
    *,
    candidate: str,
    incumbent: str,
    max_ratio: float,
    notes: list[str],
    label_groups: bool = False,
) -> Gate:
    """Mean cost per run of `candidate` over `incumbent` within `max_ratio`; skipped (with a
    note) when any run is unpriced (cost None), since a partial mean would mislead."""
    unpriced = {key: sum(c is None for c in values) for key, values in costs.items()}
    if any(unpriced.values()):
        detail = (
            "skipped: unpriced runs (" + ", ".join(f"{k} {v}" for k, v in unpriced.items()) + ")"
        )
        notes.append(f"cost gate {detail}; configure `pricing` to enforce max_cost_ratio")
        return Gate(name, None, None, max_ratio, detail)
    mean = {key: float(np.mean(values)) for key, values in costs.items()}
    value = ratio(mean[candidate], mean[incumbent])

    def shown(key: str) -> str:
        return f"${mean[key]:.6f}" + (f" ({key})" if label_groups else "")

    return Gate(
        name,
        value <= max_ratio,
        value,
        max_ratio,
        f"mean cost per run {shown(incumbent)} -> {shown(candidate)}",
    )


def usage_stats(
    latencies: Sequence[float], tokens: Sequence[int], costs: Sequence[float | None]
) -> dict[str, Any]:
    """The latency, token and cost columns of a model's (or a slot's) row in either report:
    what the latency and cost gates judge, summarised. The cost is None unless every run is
    priced."""
    latency = np.array(latencies)
    priced = [c for c in costs if c is not None]
    return {
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "tokens_per_run": float(np.mean(tokens)),
        "cost_per_run_usd": float(np.mean(priced)) if len(priced) == len(costs) else None,
        "unpriced_runs": len(costs) - len(priced),
    }


def jsonable(value: Any) -> Any:
    """A report as plain JSON values: numpy scalars unwrapped, non-finite floats as None,
    datetimes as ISO strings, tuples as lists."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


__all__ = [
    "Gate",
    "cost_gate",
    "jsonable",
    "latency_gate",
    "ratio",
    "regression_gate",
    "round_diff",
    "usage_stats",
]
