"""The loop's stages as plain functions over Settings.

Each Dagster asset in `autoretrain/defs/` is a thin call into one of these, and tests and the
CLI call them directly. They open the DuckDB store themselves (one writer at a time: the
assets that call the writing ones run in the `duckdb` concurrency pool).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.store import IngestReport, RunStore
from autoretrain.settings import Settings


@dataclass
class IngestSummary:
    reports: dict[str, IngestReport] = field(default_factory=dict)

    def _sum(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.reports.values())

    @property
    def read(self) -> int:
        return self._sum("read")

    @property
    def inserted(self) -> int:
        return self._sum("inserted")

    @property
    def replaced(self) -> int:
        return self._sum("replaced")

    @property
    def quarantined(self) -> int:
        return self._sum("quarantined")

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.read if self.read else 0.0

    @property
    def unknown_schema_versions(self) -> int:
        return sum(sum(r.unknown_schema_versions.values()) for r in self.reports.values())

    @property
    def schema_versions(self) -> set[int]:
        return {v for r in self.reports.values() for v in r.schema_versions}

    @property
    def top_reasons(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.reports.values():
            total.update(r.quarantine_reasons)
        return dict(total.most_common(5))


def ingest_days(settings: Settings, days: list[str]) -> IngestSummary:
    """Ingest the landing zone's files for each day (idempotent; bad lines to quarantine)."""
    archive = RunArchive(settings.paths.landing)
    summary = IngestSummary()
    with RunStore.from_settings(settings) as store:
        for day in days:
            summary.reports[day] = store.ingest_day(day, archive.files(day))
    return summary


def score_days(settings: Settings, start_day: str, end_day: str) -> Any:
    """Per-run metrics for a day range into `scored_runs` (replaces those days' rows)."""
    from autoretrain.runs.scoring import score_days as score

    with RunStore.from_settings(settings) as store:
        return score(store.con, start_day, end_day, settings.promotion_gates())


def decide_days(settings: Settings, start_day: str, end_day: str, reviewer: Any = None) -> Any:
    """PromotionGuardAgent decisions for a day range into `promotion_decisions`."""
    from autoretrain.agents.promotion_guard import PromotionGuardAgent
    from autoretrain.agents.promotion_guard import decide_days as decide

    guard = PromotionGuardAgent(settings.promotion_gates(), reviewer=reviewer)
    with RunStore.from_settings(settings) as store:
        return decide(store.con, start_day, end_day, guard)


def selfplay(
    settings: Settings,
    n: int,
    *,
    slot: str = "primary",
    concurrency: int | None = None,
    workers: int | None = None,
    seed: int | None = None,
    canary_share: float | None = None,
    progress: bool = True,
    primary_model: Any = None,
    canary_model: Any = None,
) -> Any:
    """Run `n` self-play runs against the model in `slot` (and a share on the canary slot),
    landing every run in the landing zone. Returns the SelfPlayReport."""
    from autoretrain.agents.verifier import VerifierAgent
    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.base import Sampling
    from autoretrain.runs.pricing import PriceTable
    from autoretrain.scenarios import load_catalog
    from autoretrain.selfplay import SelfPlayRunner, SlotTarget

    cfg = settings.selfplay
    catalog = load_catalog(settings.scenarios_dir)
    share = cfg.canary_share if canary_share is None else canary_share
    primary = SlotTarget(slot, primary_model or _slot_model(settings, slot), settings.provider)
    canary = None
    if share > 0:
        canary = SlotTarget(
            "canary", canary_model or _slot_model(settings, "canary"), settings.provider
        )
    seed = cfg.seed if seed is None else seed
    runner = SelfPlayRunner(
        catalog,
        catalog.registry,
        VerifierAgent(),
        RunArchive(settings.paths.landing),
        primary,
        canary=canary,
        canary_share=share,
        prices=PriceTable.from_settings(settings),
        # Seeded sampling too: the same seed, model and concurrency give the same runs.
        workflow=WorkflowConfig(
            sampling=Sampling(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
        ),
        concurrency=concurrency or cfg.concurrency,
        workers=workers or cfg.workers,
        progress=progress,
        exclude=catalog.evaluation_hashes(settings.evaluation.instances_per_scenario),
    )
    return runner.run(n, seed=seed, weights=cfg.category_weights or None)


# -- models -----------------------------------------------------------------------------------

EMBEDDED = "embedded"  # the models/<name>/ folder of the embedded default
BASE_VERSION = "v0"


def _registry(store: RunStore, settings: Settings, read_only: bool = False) -> Any:
    from autoretrain.deploy.registry import ModelRegistry

    return ModelRegistry(store.con, settings, read_only=read_only)


def ensure_base_model(settings: Settings, **bootstrap_options: Any) -> str | None:
    """The first incumbent. For a local profile with an empty primary slot: bootstrap the
    embedded model (if not on disk), register it as `v0` and put it in primary. Otherwise the
    incumbent is whatever primary holds (or, for remote profiles, what the profile names)."""
    if settings.profile.kind != "local":
        return None
    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        current = registry.slots().get("primary")
        if current is not None:
            return current
    model_dir = settings.paths.models / EMBEDDED / BASE_VERSION
    if not (model_dir / "config.json").exists():
        from autoretrain.scenarios import load_catalog
        from autoretrain.training.bootstrap import bootstrap_base_model

        catalog = load_catalog(settings.scenarios_dir)
        training = settings.training
        options = {
            "demos_per_scenario": training.bootstrap_demos_per_scenario,
            "seed": training.seed,
            "time_budget_s": training.bootstrap_time_budget_s,
            **bootstrap_options,
        }
        bootstrap_base_model(
            catalog,
            model_dir,
            evaluation_per_scenario=settings.evaluation.instances_per_scenario,
            **options,
        )
    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        if registry.get(BASE_VERSION) is None:
            registry.register(
                version_id=BASE_VERSION,
                base_model=f"{EMBEDDED}-tiny-llama",
                kind="local",
                model_dir=model_dir,
                training_metrics=_read_json(model_dir / "training_metrics.json"),
            )
        registry.promote(
            BASE_VERSION, "primary", reason="bootstrap: the first incumbent", actor="autoretrain"
        )
    return BASE_VERSION


def _slot_model(settings: Settings, slot: str) -> Any:
    """The model serving a slot. Local profiles follow the registry (runs are recorded under
    the version id, which canary analysis and the ledger speak); others follow the profile."""
    from autoretrain.providers.factory import chat_model_for

    if settings.profile.kind == "local" and not settings.profile.slots.get(slot):
        version = slot_version(settings, slot)
        if version is not None:
            return model_for_version(settings, version)
    return chat_model_for(settings, slot)


def slot_version(settings: Settings, slot: str = "primary") -> Any:
    """The registered version in a slot of the active profile, or None (read-only: callers
    outside the `duckdb` pool, such as self-play, must not take the writer lock)."""
    if not settings.paths.database.exists():
        return None
    with RunStore.from_settings(settings, read_only=True) as store:
        return _registry(store, settings, read_only=True).resolve_slot(slot)


def model_for_version(settings: Settings, version: Any) -> Any:
    """A chat model for a registered version: local directories load in-process."""
    from autoretrain.providers.factory import chat_model_for

    if version.kind == "local":
        model = chat_model_for(settings, model_dir=version.adapter_dir or version.model_dir)
        model.name = version.id
        return model
    # Hosted: the slot's deployment serves it (see deploy/targets.py).
    return chat_model_for(
        settings, "candidate" if "candidate" in settings.profile.slots else "canary"
    )


# -- curation ---------------------------------------------------------------------------------


def build_training_dataset(settings: Settings) -> Any:
    """Promotable runs (human decisions over automatic ones) → a new dataset version."""
    from autoretrain.curation.builder import build_dataset
    from autoretrain.curation.source import promoted_records
    from autoretrain.scenarios import load_catalog

    catalog = load_catalog(settings.scenarios_dir)
    incumbent = slot_version(settings, "primary")
    # Streamed: the records wait in a temporary file, not as Run objects in memory.
    with promoted_records(settings) as (_, records):
        return build_dataset(
            records,
            out_root=settings.paths.datasets,
            eval_hashes=catalog.evaluation_hashes(settings.evaluation.instances_per_scenario),
            eval_scenario_ids={s.id for s in catalog.eval_scenarios},
            settings=settings,
            manifest_extra={
                "catalog_hash": catalog.hash,
                "source": f"run store {settings.paths.database}",
                "source_model": incumbent.id if incumbent else None,
                "agent_version": _agent_version(),
            },
        )


def _agent_version() -> str:
    from autoretrain.agents.workflow import AGENT_VERSION

    return AGENT_VERSION


# -- training ---------------------------------------------------------------------------------


def train_candidate(settings: Settings, dataset_dir: Any, version_id: str, **overrides: Any) -> Any:
    """Fine-tune the incumbent (primary) on a dataset version; register the result as
    `version_id`. The base model's demonstrations are mixed back in (REFERENCE.md's recipe:
    verified self-play plus the original demos), so the model keeps what it was taught."""
    from pathlib import Path

    from autoretrain.providers.local import TINY_MODEL_PARAMS
    from autoretrain.training.base_model import parameter_count
    from autoretrain.training.bootstrap import DEMOS_FILE
    from autoretrain.training.config import TrainConfig
    from autoretrain.training.lora import train

    if settings.training.backend == "azure":
        return train_hosted_candidate(settings, dataset_dir, version_id)
    incumbent = slot_version(settings, "primary")
    if incumbent is None or incumbent.kind != "local":
        raise ValueError(
            "local training needs a local model in the primary slot; for hosted models set "
            "training.backend: azure (docs/configuration.md)"
        )
    base_dir = Path(incumbent.model_dir or incumbent.adapter_dir)
    demos = settings.paths.models / EMBEDDED / BASE_VERSION / DEMOS_FILE
    mix_in = [str(demos)] if demos.exists() else []
    # A merged model, never a bare adapter: the next round trains on top of this version.
    # Tiny models train on one thread: their 128-wide matrices are too small for intra-op
    # threads to pay off, and on a busy machine the threads' spin-waiting cost ~5x.
    defaults: dict[str, Any] = {"merge_adapter": True}
    if parameter_count(base_dir) < TINY_MODEL_PARAMS:
        defaults["torch_threads"] = 1
    config = TrainConfig.from_settings(
        settings.training, mix_in=mix_in, **{**defaults, **overrides}
    )
    output_dir = settings.paths.models / EMBEDDED / version_id
    result = train(Path(dataset_dir), base_dir, output_dir, config)
    dataset_version = Path(dataset_dir).name
    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        registry.register(
            version_id=version_id,
            base_model=incumbent.base_model,
            kind="local",
            model_dir=result.merged_dir or result.model_dir,
            adapter_dir=result.adapter_dir if not result.merged_dir else None,
            dataset_version=dataset_version,
            training_metrics=result.metrics,
            parent_version=incumbent.id,
        )
    return result


@dataclass
class HostedTrainResult:
    """What `train_candidate` returns for a hosted fine-tune (the local trainer's shape)."""

    method: str
    model_dir: Any
    adapter_dir: Any
    metrics: dict[str, Any]
    job_id: str
    model_id: str
    reattached: bool


def hosted_backend(settings: Settings, backend: Any = None) -> Any:
    from autoretrain.training.hosted import HostedBackend

    if backend is not None:
        return backend
    name = settings.training.hosted_profile or settings.provider
    if name not in settings.providers:
        raise ValueError(f"training.hosted_profile {name!r} is not a provider profile")
    return HostedBackend.from_profile(settings.providers[name])


def train_hosted_candidate(
    settings: Settings, dataset_dir: Any, version_id: str, backend: Any = None
) -> HostedTrainResult:
    """The candidate as an Azure OpenAI fine-tuning job (submitted once, re-attached after a
    crash), registered as a hosted version when it succeeds."""
    from pathlib import Path

    from autoretrain.training.hosted import HostedFineTuneError
    from autoretrain.training.hosted_candidate import train_hosted

    training = settings.training
    incumbent = slot_version(settings, "primary")
    # A hosted incumbent's fine-tuned model is the next round's base (Azure fine-tunes further).
    base = (
        incumbent.hosted_model_id
        if incumbent is not None and incumbent.kind == "hosted"
        else training.hosted_base_model
    )
    if not base:
        raise ValueError(
            "training.backend is azure but there is no base model: set training.hosted_base_model "
            "(e.g. gpt-4o-mini-2024-07-18) or register a hosted incumbent in primary"
        )
    candidate = train_hosted(
        hosted_backend(settings, backend),
        Path(dataset_dir),
        base,
        version_id,
        settings.paths.models,
        config={"suffix": "autoretrain", "seed": training.seed, "n_epochs": training.epochs},
        timeout_s=training.hosted_timeout_s,
        price_per_1k_training_tokens=training.hosted_price_per_1k_training_tokens,
    )
    outcome = candidate.outcome
    if not outcome.succeeded:
        raise HostedFineTuneError(
            f"hosted fine-tune {candidate.job_id} for {version_id} {outcome.status}: "
            f"{outcome.reason} (record: {candidate.record})"
        )
    metrics = {**candidate.metrics, "job_id": candidate.job_id, "backend": "azure"}
    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        if registry.get(version_id) is None:
            registry.register(
                version_id=version_id,
                base_model=base,
                kind="hosted",
                hosted_model_id=outcome.model_id,
                dataset_version=Path(dataset_dir).name,
                training_metrics=metrics,
                parent_version=incumbent.id if incumbent else None,
            )
    return HostedTrainResult(
        "hosted", None, None, metrics, candidate.job_id, outcome.model_id, candidate.reattached
    )


# -- evaluation and deployment ----------------------------------------------------------------


def evaluate_candidate(settings: Settings, version_id: str, progress: bool = True) -> Any:
    """Replay both evaluation tiers through the incumbent (primary) and the candidate; decide;
    save the comparison, its report and chart. Returns the Comparison (with evaluation_id)."""
    from autoretrain.evaluation.harness import evaluate
    from autoretrain.evaluation.report import save_comparison
    from autoretrain.scenarios import load_catalog

    catalog = load_catalog(settings.scenarios_dir)
    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        incumbent = registry.get(registry.slots().get("primary") or "")
        candidate = registry.get(version_id)
    if incumbent is None or candidate is None:
        raise ValueError(
            f"cannot evaluate: incumbent {incumbent} / candidate {version_id!r} not registered"
        )
    comparison = evaluate(
        model_for_version(settings, incumbent),
        model_for_version(settings, candidate),
        catalog,
        settings,
        incumbent_name=incumbent.id,
        candidate_name=candidate.id,
        progress=progress,
    )
    with RunStore.from_settings(settings) as store:
        save_comparison(store.con, comparison, settings)
    return comparison


def deploy(
    settings: Settings, version_id: str, slot: str, reason: str, evaluation_id: str | None = None
) -> Any:
    """Serve a version in a slot through the profile's target (serving.json, an Azure
    deployment, an LM Studio id), then record it in the ledger. Returns the ledger entry."""
    from autoretrain.deploy.targets import deploy_to_slot, slot_target

    with RunStore.from_settings(settings) as store:
        entry, _ = deploy_to_slot(
            _registry(store, settings),
            slot_target(settings),
            version_id,
            slot,
            reason=reason,
            evaluation_id=evaluation_id,
            actor="autoretrain",
        )
        return entry


def deploy_candidate(settings: Settings, candidate: str, slot: str) -> Any:
    """Automation's deployment: re-read the candidate's own recorded decisions (its evaluation,
    and for primary its canary analysis) and move the slot only if they clear it; the ledger
    cites the evaluation that did. Raises ClearanceRefused, changing nothing, otherwise."""
    from autoretrain.deploy.clearance import clear
    from autoretrain.deploy.targets import deploy_to_slot, slot_target

    with RunStore.from_settings(settings) as store:
        registry = _registry(store, settings)
        clearance = clear(store.con, registry, candidate, slot)
        entry, _ = deploy_to_slot(
            registry,
            slot_target(settings),
            candidate,
            slot,
            reason=clearance.reason,
            evaluation_id=clearance.evaluation_id,
            actor="autoretrain",
        )
        return entry


@dataclass
class CanaryTraffic:
    """What the canary stage played and what the analysis said."""

    candidate: str
    runs_played: int
    rounds: int
    analysis: Any  # CanaryAnalysis


def canary_runs_needed(settings: Settings, share: float) -> int:
    """Self-play runs for one canary round: enough that each slot clears the analysis's
    minimum with room (2.5x), and at least half an iteration's self-play, so the
    non-inferiority test has the power the loop's figures were measured with."""
    min_runs = settings.evaluation_lifts().min_canary_runs
    return max(
        settings.selfplay.runs_per_iteration // 2, int(2.5 * min_runs / min(share, 1 - share))
    )


def canary_traffic(
    settings: Settings, candidate: str, progress: bool = False, max_rounds: int = 3
) -> CanaryTraffic:
    """Canary traffic for a candidate in the canary slot: self-play split between canary and
    primary, ingested, then analysed (canary vs the current primary) and recorded. Plays
    another round while the analysis lacks traffic, up to `max_rounds`; a candidate that no
    longer holds canary gets a failed analysis without traffic."""
    from autoretrain.deploy.clearance import save_canary_analysis
    from autoretrain.runs.archive import RunArchive

    share = settings.selfplay.canary_share or 0.5
    played = rounds = 0
    while True:
        analysis, primary = analyze_canary(settings, candidate)
        holds = primary is not None and analysis.window.get("canary_model") == candidate
        if analysis.passed or not holds or rounds >= max_rounds:
            break
        if not _insufficient(analysis):
            break
        before = set(RunArchive(settings.paths.landing).days())
        report = selfplay(
            settings, canary_runs_needed(settings, share), canary_share=share, progress=progress
        )
        played += report.finished
        rounds += 1
        days = sorted(set(RunArchive(settings.paths.landing).days()) - before | _today(settings))
        ingest_days(settings, days)
    with RunStore.from_settings(settings) as store:
        save_canary_analysis(store.con, candidate, primary, analysis)
    return CanaryTraffic(candidate, played, rounds, analysis)


def _insufficient(analysis: Any) -> bool:
    from autoretrain.evaluation.canary import INSUFFICIENT

    return any(INSUFFICIENT in (g.detail or "") for g in analysis.failed_gates)


def _today(settings: Settings) -> set[str]:
    """Landing days self-play may just have written (UTC today; yesterday across midnight)."""
    from datetime import UTC, datetime, timedelta

    from autoretrain.runs.archive import RunArchive

    now = datetime.now(UTC)
    days = {f"{now:%Y-%m-%d}", f"{now - timedelta(days=1):%Y-%m-%d}"}
    return days & set(RunArchive(settings.paths.landing).days())


def analyze_canary(settings: Settings, candidate: str) -> tuple[Any, str | None]:
    """The candidate's canary analysis against the current primary, over the runs since both
    slots took their current versions; a candidate that does not hold the canary slot fails it
    without looking at traffic."""
    from autoretrain.evaluation.canary import CanaryAnalysis, canary_analysis
    from autoretrain.evaluation.compare import Gate

    with RunStore.from_settings(settings, read_only=True) as store:
        registry = _registry(store, settings, read_only=True)
        slots = registry.slots()
        primary = slots.get("primary")
        if slots.get("canary") != candidate:
            held = slots.get("canary")
            gate = Gate(
                "canary_slot", False, None, None, f"{candidate} does not hold canary ({held})"
            )
            window = {"canary_model": slots.get("canary"), "primary_model": primary}
            return CanaryAnalysis(passed=False, reasons=[gate], window=window), primary
        analysis = canary_analysis(
            store.con,
            # Only traffic both slots served as they are now: earlier primary runs (older
            # self-play, another mix of scenarios) are no comparison for this canary.
            since=registry.held_since(("canary", "primary")),
            lifts=settings.evaluation_lifts(),
            canary_model=candidate,
            primary_model=primary,
            bootstrap_samples=settings.evaluation.bootstrap_samples,
        )
        return analysis, primary


def rollback(settings: Settings, slot: str = "primary", reason: str = "rollback") -> Any:
    """Serve the slot's previously promoted version again and record the rollback."""
    from autoretrain.deploy.targets import rollback_slot, slot_target

    with RunStore.from_settings(settings) as store:
        entry, _ = rollback_slot(
            _registry(store, settings),
            slot_target(settings),
            slot,
            reason=reason,
            actor="autoretrain",
        )
        return entry


def _read_json(path: Any) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def new_promotable_runs(settings: Settings) -> tuple[int, str | None]:
    """How many promotable runs are not yet in the newest dataset version (and its name).
    A new version is worth building once this passes `dataset.min_new_promotable_runs`."""
    import json

    from autoretrain.curation.manifest import MANIFEST
    from autoretrain.runs.review import promotable_run_ids

    with RunStore.from_settings(settings, read_only=True) as store:
        promotable = set(promotable_run_ids(store.con))
    root = settings.paths.datasets
    versions = sorted(p for p in root.iterdir() if (p / MANIFEST).exists()) if root.exists() else []
    if not versions:
        return len(promotable), None
    manifest = json.loads((versions[-1] / MANIFEST).read_text())
    used = {rid for ids in manifest.get("run_ids", {}).values() for rid in ids}
    used |= {x["run_id"] for x in manifest.get("excluded_runs", [])}
    return len(promotable - used), versions[-1].name


def pass_rates(settings: Settings, model: Any, per_scenario: int | None = None) -> dict[str, Any]:
    """One model's verified pass rate on both evaluation tiers (greedy; nothing recorded).
    For a quick look at a model; the regression gate compares two models with `evaluate`."""
    from collections import defaultdict

    from autoretrain.agents.play import play
    from autoretrain.agents.verifier import VerifierAgent
    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.base import Sampling
    from autoretrain.runs.tracker import RunTracker
    from autoretrain.scenarios import load_catalog

    catalog = load_catalog(settings.scenarios_dir)
    per_scenario = per_scenario or settings.evaluation.instances_per_scenario
    sampling = Sampling(temperature=0.0, max_tokens=settings.evaluation.max_tokens)
    tracker = RunTracker(None, model=getattr(model, "name", "model"), traffic="evaluation")
    verifier = VerifierAgent()
    out: dict[str, Any] = {}
    for tier in ("in_distribution", "held_out"):
        instances = catalog.eval_instances(tier, per_scenario)  # type: ignore[arg-type]
        by_category: dict[str, list[bool]] = defaultdict(list)
        for run in play(
            instances,
            model,
            tracker=tracker,
            tools=catalog.registry,
            verifier=verifier,
            workflow=WorkflowConfig(sampling=sampling),
            batch_size=settings.evaluation.batch_size,
        ):
            by_category[run.category or "?"].append(run.status == "succeeded")
        results = [ok for oks in by_category.values() for ok in oks]
        out[tier] = {
            "instances": len(results),
            "pass_rate": sum(results) / len(results) if results else 0.0,
            "by_category": {c: round(sum(v) / len(v), 4) for c, v in sorted(by_category.items())},
        }
    return out
