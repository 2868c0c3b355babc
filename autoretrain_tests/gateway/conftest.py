"""The gateway over real HTTP: a deterministic upstream (upstream.py) and the gateway, each
served by uvicorn on 127.0.0.1 (autoretrain.serve.ServerThread), called with the official
`openai` client; runs land in a temporary data root."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from autoretrain.gateway import create_app
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Run
from autoretrain.serve import ServerThread
from autoretrain.settings import Settings
from autoretrain_tests.gateway.upstream import Upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    """The upstream and its base URL (…/v1)."""
    server = Upstream()
    with ServerThread(server.app()) as thread:
        yield server, thread.url


def make_settings(
    home: Path,
    upstream_url: str,
    *,
    pricing: dict | None = None,
    serve: dict | None = None,
    **gateway: Any,
) -> Settings:
    """A hosted (OpenAI-compatible) profile, so registry versions can be hosted model ids, and
    fixed targets `model-a` (primary) and `model-b` (canary) unless `targets` is given."""
    targets = {
        "primary": {"base_url": upstream_url, "model": "model-a"},
        "canary": {"base_url": upstream_url, "model": "model-b"},
    }
    config = {
        "targets": targets,
        "flush_interval_s": 0.05,
        "registry_ttl_s": 0.1,
        "run_idle_s": 60.0,
        **gateway,
    }
    return Settings(
        home=home,
        provider="up",
        providers={"up": {"kind": "openai_compatible", "base_url": upstream_url}},
        gateway=config,
        pricing=pricing or {},
        serve=serve or {},
    )


@contextmanager
def running(settings: Settings) -> Iterator[ServerThread]:
    """The gateway on a free loopback port; leaving the block shuts it down (and flushes)."""
    app = create_app(settings)
    with ServerThread(app) as server:
        server.gateway = app.state.gateway  # type: ignore[attr-defined]
        yield server


def client(server: ServerThread, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url, api_key="unused", max_retries=0, timeout=30, default_headers=headers
    )


def landed(settings: Settings) -> dict[str, Run]:
    """Every run in the landing zone, the latest copy of each (as ingest keeps it)."""
    archive = RunArchive(settings.paths.landing)
    runs: dict[str, Run] = {}
    for day in archive.days():
        for path in archive.files(day):
            for line in path.read_text().splitlines():
                run = Run.model_validate_json(line)
                old = runs.get(run.run_id)
                if old is None or (run.ended_at or run.started_at) > (
                    old.ended_at or old.started_at
                ):
                    runs[run.run_id] = run
    return runs


def wait_for(check: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
