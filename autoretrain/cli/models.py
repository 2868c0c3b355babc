"""`autoretrain models`, `promote` and `rollback`: the model registry from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from autoretrain.project import Project
from autoretrain.settings import Settings


@contextmanager
def read_registry(project: Project) -> Iterator[tuple[Any, Any]]:
    """(the run store, the registry), read-only; (None, None) when the database does not exist
    yet."""
    if not project.paths.database.exists():
        yield None, None
        return
    with project.store(read_only=True) as store:
        yield store, project.registry(store, read_only=True)


def _check_profile(settings: Settings, profile: str | None) -> None:
    """`--profile` must name a defined profile (say which exist, rather than a KeyError)."""
    if profile is not None and profile not in settings.providers:
        raise click.ClickException(
            f"--profile {profile!r} is not a provider profile; known profiles: "
            f"{', '.join(sorted(settings.providers))} (defined under providers: in the settings)"
        )


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--limit", default=10, show_default=True, help="Ledger entries to show.")
def models(as_json: bool, limit: int) -> None:
    """List model versions, the slots of every provider profile, and recent slot changes."""
    from autoretrain.deploy.registry import RegistryError

    dangling: list[dict[str, Any]] = []
    with read_registry(Project.open()) as (_, registry):
        if registry is None:
            versions, slots, ledger = [], [], []
        else:
            try:
                versions = [v.to_dict() for v in registry.versions()]
                slots = registry.all_slots()
                ledger = [e.to_dict() for e in registry.ledger(limit=limit)]
                dangling = registry.dangling_slots()
            except RegistryError as exc:  # a damaged registry is not an empty one
                raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"versions": versions, "slots": slots, "ledger": ledger}, indent=2))
        _fail_on_dangling(dangling)
        return
    click.echo(f"versions ({len(versions)}):")
    for v in versions:
        where = v["hosted_model_id"] or v["adapter_dir"] or v["model_dir"]
        click.echo(f"  {v['id']}  {v['kind']:6}  base={v['base_model']}  {where}")
    click.echo("slots:" if slots else "slots: all empty (`autoretrain promote VERSION --slot ...`)")
    missing = {(d["provider_profile"], d["slot"]) for d in dangling}
    for s in slots:
        flag = "  (NOT REGISTERED)" if (s["provider_profile"], s["slot"]) in missing else ""
        click.echo(f"  {s['provider_profile']}/{s['slot']}: {s['version_id']}{flag}")
    click.echo(f"ledger (latest {limit}):")
    for e in ledger:
        why = f"  reason: {e['reason']}" if e["reason"] else ""
        ev = f"  evaluation: {e['evaluation_id']}" if e["evaluation_id"] else ""
        click.echo(
            f"  #{e['seq']} {e['at']} {e['action']:8} {e['provider_profile']}/{e['slot']}: "
            f"{e['from_version'] or '(empty)'} -> {e['to_version']} by {e['actor']}{why}{ev}"
        )
    _fail_on_dangling(dangling)


def _fail_on_dangling(dangling: list[dict[str, Any]]) -> None:
    if dangling:
        names = ", ".join(
            f"{d['provider_profile']}/{d['slot']} -> {d['version_id']}" for d in dangling
        )
        raise click.ClickException(
            f"the registry is inconsistent: slot(s) {names} name versions that are not "
            "registered (deleted?). Re-register them, or promote a registered version into "
            "those slots"
        )


@click.command("promote")
@click.argument("version")
@click.option("--slot", type=click.Choice(["canary", "primary"]), required=True)
@click.option("--reason", default=None, help="Why (kept in the ledger).")
@click.option("--evaluation", "evaluation_id", default=None, help="Evaluation id that backs it.")
@click.option("--profile", default=None, help="Provider profile (default: the active one).")
def promote(
    version: str, slot: str, reason: str | None, evaluation_id: str | None, profile: str | None
) -> None:
    """Move model VERSION into a slot (recorded in the promotion ledger)."""
    from autoretrain.deploy.registry import RegistryError
    from autoretrain.deploy.targets import DeploymentError

    project = Project.open()
    _check_profile(project.settings, profile)
    try:
        # Everything the registry would refuse is refused before the serving side moves; the
        # serving side moves first (Azure deployment, serving.json, LM Studio id), and the
        # registry records it only once that succeeded.
        change = project.move_slot(
            version, slot, reason=reason, evaluation_id=evaluation_id, actor=None, profile=profile
        )
    except (RegistryError, DeploymentError) as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_target(change.target)
    entry = change.entry
    if entry is None:
        click.echo(f"{slot} already holds {version}; nothing changed")
    else:
        click.echo(
            f"{entry.provider_profile}/{slot}: {entry.from_version or '(empty)'} -> "
            f"{entry.to_version} (ledger #{entry.seq})"
        )


@click.command("rollback")
@click.option(
    "--slot", type=click.Choice(["canary", "primary"]), default="primary", show_default=True
)
@click.option("--reason", default=None, help="Why (kept in the ledger).")
@click.option("--profile", default=None, help="Provider profile (default: the active one).")
def rollback(slot: str, reason: str | None, profile: str | None) -> None:
    """Return a slot to the version promoted there before the current one."""
    from autoretrain.deploy.registry import RegistryError
    from autoretrain.deploy.targets import DeploymentError

    project = Project.open()
    _check_profile(project.settings, profile)
    try:
        change = project.roll_back_slot(slot, reason=reason, actor=None, profile=profile)
    except (RegistryError, DeploymentError) as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_target(change.target)
    entry = change.entry
    click.echo(
        f"{entry.provider_profile}/{slot}: rolled back {entry.from_version} -> "
        f"{entry.to_version} (ledger #{entry.seq})"
    )


def _echo_target(result) -> None:  # type: ignore[no-untyped-def]
    """What the serving side did (a deployment updated, an id to load in LM Studio, ...)."""
    for key, value in result.to_dict().items():
        if value not in (None, "", [], {}):
            click.echo(f"  {key}: {value}")
