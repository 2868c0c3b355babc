"""Dagster wiring for deployment, one partition per candidate:

    candidate_evaluation ─(regression_gate passed)─► canary_deployment ─► canary_traffic
        ─(canary_analysis passed)─► primary_deployment

Each deployment re-reads its own candidate's recorded decisions before a slot moves
(deploy/clearance.py); a refusal fails the step and changes nothing.
"""

import dagster as dg

from autoretrain.defs.automation import gated, on_new_upstream
from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import ProjectResource
from autoretrain.project import Project

CANARY_ANALYSIS = dg.AssetCheckSpec(
    "canary_analysis",
    asset="canary_traffic",
    partitions_def=candidate_partitions,
    description=(
        "On live traffic split between the slots, this candidate in canary is not worse than "
        "primary beyond ε (non-inferiority), per category, latency and cost. Primary waits for "
        "it to pass for this candidate."
    ),
)


def _deploy(context: dg.AssetExecutionContext, project: Project, slot: str) -> dg.MaterializeResult:
    from autoretrain.deploy.clearance import ClearanceRefused

    try:
        entry = project.deploy_candidate(context.partition_key, slot)
    except ClearanceRefused as refused:
        raise dg.Failure(
            description=f"{slot} not changed: {refused}",
            metadata={"candidate": context.partition_key, "slot": slot},
        ) from refused
    ledger = entry.to_dict() if entry else None
    return dg.MaterializeResult(
        metadata={
            "slot": slot,
            "version": context.partition_key,
            "evaluation_id": (ledger or {}).get("evaluation_id") or "",
            "ledger": dg.MetadataValue.md(ledger_table(ledger) if ledger else f"already {slot}"),
        }
    )


@dg.asset(
    deps=["candidate_evaluation"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="deployment",
    automation_condition=gated(),
)
def canary_deployment(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """The candidate in the canary slot, once its own regression gate passed: it now answers
    the configured share of traffic, which `canary_traffic` analyses before primary."""
    return _deploy(context, autoretrain.project(), "canary")


@dg.asset(
    deps=["canary_deployment"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="deployment",
    check_specs=[CANARY_ANALYSIS],
    automation_condition=on_new_upstream(),
)
def canary_traffic(context: dg.AssetExecutionContext, autoretrain: ProjectResource):
    """Live traffic on the canary: self-play split between canary and primary, ingested, until
    the analysis has the runs it needs; then canary analysis decides (a check on this asset)."""
    from autoretrain.evaluation.report import gates_markdown

    result = autoretrain.project().canary_traffic(context.partition_key, progress=True)
    analysis = result.analysis
    slots = {s["slot"]: s for s in analysis.slots}
    yield dg.MaterializeResult(
        metadata={
            "runs_played": result.runs_played,
            "rounds": result.rounds,
            "canary_runs": int(slots.get("canary", {}).get("runs", 0)),
            "primary_runs": int(slots.get("primary", {}).get("runs", 0)),
            "verdict": "pass" if analysis.passed else "fail",
        }
    )
    yield dg.AssetCheckResult(
        check_name="canary_analysis",
        passed=analysis.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=analysis.summary(),
        metadata={
            "gates": dg.MetadataValue.md(gates_markdown(analysis.reasons)),
            "analysis": dg.MetadataValue.json(analysis.to_dict()),
        },
    )


@dg.asset(
    deps=["canary_traffic"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="deployment",
    automation_condition=gated(),
)
def primary_deployment(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """The candidate in the primary slot (recorded in the promotion ledger), once its regression
    gate and its canary analysis passed. `autoretrain rollback` returns primary to the version
    promoted there before it."""
    return _deploy(context, autoretrain.project(), "primary")


def ledger_table(entry: dict) -> str:
    rows = ["| field | value |", "|---|---|"]
    rows += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in entry.items() if v is not None]
    return "\n".join(rows)
