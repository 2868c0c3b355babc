"""`autoretrain train` is the `candidate_model` asset's training (Project.train_candidate): it
fine-tunes the version in the primary slot, not a default v0 folder, and registers the candidate
under the automation's name with the primary as its parent (issue 18: it trained from v0 and
registered nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.project import Project
from autoretrain_tests.deploy.model_files import copy_model, tiny_model
from autoretrain_tests.training.conftest import write_dataset

QUICK = ["--epochs", "1", "--batch-size", "4", "--max-seq-len", "256", "--seed", "0"]


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_train_fine_tunes_the_primary_and_registers_the_candidate(settings, tmp_path_factory):
    project = Project(settings)
    # The incumbent is not where the old default (<models>/embedded/v0) looked, and v0 does not
    # exist at all: only the primary slot says what to train.
    incumbent = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "elsewhere" / "v1")
    with project.store() as store:
        registry = project.registry(store)
        registry.register(base_model="tiny", kind="local", model_dir=incumbent, version_id="v1")
        registry.promote("v1", "primary")
    dataset = write_dataset(settings.paths.datasets / "20260301T000000Z", n_train=8, n_eval=2)

    result = _invoke("train", str(dataset), *QUICK, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    from autoretrain.defs.automation import candidate_key

    version_id = candidate_key(dataset.name)
    assert summary["version"] == version_id
    assert summary["registered"] and summary["parent_version"] == "v1"
    with project.store(read_only=True) as store:
        version = project.registry(store, read_only=True).get(version_id)
    assert version is not None and version.parent_version == "v1"
    assert version.dataset_version == dataset.name and version.kind == "local"
    assert Path(version.model_dir).is_relative_to(settings.paths.models / "embedded" / version_id)
    config = json.loads(
        (settings.paths.models / "embedded" / version_id / "train_config.json").read_text()
    )
    assert str(incumbent) in json.dumps(config)  # trained on top of the primary's folder

    again = _invoke("train", str(dataset), *QUICK)
    assert again.exit_code == 1 and "already registered" in again.output


def test_train_without_a_primary_names_the_ways_out(settings):
    dataset = write_dataset(settings.paths.datasets / "ds", n_train=8, n_eval=2)
    result = _invoke("train", str(dataset))
    assert result.exit_code == 1
    assert "no model in the primary slot" in result.output and "--base" in result.output


def test_train_from_a_base_folder_trains_it_and_registers_nothing(settings, tmp_path_factory):
    base = tiny_model(tmp_path_factory)
    dataset = write_dataset(settings.paths.datasets / "ds", n_train=8, n_eval=2)
    result = _invoke(
        "train", str(dataset), "--base", str(base), "--name", "own", "--version", "o1", *QUICK,
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output_dir"] == str(settings.paths.models / "own" / "o1")
    assert not summary["registered"] and summary["parent_version"] is None
    if settings.paths.database.exists():
        project = Project(settings)
        with project.store(read_only=True) as store:
            assert project.registry(store, read_only=True).get("o1") is None


def test_a_round_starts_from_the_root_of_the_incumbents_lineage(settings, tmp_path_factory):
    """`training.init_from: base` (the default) retrains the lineage's root (ReST-EM) on each
    round's data, `incumbent` builds on the primary; either way the candidate is the
    incumbent's child."""
    root = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "models" / "v0")
    child = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "models" / "v1")
    project = Project(settings)
    with project.store() as store:
        registry = project.registry(store)
        registry.register(base_model="tiny", kind="local", model_dir=root, version_id="v0")
        registry.register(
            base_model="tiny", kind="local", model_dir=child, version_id="v1", parent_version="v0"
        )
        registry.promote("v1", "primary")
    incumbent = project.slot_version("primary")
    assert project.training_start(incumbent) == root

    raw = settings.model_dump()
    raw["training"]["init_from"] = "incumbent"
    from autoretrain.settings import Settings

    assert Project(Settings.model_validate(raw)).training_start(incumbent) == child
    dataset = write_dataset(settings.paths.datasets / "20260301T000000Z", n_train=8, n_eval=2)
    project.train_candidate(dataset, "cand-1", epochs=1, batch_size=4, max_seq_len=256)
    with project.store(read_only=True) as store:
        version = project.registry(store, read_only=True).get("cand-1")
    assert version.parent_version == "v1"
    config = json.loads((Path(version.model_dir) / "train_config.json").read_text())
    assert config["base_model_dir"] == str(root.resolve())
