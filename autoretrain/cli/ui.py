"""`autoretrain ui`: the Dagster UI (with its daemon) over the project's own instance."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from autoretrain.instance import ensure_dagster_home


def dev_command(host: str, port: int, project: Path) -> list[str]:
    """`dg dev`, where `dagster dev` now points: it finds the definitions through pyproject's
    `[tool.dg]`. `dg` comes with the dev extras; without it, `dagster dev` on workspace.yaml
    serves the same definitions."""
    bin_dir = Path(sys.executable).parent
    dg = bin_dir / "dg"
    if dg.exists():
        return [str(dg), "dev", "-h", host, "-p", str(port)]
    dagster = bin_dir / "dagster"
    return [str(dagster), "dev", "-w", str(project / "workspace.yaml"), "-h", host, "-p", str(port)]


@click.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def ui(port: int, host: str) -> None:
    """Open the Dagster UI (dg dev, daemon included) on the instance `autoretrain loop` records
    into."""
    from autoretrain.project import Project

    home = ensure_dagster_home(Project.open().settings)
    project = Path.cwd()
    missing = [n for n in ("pyproject.toml", "workspace.yaml") if not (project / n).exists()]
    if missing:
        raise click.ClickException(
            f"{' and '.join(missing)} not found in {project}: run this from the project folder"
        )
    click.echo(f"DAGSTER_HOME={home}", err=True)
    # dg warns on every start when the project's virtualenv is not the active one; running
    # .venv/bin/autoretrain (as `make ui` does) is using it, so say so.
    os.environ.setdefault("VIRTUAL_ENV", sys.prefix)
    command = dev_command(host, port, project)
    os.execv(command[0], command)
