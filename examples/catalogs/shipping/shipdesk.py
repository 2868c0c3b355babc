"""The shipping catalog's own tool, loaded by import path (`pricing.yaml`, top-level `tools`).

`pricing.yaml` names it `shipdesk:parcel_cost`: the loader puts the catalog's folder on
`sys.path` while it imports the catalog's own tools, so this module loads from any working
directory and command. The tool's name, description and argument schema come from the
signature and docstring below.
"""

from typing import Literal

# USD: a fixed fee per parcel plus a price per kg, by service. Illustrative, like the tables.
BASE_FEE = {"economy": 3.5, "standard": 5.0, "express": 9.0}
PER_KG = {"economy": 1.2, "standard": 1.8, "express": 3.4}


def parcel_cost(weight_kg: float, service: Literal["economy", "standard", "express"]) -> float:
    """Price in USD of one parcel, by weight and service.

    Args:
        weight_kg: the parcel's weight in kg.
        service: economy, standard or express.
    """
    if weight_kg <= 0:
        raise ValueError(f"weight_kg must be above 0, got {weight_kg}")
    return BASE_FEE[service] + PER_KG[service] * weight_kg
