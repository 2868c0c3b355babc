"""`autoretrain loop` on a catalog it was not tuned to (examples/catalogs/shipping: another
domain, another system prompt, its own tool loaded from beside its YAML), with measured
self-play allocation and reference solutions for what the base never solves.

Plumbing, not efficacy (bench/loop.py measures that, bench/results/loop-*.md): one iteration
through Dagster from nothing: a base bootstrapped from this catalog; self-play in two worker
processes (each reloads the catalog and its tool) shared out by measurement after an even
pilot; a dataset with the catalog's reference solutions for the unsolved scenarios; a
fine-tune (of one epoch); and the regression gate's answer for every category of both tiers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoretrain.loop import run_loop
from autoretrain.project import Project
from autoretrain.scenarios import load_catalog
from autoretrain.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

CATALOG = Path(__file__).resolve().parents[1] / "examples" / "catalogs" / "shipping"
SETTINGS = f"""
scenarios_dir: {CATALOG}
selfplay:
  allocation: measured
  runs_per_iteration: 3000
  pilot_share: 0.3
  min_observations: 20
dataset:
  reference_demos_per_unsolved_scenario: 12
  min_new_promotable_runs: 20
training:
  bootstrap_time_budget_s: 1200
  epochs: 1  # plumbing: one epoch is a whole fine-tune, at a third of the CI time
evaluation:
  instances_per_scenario: 20
loop:
  iterations: 1
"""


def test_the_loop_runs_on_a_new_catalog_with_measured_allocation(tmp_path, monkeypatch):
    home = tmp_path / "data"
    config = tmp_path / "autoretrain.yaml"
    config.write_text(SETTINGS)
    monkeypatch.setenv("AUTORETRAIN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    settings = load_settings()
    catalog = load_catalog(CATALOG)

    (result,) = run_loop(settings, iterations=1, progress=False)

    # The base was bootstrapped from this catalog, not the shipped one.
    v0 = json.loads((settings.paths.models / "embedded" / "v0" / "train_config.json").read_text())
    assert v0["bootstrap"]["catalog_hash"] == catalog.hash

    # Self-play measured the base on every train scenario, then shared out the rest.
    allocation = result.selfplay["allocation"]
    train = {s.id for s in catalog.train_scenarios}
    assert set(allocation["weights"]) == train
    assert sum(allocation["weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "pilot" in allocation["source"] and min(allocation["observations"].values()) >= 20
    assert result.selfplay["finished"] == 3000

    # The dataset: this catalog's runs, plus reference solutions for the unsolved scenarios.
    assert result.stopped_at != "training_dataset", result.reason
    manifest = json.loads((Path(result.artifacts["dataset"]) / "manifest.json").read_text())
    assert manifest["catalog_hash"] == catalog.hash
    # Reference solutions go to train scenarios the base never solved: unsolved in the pilot and
    # still so after the whole round (the rest of the round may have solved some of them).
    added = manifest.get("reference_demonstrations") or {"by_scenario": {}}
    assert set(added["by_scenario"]) <= set(allocation["unsolved"])
    assert set(added["by_scenario"].values()) <= {12}
    with Project(settings).store(read_only=True) as store:
        offered = store.con.execute(
            "SELECT count(*) FROM runs WHERE traffic = 'selfplay' "
            "AND record::VARCHAR LIKE '%\"parcel_cost\"%'"
        ).fetchone()[0]
    assert offered > 0  # the catalog's own tool reached the workers' runs

    # The gate answered, category by category, on both tiers.
    assert result.candidate and result.decision in ("promote", "reject")
    rows = {(r["tier"], r["category"]) for r in result.comparison["categories"]}
    for tier, scenarios in (
        ("in_distribution", catalog.train_scenarios),
        ("held_out", catalog.eval_scenarios),
    ):
        assert {(tier, s.category) for s in scenarios} <= rows
