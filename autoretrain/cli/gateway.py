"""`autoretrain gateway`: the capture gateway (see autoretrain.gateway and docs/gateway.md)."""

from __future__ import annotations

import logging

import click

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@click.command()
@click.option("--host", default=None, help="Address to bind (default: gateway.host).")
@click.option("--port", default=None, type=int, help="Port (default: gateway.port).")
@click.option(
    "--serve-url",
    default=None,
    help="A running `autoretrain serve` (http://HOST:PORT/v1) for local registry versions.",
)
@click.option(
    "--canary-share",
    default=None,
    type=click.FloatRange(0, 1),
    help="Share of primary traffic (per run) sent to canary (default: gateway.canary_share).",
)
def gateway(
    host: str | None, port: int | None, serve_url: str | None, canary_share: float | None
) -> None:
    """Forward OpenAI chat completions to the slots' targets and record every call as a run.

    Point an agent's OpenAI client at http://HOST:PORT/v1 and name a slot (primary, canary) or a
    version as its model. Promotions and rollbacks take effect within gateway.registry_ttl_s.
    """
    import uvicorn

    from autoretrain.gateway import create_app
    from autoretrain.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    changes = {
        key: value
        for key, value in (("host", host), ("port", port), ("serve_url", serve_url))
        if value is not None
    }
    if canary_share is not None:
        changes["canary_share"] = canary_share
    config = settings.gateway.model_copy(update=changes)
    settings = settings.model_copy(update={"gateway": config})
    if config.host not in LOOPBACK:
        log.warning(
            "binding %s: every agent that can reach it can use the upstreams' keys", config.host
        )
    click.echo(
        f"gateway on http://{config.host}:{config.port}/v1 recording into {settings.paths.landing}",
        err=True,
    )
    # No access log and no proxy-header rewriting: every call is recorded in its run already,
    # and both cost CPU on each call (bench/gateway.py).
    uvicorn.run(
        create_app(settings),
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=False,
        proxy_headers=False,
    )
