"""Settings for the mirror tests against Azurite (Blob: test_mirror, Table: test_table_mirror)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autoretrain.settings import Settings, load_settings

# Quick retries and timeouts: an outage in a test costs a fraction of a second, not minutes.
QUICK_RETRIES = {
    "max_retries": 2,
    "backoff_s": 0.05,
    "backoff_max_s": 0.2,
    "connect_timeout_s": 2.0,
}


def storage_settings(
    monkeypatch: Any, env: str, connection_string: str, mirror: dict[str, object]
) -> Settings:
    """Settings whose mirror reads `connection_string` from the variable `env`, with quick
    retries; `mirror` adds or overrides settings of the mirror section."""
    monkeypatch.setenv(env, connection_string)
    conf = {"connection_string_env": env, **QUICK_RETRIES, **mirror}
    return load_settings(config_file=Path(os.devnull), mirror=conf)
