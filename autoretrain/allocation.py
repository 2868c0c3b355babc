"""Measured self-play allocation: send self-play where a verified run can teach the most.

Each iteration, from the incumbent's measured pass rate per train scenario (its earlier
self-play and evaluation runs in the store, plus a small pilot when those are too few):

- a scenario it sometimes solves weighs p(1 - p): the variance of its outcome, highest where
  the model is unsure, so the most runs go where verified examples are new to it;
- a solved behaviour keeps a floor, so every dataset rehearses what the incumbent already does
  (a category with no examples in a round is the one it forgets);
- scenarios it never solved share an exploration budget (their runs rarely verify, but the
  ones that do are the only way in for self-play), and can be sent to a teacher model instead;
- categories the last rejected round regressed get their weight multiplied (`boost`).

Plain functions over counts; `Project.selfplay` reads the store and the gate's last answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_TEACH = 0.25  # p(1 - p) at p = 0.5


@dataclass(frozen=True)
class AllocationPolicy:
    """How the runs of one self-play round are shared out. Settings: `selfplay.allocation`."""

    # Of a round's runs, played evenly first when the store knows too little of the incumbent.
    pilot_share: float = 0.1
    # Runs per scenario the store must hold for the incumbent before they alone are trusted.
    min_observations: int = 30
    # A solved (or hopeless-looking) scenario's weight never drops below this share of the
    # largest possible teaching value, so rehearsal examples keep coming.
    floor: float = 0.2
    # The share of the round for scenarios the incumbent never solved, split evenly among them.
    explore_share: float = 0.1
    # Multiplier for the categories the last rejected round regressed.
    regression_boost: float = 3.0


@dataclass
class Allocation:
    """Weights per scenario id (summing to 1), and the measurements behind them."""

    weights: dict[str, float]
    pass_rates: dict[str, float | None]
    observations: dict[str, int]
    # Never verified in `min_observations` runs or more (whatever weighs them).
    unsolved: list[str] = field(default_factory=list)
    boosted: list[str] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "weights": {k: round(v, 4) for k, v in sorted(self.weights.items())},
            "pass_rates": {
                k: (round(v, 4) if v is not None else None)
                for k, v in sorted(self.pass_rates.items())
            },
            "observations": dict(sorted(self.observations.items())),
            "unsolved": sorted(self.unsolved),
            "boosted_categories": sorted(self.boosted),
        }


def allocate(
    scenarios: Iterable[tuple[str, str]],
    counts: Mapping[str, tuple[int, int]],
    policy: AllocationPolicy = AllocationPolicy(),
    *,
    overrides: Mapping[str, float] | None = None,
    boost_categories: Iterable[str] = (),
    source: str = "",
) -> Allocation:
    """Weights for `scenarios` ((id, category) pairs) from `counts` (id → (runs, verified)).

    A scenario with fewer than `policy.min_observations` runs and none verified is unknown, not
    unsolved: it weighs as much as the most uncertain scenario, so it gets measured. `overrides`
    (scenario id or category → weight, the settings' `selfplay.category_weights`) replace the
    measured teaching value of what they name."""
    overrides = dict(overrides or {})
    boost = set(boost_categories)
    teach: dict[str, float] = {}
    rates: dict[str, float | None] = {}
    seen: dict[str, int] = {}
    unsolved: list[str] = []
    category_of: dict[str, str] = {}
    for scenario_id, category in scenarios:
        category_of[scenario_id] = category
        runs, verified = counts.get(scenario_id, (0, 0))
        seen[scenario_id] = runs
        rates[scenario_id] = verified / runs if runs else None
        if verified == 0 and runs >= policy.min_observations:
            unsolved.append(scenario_id)
            continue
        if verified == 0:
            value = MAX_TEACH
        else:
            # Smoothed, so one lucky run of ten does not look like certainty either way.
            p = (verified + 0.5) / (runs + 1.0)
            value = max(p * (1.0 - p), policy.floor * MAX_TEACH)
        teach[scenario_id] = value
    explored = list(unsolved)  # never solved: the exploration share, unless named below
    for scenario_id, category in category_of.items():
        named = overrides.get(scenario_id, overrides.get(category))
        if named is not None:
            if scenario_id in explored:
                explored.remove(scenario_id)
            teach[scenario_id] = float(named) * MAX_TEACH
    boosted = sorted({category_of[s] for s in teach if category_of[s] in boost})
    for scenario_id in teach:
        if category_of[scenario_id] in boost:
            teach[scenario_id] *= policy.regression_boost

    weights: dict[str, float] = {}
    explore = policy.explore_share if explored else 0.0
    total = sum(teach.values())
    if total <= 0:
        explore = 1.0 if explored else 0.0
    for scenario_id, value in teach.items():
        weights[scenario_id] = (1.0 - explore) * value / total if total > 0 else 0.0
    for scenario_id in explored:
        weights[scenario_id] = explore / len(explored)
    if not any(weights.values()):
        raise ValueError("no train scenario has a positive self-play weight")
    return Allocation(weights, rates, seen, unsolved, boosted, source)


def needs_pilot(
    scenario_ids: Iterable[str], counts: Mapping[str, tuple[int, int]], policy: AllocationPolicy
) -> bool:
    """True when some scenario has too few runs in the store to be judged on them alone."""
    return any(counts.get(s, (0, 0))[0] < policy.min_observations for s in scenario_ids)


def merge_counts(
    *sources: Mapping[str, tuple[int, int]],
) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for counts in sources:
        for key, (runs, verified) in counts.items():
            have = out.get(key, (0, 0))
            out[key] = (have[0] + runs, have[1] + verified)
    return out


def measured_counts(con: Any, model: str) -> dict[str, tuple[int, int]]:
    """scenario id → (runs, verified runs) of `model`'s self-play and evaluation in the store."""
    rows = con.execute(
        """
        SELECT scenario_id, count(*), count(*) FILTER (WHERE status = 'succeeded')
        FROM runs
        WHERE model = ? AND traffic IN ('selfplay', 'evaluation') AND scenario_id IS NOT NULL
        GROUP BY scenario_id
        """,
        [model],
    ).fetchall()
    return {scenario_id: (int(n), int(ok)) for scenario_id, n, ok in rows}
