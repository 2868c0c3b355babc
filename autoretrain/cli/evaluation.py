"""`autoretrain eval show [ID] [--json]`: the last (or a given) incumbent-vs-candidate comparison."""

from __future__ import annotations

import json

import click


@click.group("eval")
def eval_() -> None:
    """Show evaluation comparisons."""


@eval_.command("show")
@click.argument("evaluation_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def show(evaluation_id: str | None, as_json: bool) -> None:
    """Print the comparison EVALUATION_ID, or the most recent one."""
    from autoretrain.cli.models import read_registry
    from autoretrain.evaluation.report import load_comparison, render_markdown, report_dir
    from autoretrain.project import Project

    project = Project.open()
    settings = project.settings
    with read_registry(project) as (store, _):
        comparison = load_comparison(store.con, evaluation_id) if store is not None else None
    if comparison is None:
        what = f"evaluation {evaluation_id!r}" if evaluation_id else "any evaluation"
        raise click.ClickException(
            f"no record of {what} in {settings.paths.database}; "
            "run the candidate_evaluation asset (or `autoretrain loop`) first"
        )
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2, sort_keys=True))
        return
    folder = report_dir(settings.paths.reports, comparison.evaluation_id or "")
    chart = folder / "pass_rate.png"
    click.echo(render_markdown(comparison, chart_name=str(chart) if chart.exists() else None))
