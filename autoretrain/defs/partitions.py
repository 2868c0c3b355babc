"""Partitions shared by the run-level assets."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg

HISTORY_START_ENV = "AUTORETRAIN_HISTORY_START"


def history_start() -> str:
    """The first daily partition: where the data starts, so the UI's fill and automation speak
    of days that can hold runs (a fixed 2024 start made 1,000+ empty days look missing).

    AUTORETRAIN_HISTORY_START (YYYY-MM-DD) wins; else the oldest landing day; else today. A
    history imported later for older days needs the variable (or a reload of the code
    location), and the landing-zone sensor says so for the days it cannot request."""
    configured = os.environ.get(HISTORY_START_ENV)
    if configured:
        return datetime.strptime(configured, "%Y-%m-%d").strftime("%Y-%m-%d")
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    try:
        from autoretrain.runs.archive import RunArchive
        from autoretrain.settings import load_settings

        days = RunArchive(load_settings().paths.landing).days()
    except Exception:  # noqa: BLE001 - the definitions must load even with broken settings
        days = []
    return min([*days[:1], today])


# One partition per UTC day a run started on. end_offset=1 includes today, where runs land
# as they happen.
daily_partitions = dg.DailyPartitionsDefinition(start_date=history_start(), end_offset=1)

# One partition per candidate model (named after the dataset version it was trained on):
# a handful a week, never one per run, so the instance's partition store stays small.
candidate_partitions = dg.DynamicPartitionsDefinition(name="candidates")
