"""Partitions shared by the run-level assets."""

import dagster as dg

# One partition per UTC day a run started on. end_offset=1 includes today, where runs land
# as they happen; the start leaves room to backfill imported history.
daily_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)

# One partition per candidate model (named after the dataset version it was trained on):
# a handful a week, never one per run, so the instance's partition store stays small.
candidate_partitions = dg.DynamicPartitionsDefinition(name="candidates")
