"""Dagster wiring for models: the embedded `base_model` and `candidate_model[candidate]`."""

import json

import dagster as dg

from autoretrain import stages
from autoretrain.defs.partitions import candidate_partitions
from autoretrain.defs.resources import AutoretrainConfig


@dg.asset(deps=["scenario_catalog"], pool="duckdb", group_name="training", kinds={"pytorch"})
def base_model(
    context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig
) -> dg.MaterializeResult:
    """The first incumbent. On the embedded default: a tiny Llama-style model built and trained
    from scratch on the train scenarios' reference demonstrations (no download), registered as
    `v0` in the primary slot. Remote profiles bring their own model; nothing is built."""
    settings = autoretrain.settings()
    version = stages.ensure_base_model(settings)
    meta: dict = {"primary": version or f"profile {settings.provider} ({settings.profile.kind})"}
    if version is not None:
        held = stages.slot_version(settings, "primary")
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
    context: dg.AssetExecutionContext, autoretrain: AutoretrainConfig
) -> dg.MaterializeResult:
    """A candidate fine-tuned from the incumbent on one dataset version (the partition names
    it); full fine-tune for small models, LoRA for large ones (docs/guides/own-model.md)."""
    settings = autoretrain.settings()
    key = context.partition_key
    dataset_dir = settings.paths.datasets / key.removeprefix("cand-")
    if not dataset_dir.exists():
        raise dg.Failure(
            f"dataset version {dataset_dir.name} not found under {settings.paths.datasets}"
        )
    result = stages.train_candidate(settings, dataset_dir, key)
    m = result.metrics
    curve = m.get("eval_curve") or m.get("eval_losses") or []
    return dg.MaterializeResult(
        metadata={
            "version": key,
            "method": result.method,
            "model_dir": dg.MetadataValue.path(str(result.model_dir)),
            "adapter_dir": dg.MetadataValue.path(str(result.adapter_dir))
            if result.adapter_dir
            else "none",
            "tokens_per_s": float(m.get("tokens_per_s") or 0.0),
            "final_train_loss": float(m.get("final_train_loss") or 0.0),
            "best_eval_loss": float(m.get("best_eval_loss") or 0.0),
            "train_seconds": float(m.get("train_seconds") or 0.0),
            "loss_curve": dg.MetadataValue.json(
                json.loads(
                    json.dumps(m.get("train_curve") or m.get("loss_curve") or [], default=str)
                )
            ),
            "eval_curve": dg.MetadataValue.json(json.loads(json.dumps(curve, default=str))),
        }
    )
