"""The replay harness: both evaluation tiers through incumbent and candidate, the same way.

Both models answer the same instances (in-distribution and held-out) with the same sampling and
the same per-sample seeds, through the production workflow (`agent_run` driven by `run_many`):
a local model answers a batch of runs per forward pass, an HTTP provider gets a pool of
concurrent requests (`agents/play.py` drives both). Every run is recorded in the landing zone as
`traffic="evaluation"` (curation never trains on it), tagged with the evaluation id, tier,
sample and role, and becomes one row of the table `compare()` reads.

The roles take turns chunk by chunk, so a change in machine load during a long replay lands on
both models alike instead of on whichever ran second (latency is one of the gates).

A replay that cannot be trusted is a failed evaluation, never a pass: any exception, or more
than `max_provider_error_rate` of a model's runs failing at the provider. Below that rate, a run
the *candidate's* provider failed counts as a candidate failure, and an instance the
*incumbent's* provider failed is dropped for both models: provider trouble never helps the
candidate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoretrain.agents.play import play
from autoretrain.agents.workflow import AGENT_VERSION, WorkflowConfig
from autoretrain.evaluation.compare import RESULT_COLUMNS, ROLES, TIERS, Comparison, compare
from autoretrain.providers.base import ChatModel, Sampling
from autoretrain.runs.archive import BufferedArchive, RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import EventType, Run
from autoretrain.runs.tracker import RunTracker
from autoretrain.settings import EvaluationLifts, EvaluationSettings

log = logging.getLogger(__name__)

# Instances per role before the other role takes its turn (a few full batches).
CHUNK_INSTANCES = 512
MODEL_CALL_FAILED = "model call failed"  # the workflow's wording for a provider error


@dataclass(frozen=True)
class ReplaySetup:
    """What a replay and its decision take from the project's settings, as plain values
    (`Project.replay_setup()` builds it from the settings)."""

    evaluation: EvaluationSettings  # sizes, sampling, batch size, provider-error limit, bootstrap
    lifts: EvaluationLifts  # the gates' thresholds
    landing: Path  # where the replay's runs are recorded (evaluation traffic)
    prices: PriceTable  # the runs' cost
    provider: str  # the provider profile recorded on the runs
    verifier: Any  # grades the answers (VerifierAgent)


@dataclass
class Replay:
    """What a replay produced: `rows` in `RESULT_COLUMNS`, or `error` when it cannot be used."""

    evaluation_id: str
    incumbent: str
    candidate: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)  # distinct instances per tier
    samples_per_instance: int = 1
    runs: Counter = field(default_factory=Counter)  # recorded runs per role
    provider_failures: Counter = field(default_factory=Counter)  # per role
    dropped: int = 0  # instance samples removed because the incumbent's provider failed
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def frame(self) -> Any:
        """The rows as a polars DataFrame (columns in `RESULT_COLUMNS` order)."""
        import polars as pl

        return pl.DataFrame(self.rows, schema=_FRAME_SCHEMA(pl), orient="row")

    def summary(self) -> dict[str, Any]:
        return {
            "evaluation_id": self.evaluation_id,
            "incumbent": self.incumbent,
            "candidate": self.candidate,
            "instances": dict(self.instances),
            "samples_per_instance": self.samples_per_instance,
            "runs": dict(self.runs),
            "provider_failures": dict(self.provider_failures),
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def _FRAME_SCHEMA(pl: Any) -> dict[str, Any]:  # noqa: N802 - a constant that needs the import
    return {
        "instance_hash": pl.Utf8,
        "scenario_id": pl.Utf8,
        "category": pl.Utf8,
        "tier": pl.Utf8,
        "sample": pl.Int64,
        "role": pl.Utf8,
        "passed": pl.Boolean,
        "score": pl.Float64,
        "n_recoveries": pl.Int64,
        "escalated": pl.Boolean,
        "latency_s": pl.Float64,
        "total_tokens": pl.Int64,
        "cost_usd": pl.Float64,
    }


def replay(
    incumbent: ChatModel,
    candidate: ChatModel,
    catalog: Any,
    setup: ReplaySetup,
    *,
    incumbent_name: str | None = None,
    candidate_name: str | None = None,
    archive: RunArchive | None = None,
    evaluation_id: str | None = None,
    tools: Any = None,
    verifier: Any = None,
    workflow: WorkflowConfig | None = None,
    provider: str | None = None,
    tiers: Sequence[str] = TIERS,
    instances_per_scenario: int | None = None,
    samples_per_instance: int | None = None,
    progress: bool = True,
    agent: Any = None,
) -> Replay:
    """Run every evaluation instance through both models and return the paired rows.

    Never raises for a model's misbehaviour: provider failures are counted and, above the
    configured rate, set `error`. Problems of the harness itself (an unwritable landing zone)
    do raise; `evaluate` turns those into a rejected comparison too.
    """
    from autoretrain.evaluation.report import new_evaluation_id

    ev = setup.evaluation
    per_scenario = (
        ev.instances_per_scenario if instances_per_scenario is None else instances_per_scenario
    )
    samples = ev.samples_per_instance if samples_per_instance is None else samples_per_instance
    if samples < 1:
        raise ValueError(f"samples_per_instance must be at least 1, not {samples}")
    result = Replay(
        evaluation_id=evaluation_id or new_evaluation_id(),
        incumbent=incumbent_name or incumbent.name,
        candidate=candidate_name or candidate.name,
        samples_per_instance=samples,
    )
    names = {"incumbent": result.incumbent, "candidate": result.candidate}
    workflow = workflow or WorkflowConfig()
    tools = tools if tools is not None else catalog.registry
    verifier = verifier if verifier is not None else setup.verifier
    archive = archive if archive is not None else RunArchive(setup.landing)
    prices = setup.prices
    provider = provider or setup.provider
    models = {"incumbent": incumbent, "candidate": candidate}

    by_tier = {
        tier: _distinct(catalog.eval_instances(tier, per_scenario), tier, result) for tier in tiers
    }
    result.instances = {tier: len(found) for tier, found in by_tier.items()}
    total = sum(result.instances.values()) * samples * len(ROLES)
    _log_start(result, total)

    runs: list[Run] = []
    bar = _progress(total, progress, result.evaluation_id)
    started = time.perf_counter()
    try:
        with BufferedArchive(archive) as sink:
            trackers = _evaluation_trackers(sink, prices, provider, names)
            turns = _Turns(models, names, trackers, tools, verifier, workflow, agent, ev.batch_size)
            for role, run in turns.play(result.evaluation_id, by_tier, samples, ev):
                runs.append(run)
                result.runs[role] += 1
                if bar is not None:
                    bar.update(1)
            sink.flush()
            result.files = [str(p) for p in sink.written]
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - started
    _tabulate(runs, result, ev.max_provider_error_rate)
    _log_finish(result)
    return result


def _evaluation_trackers(
    sink: BufferedArchive, prices: PriceTable, provider: str, names: dict[str, str]
) -> dict[str, RunTracker]:
    """One tracker per role: runs recorded as evaluation traffic, under the role's model name."""
    return {role: evaluation_tracker(sink, prices, provider, names[role]) for role in ROLES}


def evaluation_tracker(
    sink: BufferedArchive, prices: PriceTable, provider: str, model: str
) -> RunTracker:
    """A tracker that records `model`'s runs as evaluation traffic (never trained on)."""
    return RunTracker(
        sink,
        prices,
        agent_version=AGENT_VERSION,
        provider=provider,
        model=model,
        slot=None,
        traffic="evaluation",
    )


@dataclass
class _Turns:
    """How both roles play: their models, names, trackers, and what every run shares."""

    models: dict[str, ChatModel]
    names: dict[str, str]
    trackers: dict[str, RunTracker]
    tools: Any
    verifier: Any
    workflow: WorkflowConfig
    agent: Any
    batch_size: int

    def play(
        self, evaluation_id: str, by_tier: dict[str, list[Any]], samples: int, ev: Any
    ) -> Iterator[tuple[str, Run]]:
        """(role, run) for every instance, sample and role: per tier and sample, the roles take
        turns chunk by chunk (see the module's docstring)."""
        for tier, instances in by_tier.items():
            for sample in range(samples):
                sampling = _sampling(self.workflow.sampling, ev, samples, sample)
                config = replace(self.workflow, sampling=sampling)
                for turn, chunk in enumerate(_chunks(instances, CHUNK_INSTANCES)):
                    # Alternate who goes first, so neither role always meets a warmer machine.
                    order = ROLES if turn % 2 == 0 else ROLES[::-1]
                    for role in order:
                        tags = {
                            "evaluation_id": evaluation_id,
                            "tier": tier,
                            "sample": str(sample),
                            "role": role,
                        }
                        for run in play(
                            chunk,
                            self.models[role],
                            tracker=self.trackers[role],
                            tools=self.tools,
                            verifier=self.verifier,
                            workflow=config,
                            batch_size=self.batch_size,
                            tags=lambda _, tags=tags: dict(tags),
                            # An HTTP agent plays against the role's version by name,
                            # which the gateway resolves like a slot.
                            agent=self.agent,
                            slot=self.names[role],
                        ):
                            yield role, run


def _log_start(result: Replay, total: int) -> None:
    log.info(
        "replay %s: %s vs %s, instances %s, %d sample(s) each, %d runs",
        result.evaluation_id,
        result.incumbent,
        result.candidate,
        result.instances,
        result.samples_per_instance,
        total,
        extra={
            "evaluation_id": result.evaluation_id,
            "instances": result.instances,
            "samples_per_instance": result.samples_per_instance,
            "runs": total,
        },
    )


def _log_finish(result: Replay) -> None:
    log.info(
        "replay %s finished: %d runs in %.1f s (%s), provider failures %s%s",
        result.evaluation_id,
        sum(result.runs.values()),
        result.seconds,
        f"{len(result.files)} landing file(s)" if result.files else "nothing recorded",
        dict(result.provider_failures),
        f"; failed: {result.error}" if result.error else "",
        extra={"evaluation_id": result.evaluation_id, "replay": result.summary()},
    )


def evaluate(
    incumbent: ChatModel,
    candidate: ChatModel,
    catalog: Any,
    setup: ReplaySetup,
    *,
    incumbent_name: str | None = None,
    candidate_name: str | None = None,
    archive: RunArchive | None = None,
    **replay_options: Any,
) -> Comparison:
    """Replay both tiers through both models and decide. Never raises and never passes by
    accident: a failed replay is a `reject` whose reason says what went wrong."""
    from autoretrain.evaluation.report import new_evaluation_id

    evaluation_id = replay_options.pop("evaluation_id", None) or new_evaluation_id()
    names = {
        "incumbent": incumbent_name or getattr(incumbent, "name", "incumbent"),
        "candidate": candidate_name or getattr(candidate, "name", "candidate"),
    }
    lifts = setup.lifts
    try:
        outcome = replay(
            incumbent,
            candidate,
            catalog,
            setup,
            incumbent_name=names["incumbent"],
            candidate_name=names["candidate"],
            archive=archive,
            evaluation_id=evaluation_id,
            **replay_options,
        )
    except Exception as exc:  # the gate must answer even when the harness breaks
        log.exception("replay %s failed", evaluation_id, extra={"evaluation_id": evaluation_id})
        comparison = compare(
            [],
            candidate=names["candidate"],
            incumbent=names["incumbent"],
            lifts=lifts,
            error=f"{type(exc).__name__}: {exc}",
        )
        comparison.evaluation_id = evaluation_id
        return comparison
    comparison = compare(
        outcome.rows,
        candidate=names["candidate"],
        incumbent=names["incumbent"],
        lifts=lifts,
        bootstrap_samples=setup.evaluation.bootstrap_samples,
        seed=setup.evaluation.seed,
        error=outcome.error,
    )
    comparison.evaluation_id = evaluation_id
    comparison.notes.extend(outcome.notes)
    comparison.notes.append(
        f"replay: {sum(outcome.runs.values())} runs recorded as evaluation traffic in "
        f"{outcome.seconds:.1f} s; distinct instances {outcome.instances}, "
        f"{outcome.samples_per_instance} sample(s) each"
    )
    log.info(
        "evaluation %s: %s (%s)",
        evaluation_id,
        comparison.decision,
        ", ".join(g.name for g in comparison.failed_gates) or "every gate passed",
        extra={
            "evaluation_id": evaluation_id,
            "decision": comparison.decision,
            "failed_gates": [g.name for g in comparison.failed_gates],
        },
    )
    return comparison


# ---------------------------------------------------------------- rows from runs


def result_row(run: Run) -> dict[str, Any]:
    """One row of the comparison table from a finished evaluation run."""
    last = run.verifications[-1] if run.verifications else None
    return {
        "instance_hash": run.instance_hash,
        "scenario_id": run.scenario_id,
        "category": run.category,
        "tier": run.tags["tier"],
        "sample": int(run.tags["sample"]),
        "role": run.tags["role"],
        "passed": run.verified,
        "score": last.score if last is not None else 0.0,
        "n_recoveries": len(run.recoveries),
        "escalated": bool(run.escalations),
        "latency_s": run.latency_s or 0.0,
        "total_tokens": run.usage.total_tokens,
        "cost_usd": run.cost_usd,
    }


def provider_failure(run: Run) -> str | None:
    """The first provider error of a run (a model call that raised after its retries)."""
    for event in run.events:
        if event.type == EventType.ERROR:
            what = str(event.payload.get("error", ""))
            if what.startswith(MODEL_CALL_FAILED):
                return what
    return None


def _tabulate(runs: list[Run], result: Replay, max_error_rate: float) -> None:
    failed: dict[str, set[tuple[str, str, int]]] = {role: set() for role in ROLES}
    first_error: dict[str, str] = {}
    for run in runs:
        what = provider_failure(run)
        if what is not None:
            role = run.tags["role"]
            failed[role].add((run.tags["tier"], run.instance_hash or "", int(run.tags["sample"])))
            first_error.setdefault(role, what)
    result.provider_failures = Counter({role: len(keys) for role, keys in failed.items() if keys})
    too_many = []
    for role in ROLES:
        n = result.runs[role]
        if failed[role] and len(failed[role]) > max_error_rate * n:
            too_many.append(
                f"{role} {getattr(result, role)!r}: {len(failed[role])} of {n} runs failed at "
                f"the provider (first: {first_error[role]})"
            )
    if too_many:
        result.error = "; ".join(too_many) + (
            f"; more than the allowed {max_error_rate:.1%} (evaluation.max_provider_error_rate)"
        )
        return
    dropped = failed["incumbent"]
    rows = [result_row(r) for r in runs]
    if dropped:
        rows = [r for r in rows if (r["tier"], r["instance_hash"], r["sample"]) not in dropped]
        result.dropped = len(dropped)
        result.notes.append(
            f"{len(dropped)} instance sample(s) dropped for both models: the incumbent's "
            f"provider failed them (first: {first_error['incumbent']})"
        )
    if failed["candidate"]:
        result.notes.append(
            f"{len(failed['candidate'])} candidate run(s) failed at the provider and count as "
            f"failures (first: {first_error['candidate']})"
        )
    result.rows = rows


# ---------------------------------------------------------------- plumbing


def _distinct(instances: list[Any], tier: str, result: Replay) -> list[Any]:
    # Two scenarios rendering the same prompt would pair one instance with itself twice.
    seen: set[str] = set()
    out = []
    for inst in instances:
        if inst.instance_hash in seen:
            continue
        seen.add(inst.instance_hash)
        out.append(inst)
    if len(out) < len(instances):
        result.notes.append(
            f"{tier}: {len(instances) - len(out)} instance(s) with a repeated prompt were "
            "evaluated once"
        )
    return out


def evaluation_sampling(base: Sampling, ev: Any) -> Sampling:
    """The sampling of a one-sample replay (greedy) under the evaluation settings `ev`."""
    return _sampling(base, ev, 1, 0)


def _sampling(base: Sampling, ev: Any, samples: int, sample: int) -> Sampling:
    # Greedy when one sample is enough; several samples of a greedy model would be copies.
    temperature = 0.0 if samples == 1 else ev.temperature
    seed = (ev.seed * 1_000_003 + sample) % 2**31
    return replace(base, temperature=temperature, seed=seed, max_tokens=ev.max_tokens)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress(total: int, enabled: bool, evaluation_id: str) -> Any:
    from autoretrain.progress import progress_bar

    return progress_bar(total, f"evaluation {evaluation_id}", "run", enabled)


__all__ = ["RESULT_COLUMNS", "Replay", "evaluate", "provider_failure", "replay", "result_row"]
