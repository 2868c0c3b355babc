"""`autoretrain loop`: one full cycle of the retraining loop, run in-process through Dagster.

Every step is a run of one of the project's named Dagster jobs on the instance under
DAGSTER_HOME, so the UI shows afterwards exactly what the loop did — runs, materializations,
check results and the gate's decision — and the same jobs are what automation runs:

    bootstrap → selfplay → ingest → dataset → retrain (train, regression gate) →
    canary (deploy, live traffic, canary analysis) → promote (primary)

A gate that says no ends the cycle there (its check fails; the run itself succeeds), and the
loop reports which gate said no.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoretrain.instance import ensure_dagster_home
from autoretrain.project import EMBEDDED, Project, candidate_key
from autoretrain.settings import Settings

log = logging.getLogger(__name__)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
# In-process runs log to the console at this level (Dagster's default is DEBUG: every event).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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
    selfplay: dict[str, Any] | None = None  # the round's SelfPlayReport (its allocation too)
    canary: dict[str, Any] | None = None
    primary: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class LoopRunner:
    """Runs the loop's Dagster jobs in process. `say` receives one line per finished stage."""

    def __init__(
        self,
        settings: Settings,
        progress: bool = True,
        say: Callable[[str], None] | None = None,
        verbose: bool = False,
    ):
        import dagster as dg

        from autoretrain.definitions import build_defs
        from autoretrain.defs.resources import ProjectResource

        self.settings = settings
        self.project = Project(settings)
        self.progress = progress
        self.say = say or log.info
        self.run_config: dict[str, Any] = {} if verbose else QUIET_RUN_CONFIG
        self.home = ensure_dagster_home(settings)
        self.instance = dg.DagsterInstance.get()
        self.defs = build_defs(ProjectResource(home=str(settings.paths.root)))

    # -- one Dagster run ---------------------------------------------------------------------
    def run(
        self,
        job: str,
        *,
        partition_key: str | None = None,
        tags: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> Any:
        """Run a named job; a failed check is an answer, a failed step is an error."""
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            partition_key=partition_key,
            tags=tags,
            run_config={**self.run_config, **(config or {})},
            raise_on_error=False,
        )
        if not result.success:
            # Checks never fail their step (they are answers the caller reads): this is an error.
            failures = "; ".join(_step_errors(result)[:2])
            raise LoopError(f"Dagster run {result.run_id} ({job}) failed: {failures}")
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
    def check(result: Any, name: str) -> Any:
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.check_name == name:
                return evaluation
        return None

    # -- the cycle --------------------------------------------------------------------------
    def base_model(self) -> None:

        started = time.perf_counter()
        self.run("bootstrap")
        held = self.project.slot_version("primary")
        self.say(
            _line(
                "base model", f"primary is {held.id if held else self.settings.provider}", started
            )
        )

    def judge_new_runs(self) -> None:
        """Ingest, score and decide every landing day — one `ingest` run over the range."""
        from autoretrain.runs.archive import RunArchive

        days = RunArchive(self.settings.paths.landing).days()
        if days:
            self.run("ingest", tags={RANGE_START: days[0], RANGE_END: days[-1]})

    def selfplay(self, n: int) -> dict[str, Any]:
        """Self-play as a `selfplay` run; returns its report (SelfPlayReport.to_dict)."""
        config = {"ops": {"play": {"config": {"runs": n, "progress": self.progress}}}}
        return self.run("selfplay", config=config).output_for_node("play")

    def _candidate_artifact(self, candidate: str) -> Any:
        """Where a candidate is: its model folder, or a hosted job's record (job id, model)."""
        if self.settings.training.backend == "azure":
            from autoretrain.training.hosted_candidate import job_record

            return job_record(self.settings.paths.models, candidate)
        return self.settings.paths.models / EMBEDDED / candidate

    def iteration(self, number: int, selfplay_runs: int) -> IterationResult:
        from autoretrain.defs.partitions import candidate_partitions

        out = IterationResult(iteration=number)
        clock = time.perf_counter()

        def lap(name: str, detail: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            out.seconds[name] = round(now - clock, 1)
            self.say(_line(name.replace("_", " "), detail, clock))
            clock = now

        incumbent = self.project.slot_version("primary")
        out.incumbent = incumbent.id if incumbent else None
        self.say(f"iteration {number}: incumbent {out.incumbent}")

        report = self.selfplay(selfplay_runs)
        out.selfplay = {k: v for k, v in report.items() if k != "files"}
        lap("selfplay", _selfplay_detail(report))
        self.judge_new_runs()
        lap("ingest_score_decide", _judged(self.settings))

        result = self.run("dataset")
        mats = result.asset_materializations_for_node("training_dataset")
        if not mats:
            lap("dataset", "not built: not enough new promotable runs")
            out.stopped_at, out.reason = "training_dataset", "not enough new promotable runs"
            return out
        meta = mats[-1].metadata
        version = str(meta["version"].value)
        lap("dataset", f"{version}: {meta['train_examples'].value} train examples")
        out.artifacts["dataset"] = str(self.settings.paths.datasets / version)
        failed = self.failed_gates(result)
        if failed:
            out.stopped_at = "training_dataset checks"
            out.reason = ", ".join(e.check_name for e in failed)
            return out

        candidate = candidate_key(version)
        out.candidate = candidate
        self.instance.add_dynamic_partitions(candidate_partitions.name, [candidate])
        result = self.run("retrain", partition_key=candidate)
        out.artifacts["candidate"] = str(self._candidate_artifact(candidate))
        gate = self.check(result, "regression_gate")
        evaluation = result.asset_materializations_for_node("candidate_evaluation")
        if evaluation:
            out.evaluation_id = str(evaluation[-1].metadata["evaluation_id"].value)
            out.artifacts["evaluation"] = str(self.settings.paths.reports / out.evaluation_id)
            out.comparison = _load_comparison(self.settings, out.evaluation_id)
        out.decision = "promote" if gate is not None and gate.passed else "reject"
        lap("train_and_evaluate", f"{candidate}: regression gate says {out.decision}")
        if gate is None or not gate.passed:
            out.stopped_at = "regression_gate"
            out.reason = gate.description if gate is not None else "no gate result"
            return out

        # Canary: deploy, live (self-play) traffic split between the slots, canary analysis.
        result = self.run("canary", partition_key=candidate)
        canary = self.check(result, "canary_analysis")
        out.canary = {
            "passed": bool(canary and canary.passed),
            "summary": canary.description if canary else None,
        }
        lap("canary", out.canary["summary"] or "no analysis")
        # The canary's runs go through the same judging as any other runs.
        self.judge_new_runs()
        if canary is None or not canary.passed:
            out.stopped_at = "canary_analysis"
            out.reason = canary.description if canary else "no result"
            return out
        self.run("promote", partition_key=candidate)
        lap("primary", f"primary is now {candidate}")
        out.primary = candidate
        return out


class LoopError(RuntimeError):
    pass


def _step_errors(result: Any) -> list[str]:
    """Each failed step with the error that failed it (the innermost cause: Dagster wraps the
    user's exception in its own 'Error occurred while executing op')."""
    errors = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.step_failure_data.error if event.step_failure_data else None
        while error is not None and error.cause is not None:
            error = error.cause
        message = error.message.strip() if error is not None else event.message
        errors.append(f"{event.step_key}: {message}")
    return errors


def _line(stage: str, detail: str, started: float) -> str:
    return f"  {stage:<20} {detail:<64} {time.perf_counter() - started:7.1f} s"


def _selfplay_detail(report: dict[str, Any]) -> str:
    return (
        f"{report['finished']:,} runs, {report['pass_rate']:.1%} verified, "
        f"{report['runs_per_second']:.0f} runs/s"
    )


def _judged(settings: Settings) -> str:

    with Project(settings).store(read_only=True) as store:
        rows = dict(
            store.con.execute(
                "SELECT decision, count(*) FROM promotion_decisions GROUP BY 1"
            ).fetchall()
        )
    return ", ".join(f"{rows.get(k, 0):,} {k}" for k in ("promote", "reject", "needs_human"))


def _load_comparison(settings: Settings, evaluation_id: str) -> dict[str, Any] | None:
    import json

    path = settings.paths.reports / evaluation_id / "comparison.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_loop(
    settings: Settings,
    iterations: int = 1,
    selfplay_runs: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> list[IterationResult]:
    runner = LoopRunner(settings, progress=progress, say=say, verbose=verbose)
    runner.base_model()
    results = []
    for number in range(1, iterations + 1):
        results.append(
            runner.iteration(number, selfplay_runs or settings.selfplay.runs_per_iteration)
        )
    return results
