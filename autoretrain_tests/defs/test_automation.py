"""Automation over several ticks: what the daemon would request, on the real definitions.

The gate bypass this guards against: with two candidates in flight, one candidate's passing
regression gate counted for another whose gate had rejected it, and automation deployed both.
The gate checks are partitioned like the candidates, so a check result speaks for its own
candidate only, whatever the order of events.
"""

from __future__ import annotations

import itertools

import dagster as dg
import pytest

from autoretrain.definitions import defs
from autoretrain.defs.automation import candidate_key, gated, new_dataset_sensor

EVALUATION = dg.AssetKey("candidate_evaluation")
CANARY = dg.AssetKey("canary_deployment")
TRAFFIC = dg.AssetKey("canary_traffic")
PRIMARY = dg.AssetKey("primary_deployment")
A, B = "cand-a", "cand-b"


class Ticks:
    """The automation sensor's evaluations, one call per tick, with its cursor carried over."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None
        self.requested: dict[dg.AssetKey, set[str]] = {}

    def tick(self) -> dict[dg.AssetKey, set[str]]:
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        now = {
            key: set(result.get_requested_partitions(key))
            for key in (CANARY, TRAFFIC, PRIMARY, dg.AssetKey("training_dataset"))
            if result.get_num_requested(key)
        }
        for key, parts in now.items():
            self.requested.setdefault(key, set()).update(parts)
        return now


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("candidates", [A, B])
        yield instance


def materialize(instance, key: dg.AssetKey, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def check(instance, key: dg.AssetKey, name: str, partition: str, passed: bool) -> None:
    """A check result for the partition's latest materialization, as a run records it."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records[0]
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=name,
            passed=passed,
            partition=partition,
            severity=dg.AssetCheckSeverity.ERROR,
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
            ),
        )
    )


EVENTS = {
    "a evaluated": lambda i: materialize(i, EVALUATION, A),
    "a rejected": lambda i: check(i, EVALUATION, "regression_gate", A, False),
    "b evaluated": lambda i: materialize(i, EVALUATION, B),
    "b passed": lambda i: check(i, EVALUATION, "regression_gate", B, True),
}


def orders():
    """Every order of the four events in which each evaluation precedes its own check."""
    for order in itertools.permutations(EVENTS):
        if order.index("a evaluated") < order.index("a rejected") and order.index(
            "b evaluated"
        ) < order.index("b passed"):
            yield order


@pytest.mark.parametrize("order", list(orders()), ids=lambda o: " > ".join(o))
def test_a_rejected_candidate_never_reaches_canary_beside_a_passing_one(instance, order):
    ticks = Ticks(instance)
    ticks.tick()
    for event in order:
        EVENTS[event](instance)
        ticks.tick()
    ticks.tick()
    assert A not in ticks.requested.get(CANARY, set())
    assert ticks.requested.get(CANARY) == {B}


def test_a_gate_that_has_not_reported_holds_the_deployment(instance):
    ticks = Ticks(instance)
    ticks.tick()
    materialize(instance, EVALUATION, B)
    assert CANARY not in ticks.tick()
    assert CANARY not in ticks.tick()
    check(instance, EVALUATION, "regression_gate", B, True)
    assert ticks.tick().get(CANARY) == {B}
    assert CANARY not in ticks.tick()  # requested once, not on every tick


def test_primary_waits_for_that_candidates_canary_analysis(instance):
    ticks = Ticks(instance)
    ticks.tick()
    # B's canary analysis passes; A's traffic ran too, but its analysis failed.
    for partition, passed in ((B, True), (A, False)):
        materialize(instance, TRAFFIC, partition)
        ticks.tick()
        check(instance, TRAFFIC, "canary_analysis", partition, passed)
        ticks.tick()
    ticks.tick()
    assert ticks.requested.get(PRIMARY) == {B}


def test_gated_is_eager_and_per_partition():
    condition = gated()
    assert "eager" in condition.get_label()
    labels = {op.get_label() for op in condition.operands}
    assert "upstream gates passed" in labels


def test_the_dataset_is_requested_though_history_and_catalog_are_missing(instance):
    ticks = Ticks(instance)
    ticks.tick()
    # One day of decisions among many empty days; the catalog was never observed.
    day = "2026-03-02"
    for key in ("raw_runs", "scored_runs", "promotion_decisions"):
        materialize(instance, dg.AssetKey(key), day)
    requested = ticks.tick()
    assert dg.AssetKey("training_dataset") in requested
    assert dg.AssetKey("training_dataset") not in ticks.tick()


def _dataset(instance, version: str, *, passed: bool = True) -> None:
    from autoretrain.defs.datasets import DATASET_CHECKS

    result = dg.materialize(
        [_dataset_asset(version, passed)], instance=instance, raise_on_error=False
    )
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        name for name, _, _ in DATASET_CHECKS
    }


def _dataset_asset(version: str, passed: bool) -> dg.AssetsDefinition:
    """A stand-in for training_dataset with the same key and checks (the real one needs runs)."""
    from autoretrain.defs.datasets import DATASET_CHECKS

    @dg.asset(
        name="training_dataset",
        check_specs=[
            dg.AssetCheckSpec(name, asset="training_dataset", blocking=blocking)
            for name, blocking, _ in DATASET_CHECKS
        ],
    )
    def training_dataset():
        yield dg.MaterializeResult(metadata={"version": version})
        for name, _, _ in DATASET_CHECKS:
            ok = passed or name != "no_secrets"
            yield dg.AssetCheckResult(check_name=name, passed=ok)

    return training_dataset


def _sense(instance, cursor=None) -> tuple[list, str | None, str]:
    """One tick of the sensor: (run requests, new cursor, skip message)."""
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        result = new_dataset_sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result.skip_message
    skip = result.skip_reason.skip_message if result.skip_reason else ""
    return list(result.run_requests or []), result.cursor, skip


def test_new_dataset_sensor_requests_a_candidate_only_for_a_dataset_that_passed_its_checks():
    with dg.instance_for_test() as instance:
        _dataset(instance, "20261203T000000Z", passed=False)
        requests, cursor, skip = _sense(instance)
        assert not requests and "no_secrets" in skip
        _dataset(instance, "20261203T010000Z")
        requests, cursor, _ = _sense(instance, cursor)
        assert [r.partition_key for r in requests] == [candidate_key("20261203T010000Z")]
        assert _sense(instance, cursor)[0] == []


def test_new_dataset_sensor_does_not_request_a_candidate_that_exists():
    """`autoretrain ui` after `autoretrain loop`: the loop already made the candidate."""
    with dg.instance_for_test() as instance:
        _dataset(instance, "20261203T020000Z")
        instance.add_dynamic_partitions("candidates", [candidate_key("20261203T020000Z")])
        requests, _, skip = _sense(instance)
        assert requests == [] and "already exists" in skip
