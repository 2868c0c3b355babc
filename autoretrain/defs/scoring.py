"""Dagster wiring for judging: `scored_runs[day]` and `promotion_decisions[day]`.

No automation condition of their own: the `ingest` job (what the landing-zone sensor and the
loop run, and what a backfill should select) materializes raw_runs, scored_runs and
promotion_decisions together. Eager conditions here re-requested both after every ingest run,
queueing duplicate judging runs behind the duckdb pool under the daemon."""

import dagster as dg

from autoretrain.defs.partitions import daily_partitions
from autoretrain.defs.resources import ProjectResource


def _day_range(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key_range
    return keys.start, keys.end


@dg.asset(
    deps=["raw_runs"],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="judging",
    kinds={"duckdb"},
)
def scored_runs(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """Per-run metrics — verified and score, quality, recoveries, escalations, turns, latency,
    tokens, cost, budget overruns — stamped with the scorer version, so a backfill over
    history re-scores it when the verifier or judge changes."""
    start, end = _day_range(context)
    report = autoretrain.project().score_days(start, end)
    return dg.MaterializeResult(metadata={k: _meta(v) for k, v in report.to_dict().items()})


@dg.asset(
    deps=["scored_runs"],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="judging",
    kinds={"duckdb"},
)
def promotion_decisions(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """PromotionGuardAgent's verdict per run — promote, reject or needs_human — with the gate
    that decided and a rationale. Human reviews (`autoretrain review`) win over these."""
    start, end = _day_range(context)
    report = autoretrain.project().decide_days(start, end)
    return dg.MaterializeResult(metadata={k: _meta(v) for k, v in report.to_dict().items()})


def _meta(value: object) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, dict | list):
        return dg.MetadataValue.json(value)
    return dg.MetadataValue.text(str(value))
