"""The Dagster entry point: one Definitions built from `autoretrain/defs/`."""

from __future__ import annotations

import dagster as dg

from autoretrain.defs.resources import AutoretrainConfig
from autoretrain.defs.runs import landing_zone_sensor, raw_runs
from autoretrain.defs.scenarios import scenario_catalog
from autoretrain.defs.scoring import promotion_decisions, scored_runs

defs = dg.Definitions(
    assets=[scenario_catalog, raw_runs, scored_runs, promotion_decisions],
    sensors=[landing_zone_sensor],
    resources={"autoretrain": AutoretrainConfig()},
)
