"""The scenario catalog: YAML files of task templates that render into deterministic instances.

A scenario is a task template (`prompt`) with seeded parameter generators (`params`), the tools
it allows, a reference solution (tool calls and final answer) and the expected outcome a verifier
checks. `Catalog.instance(scenario_id, seed)` renders one instance: the same (id, seed) always
gives the same prompt, reference and expected outcome, and its `instance_hash` identifies the
rendered prompt across runs, datasets and evaluations.

Reference calls are executed through the real tools while rendering, so templates may refer to
earlier results (`{result_0}`). The template mini-language (see docs/scenarios.md) is
substitution plus a fixed set of string filters: `{name}`, `{name.field}`, `{name|upper}`,
`{{`/`}}` for literal braces. Nothing is ever evaluated as Python.

Evaluation has two tiers, and seeds keep them apart: demonstrations, self-play and the
in-distribution tier draw from disjoint `SEED_RANGES`; the held-out tier uses eval scenarios whose
ids and templates never appear among the train scenarios (the loader refuses a catalog where they
do). Where a scenario's instance space is small (a lookup over 60 keys), the in-distribution tier
takes at most a quarter of it, so the rest stays available to demonstrations and self-play.

The package, one module per idea: `model` (scenarios, instances, seed ranges), `templates` (the
mini-language), `generators` (seeded parameters), `render` (one scenario at one seed), `catalog`
(the loaded catalog and its instance draws), `schema` (the YAML file's JSON Schema), `expected`
(deterministic expected-outcome checks) and `loader` (loading and validation).
"""

from autoretrain.scenarios.catalog import EVAL_SPACE_SHARE, Catalog
from autoretrain.scenarios.expected import Outcome, check_expected
from autoretrain.scenarios.generators import GENERATOR_KINDS, Generator
from autoretrain.scenarios.loader import CatalogError, CatalogIssue, catalog_files, load_catalog
from autoretrain.scenarios.model import (
    DATA_DIR,
    EXPECTED_KINDS,
    SEED_RANGES,
    SPLITS,
    Budgets,
    Scenario,
    ScenarioInstance,
    prompt_hash,
)
from autoretrain.scenarios.render import RenderError, render_instance
from autoretrain.scenarios.schema import CATALOG_SCHEMA
from autoretrain.scenarios.templates import (
    FILTERS,
    TemplateError,
    placeholders,
    render_text,
    render_value,
)

__all__ = [
    "CATALOG_SCHEMA",
    "DATA_DIR",
    "EVAL_SPACE_SHARE",
    "EXPECTED_KINDS",
    "FILTERS",
    "GENERATOR_KINDS",
    "SEED_RANGES",
    "SPLITS",
    "Budgets",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "Generator",
    "Outcome",
    "RenderError",
    "Scenario",
    "ScenarioInstance",
    "TemplateError",
    "catalog_files",
    "check_expected",
    "load_catalog",
    "placeholders",
    "prompt_hash",
    "render_instance",
    "render_text",
    "render_value",
]
