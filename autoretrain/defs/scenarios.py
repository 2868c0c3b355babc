"""The scenario catalog as an observable source asset: its content hash is the data version,
so a change to `scenarios/` shows in the lineage of everything built from it."""

import dagster as dg

from autoretrain.defs.resources import ProjectResource


@dg.observable_source_asset(
    group_name="scenarios",
    description="The scenario catalog (YAML under scenarios/).",
    # Observed on its own: at the first tick, then every 15 minutes, so the UI never shows it
    # "never observed" and a changed catalog shows up in the lineage without a person.
    automation_condition=(
        dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.cron_tick_passed("*/15 * * * *")
    )
    & ~dg.AutomationCondition.in_progress(),
)
def scenario_catalog(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.DataVersion:
    from autoretrain.scenarios import load_catalog

    settings = autoretrain.settings()
    catalog = load_catalog(settings.scenarios_dir, settings.tools)
    context.log.info(
        f"{len(catalog)} scenarios, categories {catalog.categories()}, hash {catalog.hash}"
    )
    return dg.DataVersion(catalog.hash)
