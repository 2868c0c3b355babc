"""`autoretrain azure`: Azure OpenAI deployment chores (keep-alive, retire) from the command line.
The deployment logic is in `deploy/azure.py` and `deploy/targets.py`."""

from __future__ import annotations

import json

import click

from autoretrain.deploy.azure import (
    DeploymentError,
    azure_openai_client,
    keep_alive,
    slot_deployments,
)


@click.group("azure")
def azure_cli() -> None:
    """Azure OpenAI deployment helpers: keep-alive, retire."""


@azure_cli.command("keep-alive")
@click.option("--deployment", "names", multiple=True, help="Default: every slot's deployment.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def keep_alive_command(names: tuple[str, ...], as_json: bool) -> None:
    """Send one tiny chat request per deployment. Schedule it daily: Azure deletes a fine-tuned
    deployment after 15 days without calls."""
    from autoretrain.settings import load_settings

    settings = load_settings()
    profile = settings.profile
    if profile.kind != "azure_openai":
        raise click.ClickException(
            f"provider profile {settings.provider!r} is {profile.kind}, not azure_openai; "
            "choose the Azure profile with AUTORETRAIN_PROVIDER"
        )
    from autoretrain.deploy.slot_config import read_slots, slot_file

    targets = list(names) or slot_deployments(profile, read_slots(slot_file(settings)))
    if not targets:
        raise click.ClickException(
            f"profile {settings.provider!r} has no slots; set providers.{settings.provider}"
            ".slots or pass --deployment"
        )
    try:
        client = azure_openai_client(profile)
    except DeploymentError as exc:
        raise click.ClickException(str(exc)) from exc
    results = keep_alive(client, targets)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            click.echo(f"{mark} {r.deployment}: {r.detail} ({r.latency_s} s)")
    if not all(r.ok for r in results):
        raise SystemExit(1)


@azure_cli.command("retire")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the names as JSON.")
def retire_command(dry_run: bool, as_json: bool) -> None:
    """Delete the deployments of model versions that no slot serves and no rollback would
    restore (they bill by the hour while they exist). The models survive."""
    from autoretrain.deploy.slot_config import slot_file
    from autoretrain.deploy.targets import AzureTarget
    from autoretrain.project import Project

    project = Project.open()
    settings = project.settings
    if settings.profile.kind != "azure_openai":
        raise click.ClickException(
            f"provider profile {settings.provider!r} is {settings.profile.kind}, not "
            "azure_openai; choose the Azure profile with AUTORETRAIN_PROVIDER"
        )
    if not settings.paths.database.exists():
        raise click.ClickException(
            f"no registry at {settings.paths.database}: nothing was ever deployed from it"
        )
    with project.store(read_only=True) as store:
        try:
            target = AzureTarget.for_profile(
                settings.provider, settings.profile, slot_file(settings)
            )
            names = target.retire_unused(project.registry(store, read_only=True), dry_run=dry_run)
        except DeploymentError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "deployments": names}, indent=2))
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(names)} deployment(s)" + "".join(f"\n  {n}" for n in names))


if __name__ == "__main__":
    azure_cli(prog_name="python -m autoretrain.deploy.azure")
