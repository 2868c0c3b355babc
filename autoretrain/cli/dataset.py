"""`autoretrain dataset build | list | validate | scan`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click


@click.group()
def dataset() -> None:
    """Build, list and validate fine-tuning datasets."""


@dataset.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tools-required", is_flag=True, help="Every example must declare `tools`.")
@click.option("--max-tokens", type=int, help="The target model's context, in tokens.")
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Count tokens with this tokenizer folder (default: a whitespace estimate).",
)
def validate(
    file: Path, as_json: bool, tools_required: bool, max_tokens: int | None, tokenizer: Path | None
) -> None:
    """Check FILE (OpenAI / Azure OpenAI chat JSONL) line by line. Exits 1 if any line is
    invalid; each error names its line."""
    from autoretrain.curation.validate import validate_file

    report = validate_file(
        file, tools_required=tools_required, max_tokens=max_tokens, tokenizer_dir=tokenizer
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line, message in report.errors:
            click.echo(f"{file}:{line}: {message}")
        for warning in report.warnings:
            click.echo(f"{file}: warning: {warning}", err=True)
        verdict = "ok" if report.ok else f"{len(report.invalid_lines)} invalid line(s)"
        click.echo(
            f"{file}: {report.n_examples} example(s), {verdict}"
            + (" (UTF-8 with BOM)" if report.bom else ""),
            err=not report.ok,
        )
    if not report.ok:
        raise SystemExit(1)


@dataset.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scan(path: Path, as_json: bool) -> None:
    """Scan PATH for secrets and personal data: a JSONL or JSON file, or a dataset version
    folder (its train.jsonl, eval.jsonl and manifest.json). The scan is independent of the
    builder's scrubbing (detect-secrets, python-stdnum, phonenumbers, plus
    `dataset.extra_secret_patterns`). Prints file, line and kind, never the secret; exits 1
    if anything is found."""
    from autoretrain.curation.redact import PatternError
    from autoretrain.curation.scan import DATASET_FILES, scan_dataset, scan_file
    from autoretrain.project import Project

    extra = Project.open().settings.dataset.extra_secret_patterns
    try:
        if path.is_dir():
            if not any((path / name).is_file() for name in DATASET_FILES):
                raise click.ClickException(
                    f"{path} is a folder without {', '.join(DATASET_FILES)}: pass a dataset "
                    "version folder or a file"
                )
            by_file = {path / name: hits for name, hits in scan_dataset(path, extra).items()}
        else:
            by_file = {path: scan_file(path, extra)}
    except PatternError as exc:
        raise click.ClickException(str(exc)) from None
    findings = [(file, line, kind) for file, hits in by_file.items() for line, kind in hits]
    if as_json:
        rows = [{"file": str(f), "line": line, "kind": kind} for f, line, kind in findings]
        if not path.is_dir():
            rows = [{"line": r["line"], "kind": r["kind"]} for r in rows]
        scanned = [str(f) for f in by_file]
        click.echo(
            json.dumps(
                {"path": str(path), "files": scanned, "ok": not findings, "findings": rows},
                indent=2,
            )
        )
    else:
        for file, line, kind in findings:
            click.echo(f"{file}:{line}: {kind}")
        click.echo(
            f"{path}: {len(findings)} finding(s) in {len(by_file)} file(s)", err=bool(findings)
        )
    if findings:
        raise SystemExit(1)


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=10, show_default=True, help="Newest N versions (0: all).")
def list_(as_json: bool, limit: int) -> None:
    """Dataset versions, newest first."""
    from autoretrain.curation.manifest import list_versions
    from autoretrain.project import Project

    rows = list_versions(Project.open().paths.datasets)
    rows = rows[:limit] if limit > 0 else rows
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no dataset versions yet: run `autoretrain dataset build`")
        return
    for row in rows:
        if "error" in row:
            click.echo(f"{row['version']}  BROKEN: {row['error']}")
            continue
        click.echo(
            f"{row['version']}  train {row['train']}  eval {row['eval']}  "
            f"excluded {row['excluded']}  redactions {row['redactions']}  "
            f"models {', '.join(row['source_models'] or []) or '-'}"
        )


@dataset.command()
@click.option(
    "--runs",
    "run_files",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="JSONL file(s) or folder(s) of run records to use instead of the run store.",
)
@click.option(
    "--decisions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --runs: a JSON object {run_id: decision}; only 'promote' runs are used.",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Scenario catalog (default: the configured scenarios folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build(
    run_files: tuple[Path, ...], decisions: Path | None, catalog: Path | None, as_json: bool
) -> None:
    """Build a dataset version from promoted runs (the run store's effective decisions, human
    over automatic), or from --runs files. Evaluation instances and eval scenarios of the
    catalog are kept out of both splits. The same build as the `training_dataset` asset."""
    from autoretrain.curation.redact import PatternError
    from autoretrain.project import Project
    from autoretrain.runs.store import StoreNotFound

    project = Project.open()
    unreadable: list[str] = []
    options: dict[str, Any] = {"catalog": _catalog(project, catalog)}
    if run_files:
        options["runs"] = _read_records(run_files, unreadable)
        options["decisions"] = _read_decisions(decisions) if decisions is not None else None
        options["source"] = "files: " + ", ".join(str(p) for p in run_files)
        # Filled while the build reads the records: the manifest takes the final list.
        options["manifest_extra"] = {"unreadable_input_lines": unreadable}
    elif decisions is not None:
        raise click.ClickException("--decisions goes with --runs; the run store has its own")
    try:
        version = project.build_training_dataset(**options, require_runs=True)
    except StoreNotFound as exc:
        raise click.ClickException(f"{exc}; or pass --runs FILE") from None
    except (PatternError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report(version, unreadable, as_json)


def _report(version, unreadable: list[str], as_json: bool) -> None:  # type: ignore[no-untyped-def]
    summary = {
        "version": version.version,
        "path": str(version.path),
        "counts": version.counts,
        "exclusions": version.exclusions,
        "redactions": version.redactions,
        "unreadable_input_lines": len(unreadable),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    counts = version.counts
    click.echo(f"dataset {version.version}: {counts['train']} train, {counts['eval']} eval")
    click.echo(f"  written to {version.path}")
    if version.exclusions:
        reasons = ", ".join(f"{k} {v}" for k, v in version.exclusions.items())
        click.echo(f"  excluded {counts['excluded']}: {reasons}")
    if version.redactions:
        click.echo("  redacted: " + ", ".join(f"{k} {v}" for k, v in version.redactions.items()))
    if unreadable:
        click.echo(f"  {len(unreadable)} unreadable input line(s), e.g. {unreadable[0]}", err=True)


def _catalog(project: Any, path: Path | None):  # type: ignore[no-untyped-def]
    """The catalog at `path`, or the project's own one."""
    from autoretrain.scenarios import CatalogError, load_catalog

    where = path or project.settings.scenarios_dir
    try:
        return load_catalog(path, project.settings.tools) if path is not None else project.catalog
    except (CatalogError, FileNotFoundError) as exc:
        raise click.ClickException(
            f"{exc}\nThe builder needs the catalog to keep evaluation instances out of the "
            f"dataset: fix it (`autoretrain scenarios validate {where}`) or pass --catalog."
        ) from None


def _read_records(paths: tuple[Path, ...], unreadable: list[str]) -> Iterator[dict[str, Any]]:
    """Run records from JSONL files (folders: every *.jsonl below them, sorted). A line that
    is not a JSON object is reported by file and line, and skipped."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.jsonl")) if path.is_dir() else [path])
    for file in files:
        with file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8-sig"))
                except (UnicodeDecodeError, ValueError) as exc:
                    unreadable.append(f"{file}:{number}: {exc}")
                    continue
                if not isinstance(record, dict):
                    unreadable.append(f"{file}:{number}: not a JSON object")
                    continue
                yield record


def _read_decisions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise click.ClickException(f'{path}: expected a JSON object {{"run_id": "promote", ...}}')
    return data
