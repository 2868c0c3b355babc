"""Reference demonstrations for the scenarios the incumbent cannot solve yet.

Self-play only teaches what the model sometimes gets right: a scenario at 0% never yields a
verified run, so a loop round cannot move it. The catalog's reference solution (its tool calls
with the real tools' results, then its answer) is the other way in real teams use. These
become runs like any other (traffic `demo`, verified by the reference), so the dataset build
redacts, deduplicates, splits and checks them for evaluation leakage like self-play's, and the
manifest counts them by scenario.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from autoretrain.runs.schema import Run, Verification

WORKFLOW = "reference"
VERIFIER = "catalog_reference"


def reference_runs(
    catalog: Any,
    scenario_ids: Iterable[str],
    per_scenario: int,
    exclude: Collection[str] = (),
    *,
    agent_version: str = "unknown",
) -> list[Run]:
    """`per_scenario` reference runs of each scenario (distinct prompts, none in `exclude`)."""
    at = datetime(2000, 1, 1, tzinfo=UTC)  # fixed: the same catalog gives the same bytes
    runs: list[Run] = []
    for scenario_id in sorted(set(scenario_ids)):
        for instance in catalog.reference_instances(scenario_id, per_scenario, exclude):
            runs.append(
                Run(
                    run_id=f"reference-{scenario_id}-{instance.seed}",
                    scenario_id=scenario_id,
                    instance_hash=instance.instance_hash,
                    instance_seed=instance.seed,
                    category=instance.category,
                    workflow=WORKFLOW,
                    agent_version=agent_version,
                    provider="catalog",
                    model="reference",
                    traffic="demo",
                    status="succeeded",
                    started_at=at,
                    ended_at=at,
                    messages=instance.reference_messages(),
                    tools=instance.tools,
                    verifications=[Verification(verifier=VERIFIER, passed=True, score=1.0)],
                    final_answer=instance.reference_answer,
                    tags={"source": "catalog reference solution"},
                )
            )
    return runs
