"""`autoretrain selfplay`: keep the agent working on the scenario catalog."""

from __future__ import annotations

import json

import click

from autoretrain.providers.base import ProviderError
from autoretrain.settings import SettingsError


@click.command()
@click.option("--n", "n", default=200, show_default=True, help="How many runs.")
@click.option("--slot", default="primary", show_default=True, help="Model slot to play.")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Runs in flight (batch size for local models, parallel requests for HTTP ones; "
    "default: settings.selfplay.concurrency).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Processes a local model plays in, each with its own copy "
    "(default: settings.selfplay.workers).",
)
@click.option(
    "--seed", type=int, default=None, help="Sampling seed (default: settings.selfplay.seed)."
)
@click.option("--canary-share", type=float, default=None, help="Share of runs for the canary slot.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def selfplay(
    n: int,
    slot: str,
    concurrency: int | None,
    workers: int | None,
    seed: int | None,
    canary_share: float | None,
    as_json: bool,
) -> None:
    """Run the agent on sampled train scenarios; every run lands in the landing zone.

    Ctrl-C stops starting new runs, finishes those in flight and keeps every finished run."""
    from autoretrain.project import Project

    try:
        report = Project.open().selfplay(
            n,
            slot=slot,
            concurrency=concurrency,
            workers=workers,
            seed=seed,
            canary_share=canary_share,
            progress=not as_json,
        )
    except (ProviderError, SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    data = report.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{data['finished']}/{data['requested']} runs in {data['seconds']} s "
        f"({data['runs_per_second']} runs/s), pass rate {data['pass_rate']:.1%}"
        + (" — interrupted" if data["interrupted"] else "")
    )
    for status, count in sorted(data["by_status"].items()):
        click.echo(f"  {status:<10} {count}")
    click.echo(f"landed in {len(data['files'])} file(s)")
