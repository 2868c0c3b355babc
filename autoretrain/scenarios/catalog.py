"""The loaded catalog: scenarios by id, and the instances demonstrations, self-play and
evaluation draw from it.

Demonstrations, self-play and the two evaluation tiers each draw from their own seed range;
the in-distribution tier takes at most `EVAL_SPACE_SHARE` of a small scenario's instance space.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from autoretrain.agents.tools import ToolRegistry
from autoretrain.scenarios.model import SEED_RANGES, Scenario, ScenarioInstance
from autoretrain.scenarios.render import render_instance

# The in-distribution tier never takes more than this share of a scenario's instance space.
EVAL_SPACE_SHARE = 0.25
# Distinct instances are drawn from consecutive seeds; give up after this many per wanted one.
_DRAWS_PER_INSTANCE = 8


class Catalog:
    def __init__(
        self,
        scenarios: list[Scenario],
        root: Path,
        hash: str,
        registry: ToolRegistry,
        tool_refs: list[dict] | None = None,
    ):
        self.scenarios = scenarios
        # The settings' tools it was loaded with: a process that reloads the catalog (a
        # self-play worker) needs them to get the same registry and hash.
        self.tool_refs = list(tool_refs or [])
        self.root = root
        self.hash = hash
        self.registry = registry
        self._by_id = {s.id: s for s in scenarios}
        self._specs = {s.id: registry.specs(list(s.tools)) for s in scenarios}
        self._eval_cache: dict[tuple[str, int], list[ScenarioInstance]] = {}

    def __len__(self) -> int:
        return len(self.scenarios)

    def get(self, scenario_id: str) -> Scenario:
        try:
            return self._by_id[scenario_id]
        except KeyError:
            raise KeyError(
                f"no scenario {scenario_id!r} in {self.root}; "
                f"run `autoretrain scenarios list` to see the ids"
            ) from None

    @property
    def train_scenarios(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "train"]

    @property
    def eval_scenarios(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "eval"]

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.scenarios})

    @cached_property
    def _tables(self) -> dict[str, list[str]]:
        return self.registry.tables.keys if self.registry.tables else {}

    def space_size(self, scenario_id: str) -> int:
        return self.get(scenario_id).space_size(self._tables)

    def instance(self, scenario_id: str, seed: int) -> ScenarioInstance:
        scenario = self.get(scenario_id)
        return render_instance(scenario, seed, self.registry, self._specs[scenario.id])

    def _distinct(
        self, scenario: Scenario, start: int, stop: int, count: int, exclude: Collection[str]
    ) -> list[ScenarioInstance]:
        """Up to `count` instances with distinct prompts from consecutive seeds in [start, stop)."""
        found: list[ScenarioInstance] = []
        seen = set(exclude)
        for seed in range(start, min(stop, start + count * _DRAWS_PER_INSTANCE)):
            if len(found) == count:
                break
            instance = self.instance(scenario.id, seed)
            if instance.instance_hash not in seen:
                seen.add(instance.instance_hash)
                found.append(instance)
        return found

    def reference_instances(
        self, scenario_id: str, count: int, exclude: Collection[str] = ()
    ) -> list[ScenarioInstance]:
        """Distinct instances of one train scenario from the upper half of the demo seed range,
        which the bootstrap's demonstrations (drawn from its start) never reach: reference
        solutions for what the incumbent cannot solve yet (curation/reference.py)."""
        start, stop = SEED_RANGES["demo"]
        return self._distinct(self.get(scenario_id), (start + stop) // 2, stop, count, exclude)

    def demo_instances(
        self, per_scenario: int, exclude: Collection[str] = ()
    ) -> list[ScenarioInstance]:
        """Distinct instances of every train scenario from the demo seed range; pass
        `exclude=catalog.evaluation_hashes(n)` to keep evaluation prompts out."""
        start, stop = SEED_RANGES["demo"]
        return [
            instance
            for scenario in self.train_scenarios
            for instance in self._distinct(scenario, start, stop, per_scenario, exclude)
        ]

    def selfplay_instances(
        self,
        n: int,
        seed: int,
        weights: dict[str, float] | None = None,
        exclude: Collection[str] = (),
    ) -> list[ScenarioInstance]:
        """`n` instances of train scenarios from the self-play seed range. `weights` maps a
        scenario id or a category to a relative weight (an id wins over its category; unnamed
        scenarios weigh their catalog `selfplay_weight`, 1 unless set). Instances whose hash is
        in `exclude` are redrawn."""
        scenarios = self.train_scenarios
        chosen_weights = self._weights(scenarios, weights or {})
        if not scenarios or sum(chosen_weights) <= 0:
            raise ValueError("no train scenario has a positive self-play weight")
        rng = random.Random(f"selfplay#{seed}")
        start, stop = SEED_RANGES["selfplay"]
        excluded = set(exclude)
        out: list[ScenarioInstance] = []
        for _ in range(n):
            for _attempt in range(_DRAWS_PER_INSTANCE * 4):
                (scenario,) = rng.choices(scenarios, weights=chosen_weights)
                instance = self.instance(scenario.id, rng.randrange(start, stop))
                if instance.instance_hash not in excluded:
                    out.append(instance)
                    break
        return out

    def _weights(self, scenarios: list[Scenario], weights: dict[str, float]) -> list[float]:
        known = {s.id for s in scenarios} | {s.category for s in scenarios}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ValueError(
                f"self-play weights name unknown scenarios or categories: {unknown}; "
                f"categories are {self.categories()}"
            )
        return [
            float(weights.get(s.id, weights.get(s.category, s.selfplay_weight))) for s in scenarios
        ]

    def eval_instances(
        self, tier: Literal["in_distribution", "held_out"], per_scenario: int
    ) -> list[ScenarioInstance]:
        """in_distribution: train scenarios, seeds from the eval range (at most a quarter of a
        small scenario's instance space); held_out: eval scenarios. Deterministic."""
        if tier not in ("in_distribution", "held_out"):
            raise ValueError(f"unknown evaluation tier {tier!r}; use in_distribution or held_out")
        key = (tier, per_scenario)
        if key not in self._eval_cache:
            start, stop = SEED_RANGES["eval"]
            instances: list[ScenarioInstance] = []
            for scenario in (
                self.train_scenarios if tier == "in_distribution" else self.eval_scenarios
            ):
                count = per_scenario
                if tier == "in_distribution":
                    share = int(scenario.space_size(self._tables) * EVAL_SPACE_SHARE)
                    count = min(per_scenario, max(share, 1))
                instances.extend(self._distinct(scenario, start, stop, count, ()))
            self._eval_cache[key] = instances
        return list(self._eval_cache[key])

    def evaluation_hashes(self, per_scenario: int) -> set[str]:
        return {
            instance.instance_hash
            for tier in ("in_distribution", "held_out")
            for instance in self.eval_instances(tier, per_scenario)  # type: ignore[arg-type]
        }

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "id": s.id,
                "category": s.category,
                "split": s.split,
                "tags": list(s.tags),
                "tools": list(s.tools),
                "calls": len(s.reference_calls),
                "expected": s.expected.get("kind"),
                "planner": s.planner,
                "selfplay_weight": s.selfplay_weight,
                "file": s.file,
            }
            for s in self.scenarios
        ]
