"""Dagster wiring for curation: `training_dataset` and its blocking checks."""

import json

import dagster as dg

from autoretrain import stages
from autoretrain.defs.automation import enough_new_promotable_runs
from autoretrain.defs.resources import AutoretrainConfig

DATASET_CHECKS = [
    ("dataset_validates", True),
    ("splits_disjoint", True),
    ("no_evaluation_instances", True),
    ("no_secrets", True),
    ("enough_examples", True),
    ("examples_per_category", False),
]


@dg.asset(
    deps=["promotion_decisions", "scenario_catalog"],
    pool="duckdb",
    group_name="curation",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(name, asset="training_dataset", blocking=blocking)
        for name, blocking in DATASET_CHECKS
    ],
    automation_condition=enough_new_promotable_runs(),
    output_required=False,
)
def training_dataset(context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig):
    """A new versioned OpenAI chat fine-tuning dataset (train.jsonl, eval.jsonl, manifest.json)
    from every promotable run — human decisions over automatic ones — redacted, deduplicated,
    split by scenario, with evaluation instances kept out (proven by the checks)."""
    from autoretrain.curation.checks import check_dataset
    from autoretrain.scenarios import load_catalog

    settings = autoretrain.settings()
    new, last = stages.new_promotable_runs(settings)
    if last is not None and new < settings.dataset.min_new_promotable_runs:
        # Not materialized: downstream training is not started for a handful of new runs.
        context.log.info(
            f"{new} new promotable runs since dataset {last}; a new version needs "
            f"{settings.dataset.min_new_promotable_runs} (dataset.min_new_promotable_runs)"
        )
        return
    version = stages.build_training_dataset(settings)
    counts = version.manifest["counts"]
    yield dg.MaterializeResult(
        metadata={
            "version": version.version,
            "path": dg.MetadataValue.path(str(version.path)),
            "manifest": dg.MetadataValue.path(str(version.path / "manifest.json")),
            "train_examples": counts["train"],
            "eval_examples": counts["eval"],
            "by_category": dg.MetadataValue.json(counts["by_category"]),
            "redactions": dg.MetadataValue.json(version.redactions),
            "exclusions": dg.MetadataValue.json(version.exclusions),
            "dagster/row_count": counts["train"] + counts["eval"],
        }
    )
    catalog = load_catalog(settings.scenarios_dir)
    for outcome in check_dataset(
        version.path,
        catalog.evaluation_hashes(settings.evaluation.instances_per_scenario),
        {s.id for s in catalog.eval_scenarios},
        min_examples_per_category=settings.dataset.min_examples_per_category,
        extra_secret_patterns=settings.dataset.extra_secret_patterns,
    ):
        yield dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR
            if outcome.blocking
            else dg.AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata={
                "details": dg.MetadataValue.json(
                    json.loads(json.dumps(outcome.metadata, default=str))
                )
            },
        )
