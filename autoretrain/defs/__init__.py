"""Dagster wiring, one module per stage. The logic lives in plain Python modules beside it."""

import warnings

import dagster as dg

# Chosen on purpose and pinned with dagster: partitioned asset checks (preview) scope each gate
# to its candidate; backfill policies and observable source assets are beta. Their warnings
# would print on every load of the definitions (the CLI, the UI, each run).
for _category in (dg.PreviewWarning, dg.BetaWarning):
    warnings.filterwarnings("ignore", category=_category)
