"""Dagster wiring for deployment: `canary_deployment[candidate]` (guarded by the regression
gate) and `primary_deployment[candidate]` (guarded by the `canary_analysis` check)."""

import dagster as dg

from autoretrain import stages
from autoretrain.defs.automation import gated
from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import AutoretrainConfig


def _evaluation_id(context: dg.AssetExecutionContext) -> str | None:
    """The evaluation that let this candidate through, for the ledger entry."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("candidate_evaluation"), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    event = records[0].asset_materialization if records else None
    value = event.metadata.get("evaluation_id") if event else None
    return str(value.value) if value is not None else None


@dg.asset(
    deps=["candidate_evaluation"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="deployment",
    automation_condition=gated(),
)
def canary_deployment(
    context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig
) -> dg.MaterializeResult:
    """The candidate in the canary slot: it now answers the configured share of self-play
    traffic, which `canary_analysis` compares with primary before anything goes further."""
    evaluation_id = _evaluation_id(context)
    entry = stages.deploy(
        autoretrain.settings(),
        context.partition_key,
        "canary",
        "passed the regression gate",
        evaluation_id,
    )
    return dg.MaterializeResult(
        metadata={
            "slot": "canary",
            "version": context.partition_key,
            "evaluation_id": evaluation_id or "",
            "ledger": str(entry.to_dict() if entry else "already in canary"),
        }
    )


@dg.asset_check(
    asset=canary_deployment,
    blocking=True,
    description="Canary is not worse than primary beyond ε on live self-play traffic.",
)
def canary_analysis(
    context: dg.AssetCheckExecutionContext, autoretrain: AutoretrainConfig
) -> dg.AssetCheckResult:
    analysis = stages.analyze_canary(autoretrain.settings())
    return dg.AssetCheckResult(
        passed=analysis.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=analysis.summary(),
        metadata={"analysis": dg.MetadataValue.json(analysis.to_dict())},
    )


@dg.asset(
    deps=["canary_deployment"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="deployment",
    automation_condition=gated(),
)
def primary_deployment(
    context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig
) -> dg.MaterializeResult:
    """The candidate in the primary slot (recorded in the promotion ledger). `autoretrain
    rollback` returns primary to the version promoted there before it."""
    entry = stages.deploy(
        autoretrain.settings(),
        context.partition_key,
        "primary",
        "passed the regression gate and canary analysis",
    )
    return dg.MaterializeResult(
        metadata={
            "slot": "primary",
            "version": context.partition_key,
            "ledger": str(entry.to_dict() if entry else "already primary"),
        }
    )
