"""The one Dagster instance every entry point shares: `<root>/dagster`.

`autoretrain loop`, `autoretrain ui` (dagster dev) and the tests all run against the instance
under DAGSTER_HOME, so what the loop did is what the UI shows. The instance's `dagster.yaml`
holds concurrency pools to one slot by default, which keeps the `duckdb` pool (every asset that
writes the run store) to a single writer process.
"""

from __future__ import annotations

import os
from pathlib import Path

from autoretrain.settings import Settings

DAGSTER_YAML = """\
# Written by autoretrain. Pools default to one slot: DuckDB allows a single writer process,
# and every asset that writes the run store runs in the `duckdb` pool.
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def ensure_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at the project's instance (unless the user set one) and write its
    dagster.yaml if missing. Returns the folder."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.paths.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
