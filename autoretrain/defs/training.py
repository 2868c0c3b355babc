"""Dagster wiring for models: the embedded `base_model` and `candidate_model[candidate]`."""

import dagster as dg

from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import ProjectResource
from autoretrain.deploy.targets import hand_made_deployment
from autoretrain.project import HostedTrainResult
from autoretrain.training.config import TrainMetrics


@dg.asset(deps=["scenario_catalog"], pool="duckdb", group_name="training", kinds={"pytorch"})
def base_model(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """The first incumbent. On the embedded default: a tiny Llama-style model built and trained
    from scratch on the train scenarios' reference demonstrations (no download), registered as
    `v0` in the primary slot. Remote profiles bring their own model; nothing is built (with
    `training.backend: azure`, the profile's base deployment is registered as `v0`)."""
    project = autoretrain.project()
    settings = project.settings
    version = project.ensure_base_model()
    meta: dict = {"primary": version or f"profile {settings.provider} ({settings.profile.kind})"}
    held = project.slot_version("primary") if version is not None else None
    if held is not None and held.kind == "hosted":  # training.backend: azure
        meta["hosted_model_id"] = str(held.hosted_model_id)
        meta["deployment"] = hand_made_deployment(held) or ""
    elif held is not None:
        meta["model_dir"] = dg.MetadataValue.path(str(held.model_dir))
        metrics = held.training_metrics or {}
        meta["parameters"] = int(metrics.get("total_params", 0))
        meta["final_train_loss"] = float(metrics.get("final_train_loss") or 0.0)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    deps=["training_dataset", "base_model"],
    partitions_def=candidate_partitions,
    pool="duckdb",
    group_name="training",
    kinds={"pytorch"},
)
def candidate_model(
    context: dg.AssetExecutionContext, autoretrain: ProjectResource
) -> dg.MaterializeResult:
    """A candidate fine-tuned from the incumbent on one dataset version (the partition names
    it); full fine-tune for small models, LoRA for large ones (docs/guides/own-model.md)."""
    project = autoretrain.project()
    settings = project.settings
    key = context.partition_key
    dataset_dir = settings.paths.datasets / key.removeprefix("cand-")
    if not dataset_dir.exists():
        raise dg.Failure(
            f"dataset version {dataset_dir.name} not found under {settings.paths.datasets}"
        )
    result = project.train_candidate(dataset_dir, key)
    m = result.metrics
    where = (
        {"hosted_model_id": result.model_id, "job_id": result.job_id}
        if isinstance(result, HostedTrainResult)
        else {
            "model_dir": dg.MetadataValue.path(str(result.model_dir)),
            "adapter_dir": dg.MetadataValue.path(str(result.adapter_dir))
            if result.adapter_dir
            else "none",
        }
    )
    return dg.MaterializeResult(
        metadata={
            "version": key,
            "method": result.method,
            **where,
            "tokens_per_s": float(m.tokens_per_s or 0.0),
            "final_train_loss": float(m.final_train_loss or 0.0),
            "best_eval_loss": float(m.best_eval_loss or 0.0),
            "train_seconds": float(m.train_seconds or 0.0),
            "trained_tokens": int(m.trained_tokens or 0),
            "steps": int(m.steps or 0),
            "loss_curve": dg.MetadataValue.md(loss_curves_markdown(m)),
        }
    )


def loss_curves_markdown(metrics: TrainMetrics, points: int = 12) -> str:
    """Train loss at evenly spaced steps and every validation loss, as a table the UI renders
    (the full curves are in the model folder's training_metrics.json)."""
    train = metrics.train_loss
    validation = metrics.eval_loss
    if not train and not validation:
        return "(no loss recorded)"
    picked = train[:: max(1, len(train) // points)]
    if train and picked[-1] != train[-1]:
        picked.append(train[-1])
    merged: dict[int, list[str]] = {}
    for step, loss in picked:
        merged.setdefault(step, ["", ""])[0] = f"{loss:.4f}"
    for step, loss in validation:
        merged.setdefault(step, ["", ""])[1] = f"{loss:.4f}"
    rows = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    rows += [f"| {step} | {t} | {v} |" for step, (t, v) in sorted(merged.items())]
    return "\n".join(rows)
