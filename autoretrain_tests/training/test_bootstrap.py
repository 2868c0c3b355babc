from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoretrain.cli import cli


@pytest.mark.integration
def test_bootstrap_command_builds_v0_from_train_demos_only(settings, monkeypatch, tmp_path):
    import autoretrain.training.bootstrap as bootstrap
    from autoretrain.scenarios import load_catalog
    from autoretrain.training.config import TrainConfig

    quick = TrainConfig(**{**bootstrap.BOOTSTRAP_DEFAULTS.to_dict(), "epochs": 1, "batch_size": 8})
    monkeypatch.setattr(bootstrap, "BOOTSTRAP_DEFAULTS", quick)
    monkeypatch.setattr(
        bootstrap,
        "BOOTSTRAP_SIZE",
        {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
    )
    catalog_dir = Path(__file__).resolve().parents[2] / "scenarios"
    monkeypatch.setenv("AUTORETRAIN_SCENARIOS", str(catalog_dir))
    # Short turns keep the pass-rate report quick for an untrained-sized model.
    config = tmp_path / "autoretrain.yaml"
    config.write_text("evaluation: {max_tokens: 16}\n")
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    result = CliRunner().invoke(cli, ["bootstrap", "--demos-per-scenario", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    rates = summary["pass_rates"]
    assert set(rates) == {"in_distribution", "held_out"}
    assert all(0 <= r["pass_rate"] <= 1 and r["instances"] > 0 for r in rates.values())
    model_dir = Path(summary["model_dir"])
    assert model_dir == settings.paths.models / "embedded" / "v0"
    assert summary["parameters"] > 0 and summary["final_train_loss"] > 0

    catalog = load_catalog(catalog_dir)
    demos = [
        json.loads(line) for line in (model_dir / "demonstrations.jsonl").read_text().splitlines()
    ]
    train_ids = {s.id for s in catalog.train_scenarios}
    assert {d["metadata"]["scenario_id"] for d in demos} == train_ids
    evaluation = catalog.evaluation_hashes(settings.evaluation.instances_per_scenario)
    for demo in demos:
        instance = catalog.instance(demo["metadata"]["scenario_id"], demo["metadata"]["seed"])
        assert instance.instance_hash not in evaluation
    again = CliRunner().invoke(cli, ["bootstrap"])
    assert again.exit_code != 0 and "already exists" in again.output


def test_a_v0_from_another_catalog_is_kept_with_a_warning(settings, tmp_path_factory, caplog):
    import json
    import logging

    from autoretrain.project import BASE_VERSION, EMBEDDED, Project
    from autoretrain_tests.deploy.model_files import copy_model, tiny_model

    project = Project(settings)
    model_dir = copy_model(
        tiny_model(tmp_path_factory), settings.paths.models / EMBEDDED / BASE_VERSION
    )
    (model_dir / "train_config.json").write_text(
        json.dumps({"bootstrap": {"catalog_hash": "f" * 64, "catalog_root": "elsewhere"}})
    )
    with caplog.at_level(logging.WARNING, logger="autoretrain.project"):
        assert project.ensure_base_model() == BASE_VERSION
    (warning,) = [r.getMessage() for r in caplog.records if "bootstrapped from" in r.getMessage()]
    assert "elsewhere" in warning and "ffffffffffff" in warning and "--force" in warning
