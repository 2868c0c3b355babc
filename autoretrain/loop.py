"""`autoretrain loop`: one full cycle of the retraining loop, run in-process through Dagster.

Every step is a materialization (or job run) on the project's Dagster instance under
DAGSTER_HOME, so the UI shows afterwards exactly what the loop did — runs, materializations,
check results and the gate's decision:

    base model (if missing) → self-play → ingest → score → decide → dataset → train →
    evaluate (regression gate) → canary → canary traffic → canary analysis → primary

A failed blocking check stops the cycle where Dagster stops it (the downstream asset never
runs), and the loop reports which gate said no.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from autoretrain.instance import ensure_dagster_home
from autoretrain.settings import Settings

log = logging.getLogger(__name__)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@dataclass
class IterationResult:
    iteration: int
    candidate: str | None = None
    incumbent: str | None = None
    decision: str = "not reached"
    stopped_at: str | None = None  # the step (or gate) that ended the cycle early
    reason: str = ""
    evaluation_id: str | None = None
    comparison: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None
    primary: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class LoopRunner:
    def __init__(self, settings: Settings, progress: bool = True):
        import dagster as dg

        from autoretrain.definitions import defs
        from autoretrain.defs.resources import AutoretrainConfig

        self.settings = settings
        self.progress = progress
        self.home = ensure_dagster_home(settings)
        self.instance = dg.DagsterInstance.get()
        self.defs = defs
        self.resources = {"autoretrain": AutoretrainConfig(home=str(settings.paths.root))}
        # Asset checks defined on their own (canary_analysis) travel with the assets.
        self._assets = [*defs.assets, *(defs.asset_checks or [])]  # type: ignore[misc]

    # -- one Dagster step -------------------------------------------------------------------
    def _materialize(
        self, selection: Any, *, partition_key: str | None = None, tags: dict | None = None
    ) -> Any:
        import dagster as dg

        result = dg.materialize(
            self._assets,
            selection=selection,
            partition_key=partition_key,
            instance=self.instance,
            resources=self.resources,
            tags=tags,
            raise_on_error=False,
        )
        if not result.success and not self.failed_gates(result):
            failures = [
                e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"
            ]
            raise LoopError(f"Dagster run {result.run_id} failed: {failures[:2]}")
        # A failed blocking check fails its step on purpose: the caller reads which gate said no.
        return result

    @staticmethod
    def failed_gates(result: Any) -> list[Any]:
        import dagster as dg

        return [
            e
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]

    @staticmethod
    def _check(result: Any, name: str) -> Any:
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.check_name == name:
                return evaluation
        return None

    # -- the cycle --------------------------------------------------------------------------
    def base_model(self) -> None:
        import dagster as dg

        self._materialize(dg.AssetSelection.assets("base_model"))

    def judge_new_runs(self, since_days: list[str] | None = None) -> None:
        """Ingest, score and decide every landing day not yet processed — one Dagster run."""
        import dagster as dg

        from autoretrain.runs.archive import RunArchive

        days = since_days or RunArchive(self.settings.paths.landing).days()
        if not days:
            return
        self._materialize(
            dg.AssetSelection.assets("raw_runs", "scored_runs", "promotion_decisions"),
            tags={RANGE_START: days[0], RANGE_END: days[-1]},
        )

    def selfplay(self, n: int, canary_share: float = 0.0) -> Any:
        from autoretrain import stages

        return stages.selfplay(self.settings, n, canary_share=canary_share, progress=self.progress)

    def iteration(self, number: int, selfplay_runs: int) -> IterationResult:
        import dagster as dg

        from autoretrain import stages
        from autoretrain.defs.automation import candidate_key
        from autoretrain.defs.partitions import candidate_partitions

        out = IterationResult(iteration=number)
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            out.seconds[name] = round(now - clock, 1)
            clock = now

        incumbent = stages.slot_version(self.settings, "primary")
        out.incumbent = incumbent.id if incumbent else None

        report = self.selfplay(selfplay_runs)
        log.info("self-play: %d runs, pass rate %.1f%%", report.finished, 100 * report.pass_rate)
        lap("selfplay")
        self.judge_new_runs()
        lap("ingest_score_decide")

        result = self._materialize(dg.AssetSelection.assets("training_dataset"))
        lap("dataset")
        mats = result.asset_materializations_for_node("training_dataset")
        if not mats:
            out.stopped_at, out.reason = "training_dataset", "not enough new promotable runs"
            return out
        version = str(mats[-1].metadata["version"].value)
        out.artifacts["dataset"] = str(self.settings.paths.datasets / version)
        failed = self.failed_gates(result)
        if failed:
            out.stopped_at = "training_dataset checks"
            out.reason = ", ".join(e.check_name for e in failed)
            return out

        candidate = candidate_key(version)
        out.candidate = candidate
        self.instance.add_dynamic_partitions(candidate_partitions.name, [candidate])
        result = self._materialize(
            dg.AssetSelection.assets("candidate_model", "candidate_evaluation", "canary_deployment")
            - dg.AssetSelection.checks(
                dg.AssetCheckKey(dg.AssetKey("canary_deployment"), "canary_analysis")
            ),
            partition_key=candidate,
        )
        lap("train_and_evaluate")
        out.artifacts["candidate"] = str(self.settings.paths.models / stages.EMBEDDED / candidate)
        gate = self._check(result, "regression_gate")
        evaluation = result.asset_materializations_for_node("candidate_evaluation")
        if evaluation:
            out.evaluation_id = str(evaluation[-1].metadata["evaluation_id"].value)
            out.artifacts["evaluation"] = str(self.settings.paths.reports / out.evaluation_id)
            out.comparison = _load_comparison(self.settings, out.evaluation_id)
        out.decision = "promote" if gate is not None and gate.passed else "reject"
        if gate is None or not gate.passed:
            out.stopped_at = "regression_gate"
            out.reason = gate.description if gate is not None else "no gate result"
            return out

        # Canary: live (self-play) traffic split between canary and primary, then analysed.
        share = self.settings.selfplay.canary_share or 0.5
        min_runs = self.settings.evaluation_lifts().min_canary_runs
        canary_runs = max(selfplay_runs // 2, int(2.5 * min_runs / min(share, 1 - share)))
        self.selfplay(canary_runs, canary_share=share)
        lap("canary_traffic")
        self.judge_new_runs()
        result = self._materialize(
            dg.AssetSelection.checks(
                dg.AssetCheckKey(dg.AssetKey("canary_deployment"), "canary_analysis")
            )
            | dg.AssetSelection.assets("primary_deployment"),
            partition_key=candidate,
        )
        lap("canary_analysis_and_primary")
        canary = self._check(result, "canary_analysis")
        out.canary = {
            "passed": bool(canary and canary.passed),
            "summary": canary.description if canary else None,
        }
        if canary is None or not canary.passed:
            out.stopped_at, out.reason = (
                "canary_analysis",
                canary.description if canary else "no result",
            )
            return out
        out.primary = candidate
        return out


class LoopError(RuntimeError):
    pass


def _load_comparison(settings: Settings, evaluation_id: str) -> dict[str, Any] | None:
    import json

    path = settings.paths.reports / evaluation_id / "comparison.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_loop(
    settings: Settings, iterations: int = 1, selfplay_runs: int | None = None, progress: bool = True
) -> list[IterationResult]:
    runner = LoopRunner(settings, progress=progress)
    t0 = time.perf_counter()
    runner.base_model()
    log.info("base model ready in %.1f s", time.perf_counter() - t0)
    results = []
    for number in range(1, iterations + 1):
        results.append(
            runner.iteration(number, selfplay_runs or settings.selfplay.runs_per_iteration)
        )
    return results
