from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoretrain.cli import cli


@pytest.fixture
def tiny_bootstrap(monkeypatch):
    """The bootstrap's schedule and model cut to a one-epoch, few-hundred-parameter build."""
    import autoretrain.training.bootstrap as bootstrap
    from autoretrain.training.config import TrainConfig

    quick = TrainConfig(**{**bootstrap.BOOTSTRAP_DEFAULTS.to_dict(), "epochs": 1, "batch_size": 8})
    monkeypatch.setattr(bootstrap, "BOOTSTRAP_DEFAULTS", quick)
    size = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    monkeypatch.setattr(bootstrap, "BOOTSTRAP_SIZE", {**size, "num_attention_heads": 2})
    return bootstrap


@pytest.mark.integration
def test_bootstrap_command_builds_v0_from_train_demos_only(
    settings, monkeypatch, tmp_path, tiny_bootstrap
):
    from autoretrain.scenarios import load_catalog

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


def test_demonstration_counts_can_differ_by_scenario():
    from collections import Counter

    from autoretrain.scenarios import load_catalog
    from autoretrain.training.bootstrap import demonstration_records

    catalog = load_catalog(Path(__file__).resolve().parents[2] / "scenarios")
    exclude = catalog.evaluation_hashes(70)
    uniform = demonstration_records(catalog, 4, 2, exclude)
    # No counts: what every build before them used, record for record.
    assert demonstration_records(catalog, 4, 2, exclude, {}) == uniform

    hard, easy = catalog.train_scenarios[0].id, catalog.train_scenarios[1].id
    train, validation = demonstration_records(catalog, 4, 2, exclude, {hard: 9, easy: 1})
    per = Counter(r["metadata"]["scenario_id"] for r in train)
    assert per[hard] == 9 and per[easy] == 1
    assert all(n == 4 for s, n in per.items() if s not in (hard, easy))
    # A scenario's first demonstrations are the same whatever its count.
    seeds = [r["metadata"]["seed"] for r in train if r["metadata"]["scenario_id"] == hard]
    assert seeds[:4] == [
        r["metadata"]["seed"] for r in uniform[0] if r["metadata"]["scenario_id"] == hard
    ]
    held = Counter(r["metadata"]["scenario_id"] for r in validation)
    assert held[hard] == held[easy] == 2
    train_seeds = {(r["metadata"]["scenario_id"], r["metadata"]["seed"]) for r in train}
    assert not train_seeds & {
        (r["metadata"]["scenario_id"], r["metadata"]["seed"]) for r in validation
    }

    with pytest.raises(ValueError, match="not train scenarios: \\['no_such_scenario'\\]"):
        demonstration_records(catalog, 4, 2, exclude, {"no_such_scenario": 3})


def test_calibration_moves_demonstrations_out_of_solved_categories_into_unsolved_ones():
    from types import SimpleNamespace

    from autoretrain.training.bootstrap import Calibration, calibrated_counts, macro_pass_rate

    catalog = SimpleNamespace(
        train_scenarios=[
            SimpleNamespace(id="quote_a", category="quote"),
            SimpleNamespace(id="quote_b", category="quote"),
            SimpleNamespace(id="decline_a", category="decline"),
            SimpleNamespace(id="labels_a", category="labels"),
            SimpleNamespace(id="new_a", category="new"),  # not probed: left as it is
        ]
    )
    rates = {"quote": 0.05, "decline": 1.0, "labels": 0.2}
    assert calibrated_counts(catalog, rates, 48) == {"quote_a": 96, "quote_b": 96, "decline_a": 12}
    assert calibrated_counts(catalog, rates, 1) == {"quote_a": 2, "quote_b": 2, "decline_a": 1}
    assert calibrated_counts(catalog, {"labels": 0.5}, 48) == {}  # all in the band
    narrow = Calibration(low=0.3, high=0.9, more=3, fewer=0.5)
    assert calibrated_counts(catalog, rates, 48, narrow) == {
        "quote_a": 144,
        "quote_b": 144,
        "decline_a": 24,
        "labels_a": 144,
    }
    assert macro_pass_rate(rates) == pytest.approx((0.05 + 1.0 + 0.2) / 3)


@pytest.mark.integration
def test_a_calibrated_bootstrap_builds_twice_and_keeps_the_better_build(
    settings, tmp_path, tiny_bootstrap
):
    from autoretrain.project import Project

    bootstrap = tiny_bootstrap

    project = Project(settings)
    probed: list[tuple[str, int]] = []

    def probe(model_dir: Path, n: int) -> dict[str, float]:
        # The real probe plays the model (Project.train_pass_rates); here the first build is
        # made to look unable to decline, so the second one gets more decline demonstrations.
        probed.append((model_dir.name, n))
        if model_dir.name == "uniform":
            return {"decline": 0.0, "arithmetic": 1.0, "text": 0.5}
        return {"decline": 0.5, "arithmetic": 1.0, "text": 0.5}

    target = tmp_path / "v0"
    bootstrap.bootstrap_calibrated(
        project.catalog,
        target,
        probe,
        demos_per_scenario=4,
        calibration=bootstrap.Calibration(probe_per_scenario=3),
    )
    assert probed == [("uniform", 3), ("calibrated", 3)]
    record = json.loads((target / bootstrap.CALIBRATION_FILE).read_text())
    assert record["chosen"] == "calibrated"
    counts = record["calibrated"]["demos_by_scenario"]
    by_category = {s.id: s.category for s in project.catalog.train_scenarios}
    assert {by_category[s] for s, n in counts.items() if n == 8} == {"decline"}
    assert {by_category[s] for s, n in counts.items() if n == 1} == {"arithmetic"}
    demos = [json.loads(line) for line in (target / bootstrap.DEMOS_FILE).read_text().splitlines()]
    per = {}
    for demo in demos:
        scenario = demo["metadata"]["scenario_id"]
        per[scenario] = per.get(scenario, 0) + 1
    assert per == {s.id: counts.get(s.id, 4) for s in project.catalog.train_scenarios}
    built = json.loads((target / "train_config.json").read_text())["bootstrap"]
    assert built["demos_by_scenario"] == counts
    assert not any(p.name.startswith("autoretrain-calibrate-") for p in tmp_path.iterdir())

    # The real probe: a tiny model's greedy pass rates per category, on instances that are
    # neither demonstrations nor evaluation instances.
    rates = project.train_pass_rates(target, per_scenario=1)
    assert set(rates) == {s.category for s in project.catalog.train_scenarios}
    assert all(0 <= r <= 1 for r in rates.values())
