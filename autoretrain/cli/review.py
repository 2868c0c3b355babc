"""`autoretrain review` (the queue), `review show RUN_ID`, `review decide RUN_ID promote|reject`."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


@contextmanager
def _connect(read_only: bool) -> Iterator[Any]:
    from autoretrain.project import Project
    from autoretrain.runs.store import StoreLocked

    project = Project.open()
    path = project.paths.database
    if not path.exists():
        raise click.ClickException(
            f"no run store at {path}: run `autoretrain ingest` (and score the days) first"
        )
    try:
        with project.store(read_only=read_only) as store:
            yield store.con
    except StoreLocked as exc:  # it waited; the message names the holder
        raise click.ClickException(str(exc)) from None


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def review(ctx: click.Context, as_json: bool) -> None:
    """List the runs that need a human decision (the guard's needs_human, not yet reviewed)."""
    if ctx.invoked_subcommand is not None:
        return
    from autoretrain.runs.review import review_queue

    with _connect(read_only=True) as con:
        queue = review_queue(con)
    rows = [{k: _plain(v) for k, v in row.items()} for row in queue.iter_rows(named=True)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No runs need a human decision.")
        return
    for row in rows:
        click.echo(
            f"{row['run_id']}  {row['day']}  {row['category'] or '-'}/{row['scenario_id'] or '-'}"
            f"  [{row['gate']}] {row['rationale']}"
        )
    click.echo(
        f"{len(rows)} run(s) need a decision: `autoretrain review show RUN_ID`, then "
        "`autoretrain review decide RUN_ID promote|reject --note ...`",
        err=True,
    )


@review.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The record and its decisions as JSON.")
def show(run_id: str, as_json: bool) -> None:
    """Show RUN_ID's transcript: roles, tool calls and results, verifier feedback, decisions."""
    from autoretrain.runs.review import (
        ReviewError,
        effective_decisions,
        load_run,
        render_transcript,
    )

    with _connect(read_only=True) as con:
        try:
            run = load_run(con, run_id)
        except ReviewError as exc:
            raise click.ClickException(str(exc)) from None
        decided = effective_decisions(con).filter(run_id=run_id)
    decision = (
        {k: _plain(v) for k, v in decided.row(0, named=True).items()} if len(decided) else None
    )
    if as_json:
        payload = {"run": json.loads(run.to_json()), "decision": decision}
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    click.echo(render_transcript(run))
    click.echo("")
    if decision is None:
        click.echo("decision: none yet (score and decide its day first)")
        return
    if decision["auto_decision"]:
        click.echo(
            f"guard: {decision['auto_decision']} [{decision['gate']}] {decision['rationale']}"
        )
    if decision["human_decision"]:
        click.echo(
            f"human: {decision['human_decision']} by {decision['reviewer']} at "
            f"{decision['reviewed_at']}: {decision['note']}"
        )


@review.command()
@click.argument("run_id")
@click.argument("decision", type=click.Choice(["promote", "reject"]))
@click.option("--note", required=True, help="Why: kept with the decision.")
@click.option(
    "--reviewer",
    default=lambda: getpass.getuser(),
    show_default="your user name",
    help="Who decided.",
)
@click.option("--json", "as_json", is_flag=True, help="Echo the stored decision as JSON.")
def decide(run_id: str, decision: str, note: str, reviewer: str, as_json: bool) -> None:
    """Record a human DECISION for RUN_ID; it wins over the guard's."""
    from autoretrain.runs.review import ReviewError, record_review

    with _connect(read_only=False) as con:
        try:
            row = record_review(con, run_id, decision, note, reviewer)
        except ReviewError as exc:
            raise click.ClickException(str(exc)) from None
    row = {k: _plain(v) for k, v in row.items()}
    if as_json:
        click.echo(json.dumps(row, indent=2, ensure_ascii=False))
    else:
        click.echo(f"{run_id}: {decision} by {row['reviewer']} at {row['reviewed_at']}")
