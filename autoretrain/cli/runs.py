"""`autoretrain ingest`, `autoretrain runs`, `autoretrain import`: the run store by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import click


def _day(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.ClickException(f"{flag} {value!r} is not a date: use YYYY-MM-DD") from None


@contextmanager
def _open(project, read_only: bool) -> Iterator:
    """The run store, or one line saying who holds its lock (after a bounded wait)."""
    from autoretrain.runs.store import StoreLocked

    try:
        with project.store(read_only=read_only) as store:
            yield store
    except StoreLocked as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--date", "day", help="Ingest one landing day (YYYY-MM-DD).")
@click.option("--from", "start", help="First day of a range (inclusive).")
@click.option("--to", "end", help="Last day of a range (inclusive).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def ingest(day: str | None, start: str | None, end: str | None, as_json: bool) -> None:
    """Ingest landing-zone days into the run store (default: every day there is)."""
    from autoretrain.project import Project
    from autoretrain.runs.store import StoreLocked

    if day and (start or end):
        raise click.ClickException("give either --date or --from/--to, not both")
    day, start, end = _day(day, "--date"), _day(start, "--from"), _day(end, "--to")
    project = Project.open()
    settings = project.settings
    days = [
        d
        for d in project.archive.days()
        if (day is None or d == day) and (start is None or d >= start) and (end is None or d <= end)
    ]
    if day and not days:
        raise click.ClickException(
            f"no landing files for {day} under {settings.paths.landing}: "
            "check the date, or AUTORETRAIN_HOME"
        )
    limit = settings.ingest.max_quarantine_rate

    def echo(report) -> None:  # type: ignore[no-untyped-def]
        if as_json:
            return
        flag = "  (over ingest.max_quarantine_rate)" if report.quarantine_rate > limit else ""
        click.echo(
            f"{report.day}: {report.read} read, {report.inserted} new, {report.replaced} "
            f"replaced, {report.unchanged} unchanged, {report.quarantined} quarantined "
            f"({report.seconds:.1f} s){flag}"
        )
        for entry in report.skipped:
            click.echo(f"  skipped {entry['file']}: {entry['reason']}", err=True)

    try:
        reports = list(project.ingest_days(days, on_day=echo).reports.values())
    except StoreLocked as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    elif not days:
        click.echo(f"nothing to ingest under {settings.paths.landing}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def runs(as_json: bool) -> None:
    """Counts of stored runs by day, category, model and slot; quarantine count and reasons."""
    from autoretrain.project import Project
    from autoretrain.runs.store import StoreNotFound

    try:
        with _open(Project.open(), read_only=True) as store:
            summary = store.summary()
    except StoreNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(f"{summary['runs']} runs in {summary['database']}")
    for title, key in (
        ("day", "by_day"),
        ("category", "by_category"),
        ("model", "by_model"),
        ("slot", "by_slot"),
        ("traffic", "by_traffic"),
    ):
        click.echo(f"by {title}:")
        for name, count in summary[key].items():
            click.echo(f"  {name:<32} {count:>10}")
    click.echo(f"quarantined: {summary['quarantined']}")
    for row in summary["top_quarantine_reasons"]:
        click.echo(f"  {row['reason']:<32} {row['count']:>10}")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_(file: Path, as_json: bool) -> None:
    """Import runs from another app's JSONL: run records or OpenAI chat transcripts."""
    from autoretrain.project import Project
    from autoretrain.runs.importer import import_file

    if not file.is_file():
        raise click.ClickException(f"{file}: no such file; give the path of a JSONL file")
    project = Project.open()
    settings = project.settings
    report = import_file(file, project.archive)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "lines": report.lines,
                    "imported": report.imported,
                    "from_transcripts": report.from_transcripts,
                    "not_imported": len(report.errors),
                    "blank_lines": report.blank_lines,
                    "written": [str(p) for p in report.written],
                    "errors": [e.__dict__ for e in report.errors],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for error in report.errors:
            click.echo(str(error), err=True)
        click.echo(
            f"{report.lines} lines: imported {report.imported} runs ({report.from_transcripts} "
            f"from chat transcripts) into {settings.paths.landing}, {len(report.errors)} not "
            f"imported, {report.blank_lines} blank; run `autoretrain ingest` to load them"
        )
    if report.errors:
        raise click.ClickException(
            f"{len(report.errors)} line(s) of {file} were not imported (reasons above); "
            "fix them and import the file again (imported runs are not duplicated)"
        )
