"""`autoretrain mirror`: sync the landing zone and artifacts to Azure Blob Storage;
`autoretrain mirror --tables`: run summaries and promotion decisions to Azure Table storage."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from autoretrain.settings import Settings

M = TypeVar("M")


@click.command()
@click.option(
    "--verify",
    is_flag=True,
    help="Compare every file with its blob, ignoring the local state (with --tables: upsert "
    "every run and ledger entry again).",
)
@click.option(
    "--tables",
    is_flag=True,
    help="Mirror run summaries and promotion decisions to Azure Table storage instead "
    "(mirror.runs_table).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def mirror(verify: bool, tables: bool, as_json: bool) -> None:
    """Upload new and changed files; skip unchanged ones (by sha256).

    Exits with status 1 when any file failed: the local copy stays the truth, and the next
    sync uploads what is missing.
    """
    if tables:
        _mirror_tables(as_json, verify)
        return
    from autoretrain.runs.mirror import BlobMirror

    blob_mirror = _mirror_from_settings(
        BlobMirror.from_settings, "Blob", "mirror.container", "mirror.account_url"
    )
    report = blob_mirror.sync(verify=verify)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"mirror → {report.destination}")
        click.echo(
            f"  uploaded {len(report.uploaded)} ({report.bytes_uploaded} bytes), "
            f"unchanged {len(report.skipped)}, failed {len(report.failed)} "
            f"in {report.duration_s:.1f} s"
        )
        for failed in report.failed:
            click.echo(f"  failed {failed.path}: {failed.reason}")
        if report.failed:
            click.echo("  run `autoretrain mirror` again once storage is reachable", err=True)
    if report.failed:
        sys.exit(1)


def _mirror_tables(as_json: bool, verify: bool) -> None:
    from autoretrain.runs.table_mirror import TableMirror

    table_mirror = _mirror_from_settings(
        TableMirror.from_settings, "Table", "mirror.runs_table", "mirror.table_endpoint"
    )
    report = table_mirror.sync(verify=verify)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"table mirror → {report.destination}")
        click.echo(
            f"  runs upserted {report.runs_upserted} ({len(report.parts_done)} part files, "
            f"{report.parts_unchanged} unchanged, {len(report.parts_pending)} pending), "
            f"promotions upserted {report.promotions_upserted} in {report.duration_s:.1f} s"
        )
        if report.invalid_lines:
            click.echo(f"  skipped {report.invalid_lines} lines that are not valid runs")
        if report.promotions_note:
            click.echo(f"  promotions: {report.promotions_note}")
        for error in report.errors:
            click.echo(f"  failed: {error}")
        if not report.ok:
            click.echo(
                "  run `autoretrain mirror --tables` again once storage is reachable", err=True
            )
    if not report.ok:
        sys.exit(1)


def _mirror_from_settings(
    from_settings: Callable[[Settings], M | None], kind: str, switch: str, endpoint: str
) -> M:
    """The mirror `from_settings` builds from autoretrain.yaml; a ClickException when the
    settings are wrong or the mirror is off (`switch` unset)."""
    from autoretrain.project import Project
    from autoretrain.settings import SettingsError

    # The SDK logs every HTTP request at INFO; keep its lines for --verbose.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        built = from_settings(Project.open().settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if built is None:
        raise click.ClickException(
            f"the {kind} mirror is off: set {switch} in autoretrain.yaml, and either "
            "$AZURE_STORAGE_CONNECTION_STRING (or the variable named by "
            f"mirror.connection_string_env) or {endpoint}"
        )
    return built
