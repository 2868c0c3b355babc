"""The scenario catalog as an observable source asset: its content hash is the data version,
so a change to `scenarios/` shows in the lineage of everything built from it."""

import dagster as dg

from autoretrain.defs.resources import AutoretrainConfig


@dg.observable_source_asset(
    group_name="scenarios", description="The scenario catalog (YAML under scenarios/)."
)
def scenario_catalog(
    context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig
) -> dg.DataVersion:
    from autoretrain.scenarios import load_catalog

    settings = autoretrain.settings()
    catalog = load_catalog(settings.scenarios_dir)
    context.log.info(
        f"{len(catalog)} scenarios, categories {catalog.categories()}, hash {catalog.hash}"
    )
    return dg.DataVersion(catalog.hash)
