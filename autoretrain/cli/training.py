"""`autoretrain bootstrap` (the embedded base model) and `autoretrain train` (a candidate)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--output", type=click.Path(path_type=Path), help="Default: <models>/embedded/v0.")
@click.option("--demos-per-scenario", type=int, help="Reference demonstrations per train scenario.")
@click.option("--seed", type=int)
@click.option("--time-budget", "time_budget_s", type=float, help="Safety cap on training seconds.")
@click.option("--force", is_flag=True, help="Replace an existing model at the output path.")
@click.option(
    "--calibrate/--no-calibrate",
    default=None,
    help="Size demonstrations per category by a first build's pass rates (default: the "
    "training.bootstrap_calibration setting).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--no-eval", is_flag=True, help="Skip measuring the pass rate on both evaluation tiers."
)
def bootstrap(
    output, demos_per_scenario, seed, time_budget_s, force, calibrate, as_json, no_eval
) -> None:
    """Build the tokenizer and a tiny Llama and train it on the catalog's reference demonstrations."""
    from autoretrain.project import Project
    from autoretrain.scenarios import CatalogError
    from autoretrain.training.bootstrap import CALIBRATION_FILE
    from autoretrain.training.lora import METRICS_FILE

    project = Project.open()
    try:
        target = project.bootstrap(
            output,
            force,
            demos_per_scenario=demos_per_scenario or None,
            seed=seed,
            time_budget_s=time_budget_s or None,
            calibrate=calibrate,
        )
    except FileExistsError as exc:
        if exc.filename != str(output or project.embedded_model_dir()):
            raise
        raise click.ClickException(
            f"{exc.filename} already exists; pass --force to rebuild it"
        ) from None
    except CatalogError as exc:
        raise click.ClickException(
            f"scenario catalog {project.settings.scenarios_dir}: {exc}"
        ) from exc
    metrics = json.loads((target / METRICS_FILE).read_text())
    summary = {
        "model_dir": str(target),
        "parameters": metrics["total_params"],
        "demonstrations": metrics["examples"]["train"],
        "final_train_loss": metrics["final_train_loss"],
        "best_validation_loss": metrics["best_eval_loss"],
        "steps": metrics["steps"],
        "epochs": metrics["epochs_done"],
        "stopped_by": metrics["stopped_by"],
        "train_seconds": metrics["train_seconds"],
        "tokens_per_s": metrics["tokens_per_s"],
    }
    calibration = target / CALIBRATION_FILE
    if calibration.exists():
        summary["calibration"] = json.loads(calibration.read_text())
    if not no_eval:
        from autoretrain.providers.local import LocalChatModel

        summary["pass_rates"] = project.pass_rates(LocalChatModel(target, name="v0")).to_dict()
    if output is None:
        # The default location is the project's base model: register it as v0 and fill primary
        # (once: a primary already held by a later version is left alone), so `selfplay` works.
        summary["registered"] = project.ensure_base_model()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"{target}: {summary['parameters']:,} parameters, {summary['demonstrations']} demonstrations, "
        f"loss {summary['final_train_loss']:.4f} (validation {summary['best_validation_loss']}), "
        f"{summary['epochs']} epochs in {summary['train_seconds']:.1f} s ({summary['stopped_by']})"
    )
    for tier, rates in summary.get("pass_rates", {}).items():
        per = ", ".join(f"{c} {r:.0%}" for c, r in rates["by_category"].items())
        click.echo(
            f"  {tier}: pass rate {rates['pass_rate']:.1%} over {rates['instances']} instances ({per})"
        )
    if summary.get("registered"):
        click.echo(
            f"primary slot: {summary['registered']}. Next: `autoretrain selfplay --n 200`, or "
            "`autoretrain loop` for the whole cycle."
        )


@click.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--base",
    "base_model_dir",
    type=click.Path(path_type=Path),
    help="Train this Hugging Face model directory instead of the primary slot's version; "
    "the result is not registered (register it yourself, docs/guides/own-model.md).",
)
@click.option("--name", default="embedded", show_default=True, help="Model name under <models>/.")
@click.option(
    "--version",
    help="Version id (and folder). Default: cand-<dataset version>, the name the automation "
    "gives the candidate of a dataset version.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Exact output folder (overrides name/version).",
)
@click.option("--method", type=click.Choice(["auto", "full", "lora", "qlora"]))
@click.option("--epochs", type=float)
@click.option("--learning-rate", type=float)
@click.option("--batch-size", type=int)
@click.option("--max-seq-len", type=int)
@click.option("--lora-r", type=int)
@click.option("--seed", type=int)
@click.option(
    "--merge/--no-merge", "merge_adapter", default=None, help="Also export a merged model."
)
@click.option("--time-budget", "time_budget_s", type=float)
@click.option(
    "--mix-in",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Extra JSONL added to the train split (the base model's demonstrations are mixed in "
    "already when training the primary slot's version).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "azure"]),
    help="local: train here; azure: an Azure OpenAI fine-tuning job, registered as --version "
    "(default: training.backend).",
)
@click.option(
    "--cancel", is_flag=True, help="With --backend azure: cancel --version's recorded job."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def train(
    dataset_dir, base_model_dir, name, version, output, mix_in, backend, cancel, as_json, **options
) -> None:
    """Fine-tune the primary slot's version on a dataset version (full, LoRA or QLoRA) and
    register the candidate as --version, its parent the primary: the `candidate_model` asset's
    training. Or a model directory of your own (--base), or a hosted Azure OpenAI fine-tune
    (--backend azure)."""
    from autoretrain.deploy.registry import RegistryError
    from autoretrain.project import Project, candidate_key
    from autoretrain.training.data import DatasetError, LossMaskError
    from autoretrain.training.lora import TrainingError

    project = Project.open()
    settings = project.settings
    version = version or candidate_key(dataset_dir.name)
    if (backend or settings.training.backend) == "azure":
        _train_hosted(project, dataset_dir, version, cancel, as_json)
        return
    parent = None
    if base_model_dir is None:
        incumbent = project.slot_version("primary")
        if incumbent is None:
            raise click.ClickException(
                "no model in the primary slot to train from: run `autoretrain bootstrap` (it "
                "registers the embedded v0 there), promote a version, or pass --base DIR"
            )
        if incumbent.kind != "local":
            raise click.ClickException(
                f"the primary slot holds {incumbent.id}, a hosted version: fine-tune it with "
                "--backend azure, or pass --base DIR to train a local model directory"
            )
        parent = incumbent.id
    elif not base_model_dir.exists():
        raise click.ClickException(f"base model {base_model_dir} not found")
    target = output or settings.paths.models / name / version
    try:
        result = project.train_candidate(
            dataset_dir,
            version,
            backend="local",
            base_dir=base_model_dir,
            output_dir=target,
            mix_in=list(mix_in),
            **options,
        )
    except (DatasetError, LossMaskError, TrainingError, RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    m = result.metrics
    summary = {
        "version": version,
        "registered": parent is not None,
        "parent_version": parent,
        "output_dir": str(result.output_dir),
        "model_dir": str(result.model_dir),
        "method": result.method,
        "steps": m["steps"],
        "stopped_by": m["stopped_by"],
        "final_train_loss": m["final_train_loss"],
        "best_eval_loss": m["best_eval_loss"],
        "tokens_per_s": m["tokens_per_s"],
        "train_seconds": m["train_seconds"],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"{result.output_dir} ({result.method}): {m['steps']} steps, loss {m['final_train_loss']}, "
        f"eval {m['best_eval_loss']}, {m['tokens_per_s']} tokens/s, {m['train_seconds']} s ({m['stopped_by']})"
    )
    if parent is not None:
        click.echo(
            f"registered {version} (trained from {parent}). Next: "
            f"`autoretrain promote {version} --slot canary`."
        )
    else:
        click.echo(
            "not registered (trained from --base): register it to promote it "
            "(docs/guides/own-model.md)."
        )


def _train_hosted(project, dataset_dir: Path, version: str, cancel: bool, as_json: bool):  # type: ignore[no-untyped-def]
    """`train --backend azure`: submit (or re-attach to) the job, register the candidate."""
    from autoretrain.training.hosted import HostedFineTuneError
    from autoretrain.training.hosted_candidate import cancel_hosted

    try:
        if cancel:
            job_id = cancel_hosted(project.hosted_backend(), project.paths.models, version)
            click.echo(f"cancellation of job {job_id} ({version}) requested")
            return
        result = project.train_hosted_candidate(dataset_dir, version)
    except (HostedFineTuneError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    summary = {
        "version": version,
        "job_id": result.job_id,
        "model_id": result.model_id,
        "reattached": result.reattached,
        "metrics": result.metrics.record,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(
        f"{version}: hosted fine-tune {result.job_id} -> {result.model_id}"
        + (" (re-attached)" if result.reattached else "")
        + f"; registered. Next: `autoretrain promote {version} --slot canary`."
    )
