"""The closed loop on the embedded default, end to end, through Dagster.

One loop run (bootstrap → self-play → ingest → score → decide → dataset → train → evaluate →
canary → canary analysis → primary; conftest's `loop_run`, shared with test_ui_browser.py)
feeds every test here: it must lift the in-distribution pass rate significantly, hold the
held-out tier, promote, show up in the Dagster UI, refuse a poisoned candidate without touching
any slot, and roll back.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from autoretrain.loop import LoopError, LoopRunner
from autoretrain.project import Project
from autoretrain.runs.store import RunStore
from autoretrain.settings import load_settings
from autoretrain_tests.conftest import CHEAP_ROUND, LOOP_CONFIG, merged_config

# The shared loop (bootstrap, self-play, training, evaluation) runs inside the first end-to-end
# test's time: give the module room on a slow CI machine, whose cores it shares with
# the other test worker (`make test` runs two).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(4800)]

PROJECT = Path(__file__).resolve().parents[1]


def test_the_loop_lifts_in_distribution_significantly_and_promotes(looped):
    settings, results = looped
    result = results[-1]
    assert result.decision == "promote", (result.stopped_at, result.reason)
    gates = {g["name"]: g for g in result.comparison["reasons"]}
    assert gates["in_distribution_lift"]["value"] > 0
    assert gates["in_distribution_significance"]["passed"]  # paired McNemar at 0.05
    assert gates["held_out_regression"]["passed"]  # within ε
    assert result.canary["passed"] and result.primary == result.candidate
    assert Project(settings).slot_version("primary").id == result.candidate
    with RunStore.from_settings(settings, read_only=True) as store:
        ledger = store.con.execute(
            "SELECT slot, to_version FROM promotion_ledger ORDER BY seq"
        ).fetchall()
        traffic = dict(
            store.con.execute("SELECT traffic, count(*) FROM runs GROUP BY 1").fetchall()
        )
    assert ledger[-2:] == [("canary", result.candidate), ("primary", result.candidate)]
    assert traffic["selfplay"] >= settings.selfplay.runs_per_iteration and traffic["evaluation"] > 0


def _poison(dataset_dir: Path) -> int:
    """Off-by-one final answers (REFERENCE.md: such data drops the model to ~0%)."""
    rng = random.Random(0)
    changed = 0
    for name in ("train.jsonl", "eval.jsonl"):
        path = dataset_dir / name
        lines = []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            example = json.loads(line)
            final = example["messages"][-1]
            numbers = re.findall(r"-?\d+(?:\.\d+)?", final.get("content") or "")
            if numbers:
                wrong = str(
                    round(float(numbers[0]) + rng.choice([-1, 1]) * (1 + rng.randrange(9)), 2)
                )
                final["content"] = final["content"].replace(numbers[0], wrong, 1)
                changed += 1
            lines.append(json.dumps(example, ensure_ascii=False))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


def test_a_poisoned_dataset_is_stopped_by_the_gate(looped_copy, tmp_path, monkeypatch):
    # The shared loop's gate, with a cheaper round (conftest.CHEAP_ROUND: one epoch; off-by-one
    # answers ruin a model within it).
    config = tmp_path / "autoretrain.yaml"
    config.write_text(merged_config(LOOP_CONFIG.read_text(), CHEAP_ROUND))
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    settings = load_settings()
    assert (
        settings.training.epochs == 1
        and settings.evaluation_lifts().max_category_regression == 0.15
    )
    version = Project(settings).build_training_dataset()
    assert _poison(version.path) > 50
    with RunStore.from_settings(settings, read_only=True) as store:
        ledger_before = store.con.execute("SELECT count(*) FROM promotion_ledger").fetchone()[0]
    slots_before = {
        s: getattr(Project(settings).slot_version(s), "id", None) for s in ("primary", "canary")
    }

    runner = LoopRunner(settings, progress=False)
    key = f"cand-poisoned-{version.version}"
    (settings.paths.datasets / key.removeprefix("cand-")).symlink_to(version.path)
    runner.instance.add_dynamic_partitions("candidates", [key])
    result = runner.run("retrain", partition_key=key)
    gate = runner.check(result, "regression_gate")
    assert not gate.passed and result.success  # a rejection is an answer, not a crashed run
    # Launched by hand anyway (as from the UI), the canary step re-reads this candidate's own
    # decision and refuses: no slot moves.
    with pytest.raises(LoopError, match="regression gate did not pass it"):
        runner.run("canary", partition_key=key)
    with RunStore.from_settings(settings, read_only=True) as store:
        assert (
            store.con.execute("SELECT count(*) FROM promotion_ledger").fetchone()[0]
            == ledger_before
        )
    assert {
        s: getattr(Project(settings).slot_version(s), "id", None) for s in ("primary", "canary")
    } == slots_before


def test_the_ui_shows_the_lineage_and_the_gate(looped, loop_env):
    from autoretrain_tests.servers import DagsterWebserver

    query = """{ assetNodes { assetKey { path } dependencyKeys { path }
      assetMaterializations(limit: 1) { runId }
      assetChecksOrError { ... on AssetChecks { checks { name blocking
        executionForLatestMaterialization { status } } } } } }"""
    server = DagsterWebserver(
        PROJECT, {"AUTORETRAIN_HOME": str(loop_env), "DAGSTER_HOME": str(loop_env / "dagster")}
    )
    try:
        data = server.start().graphql(query)
    finally:
        server.stop()
    nodes = {n["assetKey"]["path"][-1]: n for n in data["assetNodes"]}
    # The lineage from a raw run to the primary model.
    chain = [
        "raw_runs",
        "scored_runs",
        "promotion_decisions",
        "training_dataset",
        "candidate_model",
        "candidate_evaluation",
        "canary_deployment",
        "canary_traffic",
        "primary_deployment",
    ]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        deps = [d["path"][-1] for d in nodes[downstream]["dependencyKeys"]]
        assert upstream in deps, f"{downstream} should depend on {upstream}"
    for name in chain:
        assert nodes[name]["assetMaterializations"], f"{name} was never materialized"
    gate = next(
        c
        for c in nodes["candidate_evaluation"]["assetChecksOrError"]["checks"]
        if c["name"] == "regression_gate"
    )
    # Not blocking inside its run (a rejection is not a crashed run): automation and the
    # deployment step enforce it per candidate (autoretrain_tests/defs/test_automation.py).
    assert gate["executionForLatestMaterialization"]["status"] in ("SUCCEEDED", "FAILED")


def test_rollback_returns_primary_to_the_last_promoted_version(looped):
    settings, _ = looped
    with RunStore.from_settings(settings, read_only=True) as store:
        promoted = [
            v
            for (v,) in store.con.execute(
                "SELECT to_version FROM promotion_ledger WHERE slot = 'primary' AND action = 'promote' ORDER BY seq"
            ).fetchall()
        ]
    before = Project(settings).slot_version("primary").id
    entry = Project(settings).rollback("primary", reason="test")
    assert entry.from_version == before == promoted[-1] and entry.to_version == promoted[-2]
    assert Project(settings).slot_version("primary").id == promoted[-2]
