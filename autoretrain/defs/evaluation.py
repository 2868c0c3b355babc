"""Dagster wiring for the regression gate: `candidate_evaluation[candidate]` and its
`regression_gate` check, partitioned like the candidate it judges."""

import base64

import dagster as dg

from autoretrain.defs.automation import on_new_upstream
from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import ProjectResource

# Wide enough to read, narrow enough for the metadata dialog (the report's full-size PNG is
# linked beside it).
UI_CHART_DPI = 48

REGRESSION_GATE = dg.AssetCheckSpec(
    "regression_gate",
    asset="candidate_evaluation",
    partitions_def=candidate_partitions,
    description=(
        "This candidate against the incumbent on the same instances: a significant "
        "in-distribution lift, no held-out or per-category regression beyond ε, latency and "
        "cost within budget. Deployment waits for it to pass for this candidate."
    ),
)


@dg.asset(
    deps=["candidate_model"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="evaluation",
    check_specs=[REGRESSION_GATE],
    automation_condition=on_new_upstream(),
)
def candidate_evaluation(context: dg.AssetExecutionContext, autoretrain: ProjectResource):
    """Incumbent and candidate replay both evaluation tiers (in-distribution instances and
    held-out scenarios) with the same instances and seeds; paired per-instance statistics per
    tier and category decide. The report and chart are attached."""
    from autoretrain.evaluation.report import gates_markdown, render_chart, render_markdown

    project = autoretrain.project()
    settings = project.settings
    comparison = project.evaluate_candidate(context.partition_key, progress=True)
    report_dir = settings.paths.reports / comparison.evaluation_id
    chart = base64.b64encode(render_chart(comparison, dpi=UI_CHART_DPI)).decode()
    yield dg.MaterializeResult(
        metadata={
            "evaluation_id": comparison.evaluation_id,
            "decision": comparison.decision,
            "incumbent": comparison.incumbent,
            "report": dg.MetadataValue.md(render_markdown(comparison)),
            "chart": dg.MetadataValue.md(
                f"![pass rate per category](data:image/png;base64,{chart})"
            ),
            "report_path": dg.MetadataValue.path(str(report_dir)),
        }
    )
    failed = [g for g in comparison.reasons if g.passed is False]
    # ERROR but not blocking: a rejection is the gate's answer, not a crashed run; automation
    # and the deployment step both read this candidate's result (defs/automation.py).
    yield dg.AssetCheckResult(
        check_name="regression_gate",
        passed=comparison.decision == "promote",
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{comparison.decision}: "
            + (
                "; ".join(f"{g.name}: {g.detail or g.value}" for g in failed)
                or "every lift cleared"
            )
        ),
        metadata={
            "decision": comparison.decision,
            "evaluation_id": comparison.evaluation_id,
            "gates": dg.MetadataValue.md(gates_markdown(comparison.reasons)),
        },
    )
