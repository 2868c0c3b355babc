"""`autoretrain ui`: the Dagster UI over the project's own instance."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from autoretrain.instance import ensure_dagster_home
from autoretrain.settings import load_settings


@click.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def ui(port: int, host: str) -> None:
    """Open the Dagster UI (dagster dev) on the instance `autoretrain loop` records into."""
    home = ensure_dagster_home(load_settings())
    workspace = Path("workspace.yaml")
    if not workspace.exists():
        raise click.ClickException("workspace.yaml not found: run this from the project folder")
    click.echo(f"DAGSTER_HOME={home}", err=True)
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(dagster, [str(dagster), "dev", "-w", str(workspace), "-h", host, "-p", str(port)])
