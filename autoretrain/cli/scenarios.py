"""`autoretrain scenarios validate | list | show | schema`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click


def _load(path: Path | None):  # type: ignore[no-untyped-def]
    """The catalog at `path` (a domain call on a path the user gave), or the project's own."""
    from autoretrain.project import Project
    from autoretrain.scenarios import CatalogError, load_catalog

    project = None if path is not None else Project.open()
    where = path or project.settings.scenarios_dir
    try:
        return load_catalog(path, _settings_tools()) if project is None else project.catalog
    except CatalogError as exc:
        raise click.ClickException(
            f"{exc}\nFix the fields named above (format: docs/scenarios.md), then run "
            f"`autoretrain scenarios validate {where}` again."
        ) from None


def _settings_tools() -> list:
    """The settings' `tools`, so a catalog whose scenarios use them validates at any path. A
    path is validated without settings otherwise (it may be a catalog for another project), so
    settings that do not load give no tools here; every other command reports them."""
    from autoretrain.settings import SettingsError, load_settings

    try:
        return list(load_settings().tools)
    except SettingsError:
        return []


@click.group()
def scenarios() -> None:
    """Validate, list and show the scenario catalog."""


@scenarios.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--seeds", default=5, show_default=True, help="Instances per scenario to check.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(path: Path | None, seeds: int, as_json: bool) -> None:
    """Check the catalog at PATH (default: the configured scenarios folder): its format, and
    that every scenario's reference solution, run through the real tools, passes its own
    verifier on SEEDS instances from each seed range."""
    from autoretrain.agents.verifier import check_expected
    from autoretrain.scenarios import SEED_RANGES, RenderError

    catalog = _load(path)
    failures: list[str] = []
    checked = 0
    for scenario in catalog.scenarios:
        ranges = ("demo", "selfplay", "eval") if scenario.split == "train" else ("eval",)
        for name in ranges:
            start = SEED_RANGES[name][0]
            for seed in range(start, start + seeds):
                try:
                    instance = catalog.instance(scenario.id, seed)
                except RenderError as exc:
                    failures.append(
                        f"{scenario.file}: scenario {scenario.id!r}: field "
                        f"{exc.field!r}: seed {seed}: {exc}"
                    )
                    continue
                checked += 1
                if instance.expected.get("kind") == "rubric":
                    continue
                outcome = check_expected(instance.expected, instance.reference_answer, instance)
                if not outcome.passed:
                    failures.append(
                        f"{scenario.file}: scenario {scenario.id!r}: field 'reference.answer': "
                        f"seed {seed}: {outcome.feedback}"
                    )
    result = {
        "path": str(catalog.root),
        "hash": catalog.hash,
        "scenarios": len(catalog.scenarios),
        "train": len(catalog.train_scenarios),
        "eval": len(catalog.eval_scenarios),
        "categories": catalog.categories(),
        "instances_checked": checked,
        "failures": failures,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    if failures:
        raise click.ClickException(
            f"{len(failures)} reference solution(s) fail their own verifier:\n  "
            + "\n  ".join(failures[:20])
        )
    if not as_json:
        click.echo(
            f"ok: {result['scenarios']} scenarios ({result['train']} train, {result['eval']} eval) "
            f"in {len(result['categories'])} categories; {checked} reference solutions pass; "
            f"catalog hash {catalog.hash[:12]}"
        )


@scenarios.command("list")
@click.option("--path", type=click.Path(path_type=Path), help="Catalog folder or file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(path: Path | None, as_json: bool) -> None:
    """Scenarios by category and split."""
    catalog = _load(path)
    rows = catalog.summary()
    if as_json:
        counts = Counter((row["category"], row["split"]) for row in rows)
        click.echo(
            json.dumps(
                {
                    "path": str(catalog.root),
                    "hash": catalog.hash,
                    "counts": [
                        {"category": c, "split": s, "scenarios": n}
                        for (c, s), n in sorted(counts.items())
                    ],
                    "scenarios": rows,
                },
                indent=2,
            )
        )
        return
    for category in catalog.categories():
        click.echo(f"{category}")
        for split in ("train", "eval"):
            ids = [r for r in rows if r["category"] == category and r["split"] == split]
            for row in ids:
                tools = ",".join(row["tools"]) or "no tools"
                click.echo(
                    f"  {split:5}  {row['id']:28} {row['calls']} call(s) via {tools:30} "
                    f"expects {row['expected']}"
                )
    click.echo(
        f"{len(rows)} scenarios ({len(catalog.train_scenarios)} train, "
        f"{len(catalog.eval_scenarios)} eval); catalog hash {catalog.hash[:12]}"
    )


@scenarios.command()
@click.argument("scenario_id")
@click.option("--n", "count", default=3, show_default=True, help="How many instances.")
@click.option(
    "--seeds",
    "seed_range",
    type=click.Choice(["demo", "selfplay", "eval"]),
    default="demo",
    show_default=True,
    help="Which seed range to draw from.",
)
@click.option("--path", type=click.Path(path_type=Path), help="Catalog folder or file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(scenario_id: str, count: int, seed_range: str, path: Path | None, as_json: bool) -> None:
    """Sample instances of SCENARIO_ID with their reference solutions."""
    from autoretrain.scenarios import SEED_RANGES

    catalog = _load(path)
    try:
        catalog.get(scenario_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    start = SEED_RANGES[seed_range][0]
    instances = [catalog.instance(scenario_id, seed) for seed in range(start, start + count)]
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in instances], indent=2, ensure_ascii=False))
        return
    for instance in instances:
        click.echo(
            f"--- {instance.scenario_id} seed {instance.seed} hash {instance.instance_hash[:12]}"
        )
        click.echo(f"user: {instance.user_prompt}")
        for call, result in zip(instance.reference_calls, instance.reference_results, strict=True):
            click.echo(f"  call {call['name']}({json.dumps(call['arguments'])}) -> {result}")
        click.echo(f"answer: {instance.reference_answer}")
        click.echo(f"expected: {json.dumps(instance.expected)}")


@scenarios.command()
def schema() -> None:
    """Print the JSON Schema of a catalog file (docs/scenario.schema.json is this output)."""
    from autoretrain.scenarios import CATALOG_SCHEMA

    click.echo(json.dumps(CATALOG_SCHEMA, indent=2))
