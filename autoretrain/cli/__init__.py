"""The `autoretrain` command.

Subcommands live in small modules under `autoretrain/cli/` and are imported only when invoked,
so `autoretrain --help` stays fast (torch, transformers and dagster load only where needed).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings

import click

# command name -> "module:attribute" (a click.Command or click.Group)
COMMANDS: dict[str, tuple[str, str]] = {
    "loop": ("autoretrain.cli.loop:loop", "Run the full retraining loop once (or N times)."),
    "ingest": ("autoretrain.cli.runs:ingest", "Ingest landing-zone days into the run store."),
    "runs": ("autoretrain.cli.runs:runs", "Counts of stored runs and quarantined records."),
    "import": ("autoretrain.cli.runs:import_", "Import runs from another app's JSONL."),
    "mirror": ("autoretrain.cli.mirror:mirror", "Sync the landing zone to Azure Blob Storage."),
    "scenarios": ("autoretrain.cli.scenarios:scenarios", "Validate, list and show scenarios."),
    "bootstrap": ("autoretrain.cli.training:bootstrap", "Build and train the embedded base model."),
    "selfplay": ("autoretrain.cli.selfplay:selfplay", "Run the agent on sampled scenarios."),
    "serve": ("autoretrain.cli.serve:serve", "Serve slot models over an OpenAI-compatible API."),
    "gateway": ("autoretrain.cli.gateway:gateway", "Forward and record agents' model calls."),
    "review": ("autoretrain.cli.review:review", "Review runs that need a human decision."),
    "dataset": ("autoretrain.cli.dataset:dataset", "Build and validate fine-tuning datasets."),
    "train": ("autoretrain.cli.training:train", "Train a candidate from a dataset version."),
    "models": ("autoretrain.cli.models:models", "List model versions, slots and the ledger."),
    "promote": ("autoretrain.cli.models:promote", "Move a model version into a slot."),
    "rollback": ("autoretrain.cli.models:rollback", "Return a slot to its last promoted version."),
    "eval": ("autoretrain.cli.evaluation:eval_", "Show evaluation comparisons."),
    "ui": ("autoretrain.cli.ui:ui", "Open the Dagster UI on the project's instance."),
    "azure": ("autoretrain.cli.azure:azure_cli", "Azure deployments (keep-alive, retire)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None  # that stage is not built yet
            raise

    def invoke(self, ctx: click.Context) -> object:
        # Every command, in one place: an error a person can fix (bad settings, a database
        # another process holds, a missing credential) is one message and exit 1, not a
        # traceback. Anything else is a bug and keeps its traceback.
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from autoretrain.cli.errors import user_message

            message = user_message(exc)
            if message is None:
                raise
            logging.getLogger("autoretrain.cli").debug("the error in full", exc_info=exc)
            raise click.ClickException(message) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table above, so listing commands imports nothing heavy.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    module = COMMANDS[name][0].split(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """autoretrain: turn an agent's verified runs into a better model."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    # Dagster marks some parameters we rely on (single-run backfills) as beta; say it once in
    # the docs, not on every command.
    warnings.filterwarnings("ignore", message=r".*is currently in beta.*")
    cli(prog_name="autoretrain")
