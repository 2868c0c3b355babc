"""`autoretrain serve`: the project's models over an OpenAI-compatible API (see autoretrain.serve)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Path]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.ClickException(f"{option} {value!r}: expected NAME=DIRECTORY")
        out[name] = Path(path)
    return out


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="serving.json to serve and watch (default: <AUTORETRAIN_HOME>/serving.json).",
)
@click.option(
    "--model", "models", multiple=True, metavar="NAME=DIR", help="Also serve DIR as NAME."
)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="NAME=DIR",
    help="PEFT adapter for --model NAME.",
)
@click.option(
    "--api-key-env",
    default="AUTORETRAIN_SERVE_API_KEY",
    show_default=True,
    help="Environment variable holding the API key; when it is set, requests need it (Bearer).",
)
@click.option("--preload", is_flag=True, help="Load every model before accepting requests.")
def serve(
    host: str,
    port: int,
    config_path: Path | None,
    models: tuple[str, ...],
    adapters: tuple[str, ...],
    api_key_env: str,
    preload: bool,
) -> None:
    """Serve the slot models (primary, canary, candidates) over an OpenAI-compatible API.

    The models come from serving.json (re-read when it changes, so promotions need no restart)
    and from --model. Clients pick one with the request's `model` field.
    """
    from autoretrain.deploy.serving import SERVING_FILE, ServingEntry
    from autoretrain.project import Project
    from autoretrain.serve import ModelPool, serve_forever
    from autoretrain.settings import SettingsError

    try:
        settings = Project.open().settings
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    config_path = config_path or settings.paths.root / SERVING_FILE
    model_dirs = _pairs(models, "--model")
    adapter_dirs = _pairs(adapters, "--adapter")
    orphans = sorted(set(adapter_dirs) - set(model_dirs))
    if orphans:
        raise click.ClickException(f"--adapter {orphans} without a --model of the same name")
    for name, path in [*model_dirs.items(), *adapter_dirs.items()]:
        if not path.is_dir():
            raise click.ClickException(f"{name}: {path} is not a directory")
    static = {
        name: ServingEntry(
            path.resolve(), adapter_dirs[name].resolve() if name in adapter_dirs else None
        )
        for name, path in model_dirs.items()
    }
    pool = ModelPool(config_path, static=static)
    if pool.config_error:
        raise click.ClickException(f"{pool.config_error}; fix the file or move it away")
    if not pool.names():
        raise click.ClickException(
            f"nothing to serve: no models in {config_path} and no --model. Promote a model "
            f"(`autoretrain promote`) or pass --model NAME=DIR"
        )
    api_key = os.environ.get(api_key_env) or None
    if host not in LOOPBACK and not api_key:
        log.warning("binding %s with no API key: anyone on the network can call the models", host)
    if preload:
        for name in pool.names():
            pool.worker(name)
    click.echo(f"serving {pool.names()} on http://{host}:{port}/v1", err=True)
    serve_forever(pool, host, port, api_key, settings.serve)
