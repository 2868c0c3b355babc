"""`autoretrain loop`: the README's main command."""

from __future__ import annotations

import json
import logging
import os

import click

from autoretrain.settings import SettingsError


@click.command()
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Full cycles to run (default: settings.loop.iterations).",
)
@click.option(
    "--selfplay-runs",
    type=int,
    default=None,
    help="Self-play runs per cycle (default: settings.selfplay.runs_per_iteration).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def loop(iterations: int | None, selfplay_runs: int | None, as_json: bool) -> None:
    """One full retraining cycle (or N), in-process through Dagster: base model if missing →
    self-play → ingest → score → decide → dataset → train → evaluate → gate → canary →
    canary analysis → primary. Open `autoretrain ui` afterwards to see it in Dagster."""
    from autoretrain.loop import LoopError, run_loop
    from autoretrain.project import Project

    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    if not verbose:
        quiet_libraries()
    try:
        settings = Project.open().settings
        say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
        say(f"autoretrain loop: data under {settings.paths.root}")
        results = run_loop(
            settings,
            iterations or settings.loop.iterations,
            selfplay_runs,
            progress=not as_json,
            say=say,
            verbose=verbose,
        )
    except (SettingsError, LoopError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return
    for result in results:
        click.echo(render(result))
    click.echo(
        f"\nDagster instance: {settings.paths.dagster_home} — `autoretrain ui` shows the lineage."
    )


def quiet_libraries() -> None:
    """One line per stage: the instance's migrations (alembic), Dagster's per-event log, the
    stages' INFO logs and the weight-loading bars stay out of the output unless `-v` is given."""
    for name in ("alembic", "dagster", "httpx", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The stages' own INFO lines (training steps, ingest counts, the replay's plan) repeat what
    # the stage lines and progress lines say; warnings still show.
    logging.getLogger("autoretrain").setLevel(logging.WARNING)
    # Read by transformers when it is imported, here and in self-play's worker processes.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def render(result) -> str:  # type: ignore[no-untyped-def]
    lines = [
        f"\n== iteration {result.iteration}: {result.incumbent} → {result.candidate or '(no candidate)'}"
    ]
    comparison = result.comparison
    if comparison:
        lines.append(
            f"{'tier':<16} {'category':<16} {'incumbent':>10} {'candidate':>10} {'diff':>8}"
        )
        rows = {}
        for row in comparison.get("tiers", []) + comparison.get("categories", []):
            key = (row["tier"], row["category"])
            rows.setdefault(key, {})[row["role"]] = row["pass_rate"]
        for (tier, category), by_role in sorted(
            rows.items(), key=lambda kv: (kv[0][0] != "all", kv[0])
        ):
            inc, cand = by_role.get("incumbent"), by_role.get("candidate")
            diff = f"{cand - inc:+.1%}" if inc is not None and cand is not None else ""
            lines.append(f"{tier:<16} {category:<16} {_pct(inc):>10} {_pct(cand):>10} {diff:>8}")
        for gate in comparison.get("reasons", []):
            mark = "skip" if gate["passed"] is None else ("ok" if gate["passed"] else "FAIL")
            lines.append(f"  [{mark:>4}] {gate['name']}: {gate.get('detail') or gate.get('value')}")
    lines.append(
        f"decision: {result.decision}"
        + (f" (stopped at {result.stopped_at}: {result.reason})" if result.stopped_at else "")
    )
    if result.canary:
        lines.append(
            f"canary analysis: {'passed' if result.canary['passed'] else 'FAILED'} — {result.canary['summary']}"
        )
    if result.primary:
        lines.append(f"primary is now {result.primary}")
    lines.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()))
    for name, path in result.artifacts.items():
        lines.append(f"  {name:<11} {path}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"
