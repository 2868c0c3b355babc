"""Dagster wiring for the regression gate: `candidate_evaluation[candidate]` and its blocking
`regression_gate` check."""

import base64

import dagster as dg

from autoretrain import stages
from autoretrain.defs.automation import on_new_upstream
from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import AutoretrainConfig


@dg.asset(
    deps=["candidate_model"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="evaluation",
    check_specs=[dg.AssetCheckSpec("regression_gate", asset="candidate_evaluation", blocking=True)],
    automation_condition=on_new_upstream(),
)
def candidate_evaluation(context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig):
    """Incumbent and candidate replay both evaluation tiers (in-distribution instances and
    held-out scenarios) with the same instances and seeds; paired per-instance statistics per
    tier and category decide. The report and chart are attached."""
    settings = autoretrain.settings()
    comparison = stages.evaluate_candidate(settings, context.partition_key, progress=False)
    report_dir = settings.paths.reports / comparison.evaluation_id
    markdown = (report_dir / "report.md").read_text() if (report_dir / "report.md").exists() else ""
    chart = report_dir / "pass_rate.png"
    meta = {
        "evaluation_id": comparison.evaluation_id,
        "decision": comparison.decision,
        "report": dg.MetadataValue.md(markdown or "(no report)"),
        "report_path": dg.MetadataValue.path(str(report_dir)),
    }
    if chart.exists():
        encoded = base64.b64encode(chart.read_bytes()).decode()
        meta["chart"] = dg.MetadataValue.md(
            f"![pass rate per category](data:image/png;base64,{encoded})"
        )
    yield dg.MaterializeResult(metadata=meta)
    failed = [g for g in comparison.reasons if g.passed is False]
    yield dg.AssetCheckResult(
        check_name="regression_gate",
        passed=comparison.decision == "promote",
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{g.name}: {g.detail or g.value}" for g in failed)
        or "every configured lift cleared",
        metadata={
            "decision": comparison.decision,
            "evaluation_id": comparison.evaluation_id,
            "gates": dg.MetadataValue.md(_gate_table(comparison.reasons)),
        },
    )


def _gate_table(gates: list) -> str:
    rows = ["| gate | passed | value | threshold |", "|---|---|---|---|"]
    for g in gates:
        mark = "skipped" if g.passed is None else ("yes" if g.passed else "**no**")
        rows.append(f"| {g.name} | {mark} | {g.value} | {g.threshold} |")
    return "\n".join(rows)
