"""Partitions shared by the run-level assets."""

import dagster as dg

# One partition per UTC day a run started on. end_offset=1 includes today, where runs land
# as they happen; the start leaves room to backfill imported history.
daily_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)
