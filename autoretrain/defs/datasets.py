"""Dagster wiring for curation: `training_dataset` and its checks."""

import json

import dagster as dg

from autoretrain.defs.automation import new_promotion_decisions
from autoretrain.defs.resources import ProjectResource

# (check, blocking, what it proves): shown as each check's description in the UI.
DATASET_CHECKS = [
    ("dataset_validates", True, "Every line is a valid tool-aware OpenAI chat example."),
    (
        "splits_disjoint",
        True,
        "No prompt is in both train and eval; no held-out scenario in either.",
    ),
    (
        "no_evaluation_instances",
        True,
        "No evaluation instance (by prompt hash) or held-out scenario is in the dataset.",
    ),
    ("no_secrets", True, "An independent scan finds no secret or personal data."),
    ("enough_examples", True, "At least the minimum number of training examples."),
    ("examples_per_category", False, "Each category has its configured minimum of examples."),
]


# A multi-asset only so that `training_dataset` and its checks may be skipped together (a
# plain @asset makes check outputs required even with output_required=False): a run that finds
# runs still on their way, or too few new ones, ends green with nothing materialized.
@dg.multi_asset(
    name="training_dataset",
    specs=[
        dg.AssetSpec(
            "training_dataset",
            deps=["promotion_decisions", "scenario_catalog"],
            group_name="curation",
            kinds={"json"},
            automation_condition=new_promotion_decisions(),
            skippable=True,
            description=(
                "A new versioned OpenAI chat fine-tuning dataset (train.jsonl, eval.jsonl, "
                "manifest.json) from every promotable run, human decisions over automatic ones: "
                "redacted, deduplicated, split by scenario, evaluation instances kept out."
            ),
        )
    ],
    check_specs=[
        # ERROR severity where `blocking` says so, but not blocking inside the run: a dataset
        # that fails a check is an answer (a red check on a green run, no stack trace), and
        # nothing downstream shares its run; `new_dataset_sensor` and the loop read the checks.
        dg.AssetCheckSpec(name, asset="training_dataset", description=description)
        for name, _, description in DATASET_CHECKS
    ],
    pool="duckdb",
    can_subset=True,
)
def training_dataset(context: dg.AssetExecutionContext, autoretrain: ProjectResource):
    """Build the next dataset version and check it, or skip (logging why) when it is too early."""
    from autoretrain.curation.checks import check_dataset

    project = autoretrain.project()
    settings = project.settings
    waiting = runs_on_their_way(context.instance, settings)
    if waiting:
        # Built now, the version would leave out runs that already landed (the sensor and the
        # judging runs catch up within a minute or two; their decisions wake this asset again).
        context.log.info(f"not built yet: {waiting}")
        return
    new, last = project.new_promotable_runs()
    if last is not None and new < settings.dataset.min_new_promotable_runs:
        # Not materialized: downstream training is not started for a handful of new runs.
        context.log.info(
            f"{new} new promotable runs since dataset {last}; a new version needs "
            f"{settings.dataset.min_new_promotable_runs} (dataset.min_new_promotable_runs)"
        )
        return
    version = project.build_training_dataset()
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
    catalog = project.catalog
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


def runs_on_their_way(instance: dg.DagsterInstance, settings) -> str:  # type: ignore[no-untyped-def]
    """Why a dataset built now would miss landed runs ('' when nothing is on its way): landing
    files newer than the run that last ingested their day, or an ingest newer than the last
    decisions."""
    from autoretrain.defs.partitions import daily_partitions
    from autoretrain.defs.runs import landing_state, latest_run_starts

    valid = set(daily_partitions.get_partition_keys())
    # Days outside the partitions cannot be ingested by Dagster; the sensor warns about them.
    state = {d: v for d, v in landing_state(settings.paths.landing).items() if d in valid}
    if not state:
        return ""
    ingested = latest_run_starts(instance, "raw_runs", list(state))
    pending = [
        day
        for day, (_, newest_ns) in state.items()
        if day not in ingested or newest_ns / 1e9 > ingested[day]
    ]
    if pending:
        return f"landing files not yet ingested for {', '.join(sorted(pending)[:3])}"
    decided = latest_run_starts(instance, "promotion_decisions", list(state))
    late = [d for d in state if decided.get(d, 0.0) < ingested[d]]
    return f"runs ingested but not yet decided for {', '.join(sorted(late)[:3])}" if late else ""
