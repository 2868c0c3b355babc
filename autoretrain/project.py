"""The project: an opened data root, and every stage of the loop as one of its methods.

`Project(settings)` owns what the stages share: the data root's paths, the run store (one
connection policy: open, use, close; read-only for readers outside the `duckdb` pool, so they
never take the writer lock), the model registry, the scenario catalog (loaded once) and the
landing archive. Every caller goes through it: the Dagster assets (via `ProjectResource`), the
loop, the CLI and the tests. Domain packages below it (runs, curation, training, evaluation,
deploy) do the work; this module only wires them, and says in one place what each stage
returns.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.store import IngestReport, RunStore
from autoretrain.settings import Paths, Settings, load_settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pathlib import Path

    from autoretrain.agents.promotion_guard import DecisionReport
    from autoretrain.curation.manifest import DatasetVersion
    from autoretrain.deploy.registry import LedgerEntry, ModelRegistry, ModelVersion
    from autoretrain.deploy.targets import TargetResult
    from autoretrain.evaluation.canary import CanaryAnalysis
    from autoretrain.evaluation.compare import Comparison
    from autoretrain.evaluation.harness import ReplaySetup
    from autoretrain.providers.base import ChatModel
    from autoretrain.runs.schema import Run
    from autoretrain.runs.scoring import ScoreReport
    from autoretrain.scenarios import Catalog
    from autoretrain.selfplay import SelfPlayReport, SelfPlayRunner
    from autoretrain.training.config import TrainConfig, TrainMetrics, TrainResult
    from autoretrain.training.hosted import HostedBackend


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


# -- models -----------------------------------------------------------------------------------

EMBEDDED = "embedded"  # the models/<name>/ folder of the embedded default
BASE_VERSION = "v0"


# -- curation ---------------------------------------------------------------------------------


def candidate_key(dataset_version: str) -> str:
    """The candidate trained on a dataset version is named after it: its registry version id and
    its `candidates` partition key (no commas, stable)."""
    return f"cand-{dataset_version}"


def _agent_version() -> str:
    from autoretrain.agents.workflow import AGENT_VERSION

    return AGENT_VERSION


# -- training ---------------------------------------------------------------------------------


@dataclass
class HostedTrainResult:
    """What `train_candidate` returns for a hosted fine-tune (the local trainer's shape; no
    folder on disk: the model lives at the provider as `model_id`)."""

    method: str
    model_dir: Path | None
    adapter_dir: Path | None
    metrics: TrainMetrics
    job_id: str
    model_id: str
    reattached: bool


# -- evaluation and deployment ----------------------------------------------------------------


@dataclass
class SlotChange:
    """A slot moved (or re-applied): the ledger entry, None when the slot already held the
    version, and what the serving side did (a deployment, serving.json, an id to load)."""

    entry: LedgerEntry | None
    target: TargetResult


@dataclass
class CanaryTraffic:
    """What the canary stage played and what the analysis said."""

    candidate: str
    runs_played: int
    rounds: int
    analysis: CanaryAnalysis


@dataclass(frozen=True)
class TierPassRate:
    """One evaluation tier's verified pass rate, over all and per category."""

    instances: int
    pass_rate: float
    by_category: dict[str, float]


@dataclass(frozen=True)
class PassRates:
    """What `pass_rates` measured: one model on both evaluation tiers."""

    in_distribution: TierPassRate
    held_out: TierPassRate

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{tier: {instances, pass_rate, by_category}}, as the CLI's --json prints it."""
        return asdict(self)


def _insufficient(analysis: CanaryAnalysis) -> bool:
    from autoretrain.evaluation.canary import INSUFFICIENT

    return any(INSUFFICIENT in (g.detail or "") for g in analysis.failed_gates)


# A category this far below the incumbent in a rejected round is rehearsed harder next round.
REGRESSION_NOTICED = 0.02


def _added(report: SelfPlayReport | None, more: SelfPlayReport) -> SelfPlayReport:
    return more if report is None else report.add(more)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Project:
    """An opened data root. Cheap to make: nothing is opened until a stage needs it."""

    def __init__(self, settings: Settings, grader: ChatModel | None = None):
        self.settings = settings
        # The rubric judge, when a caller brings its own ChatModel; otherwise the one
        # `graders.rubric_profile` names is built when needed (plugins.verifier_from_settings).
        self.grader = grader

    @classmethod
    def open(cls, config_file: Path | None = None, **overrides: Any) -> Project:
        """The project the environment names (AUTORETRAIN_HOME, autoretrain.yaml)."""
        return cls(load_settings(config_file, **overrides))

    @property
    def paths(self) -> Paths:
        return self.settings.paths

    @cached_property
    def catalog(self) -> Catalog:
        """The scenario catalog, loaded once per project handle."""
        from autoretrain.scenarios import load_catalog

        return load_catalog(self.settings.scenarios_dir, self.settings.tools)

    @property
    def archive(self) -> RunArchive:
        """The landing zone (append-only JSONL by day)."""
        return RunArchive(self.settings.paths.landing)

    @contextmanager
    def store(self, read_only: bool = False) -> Iterator[RunStore]:
        """The run store, open for the length of a `with` block (DuckDB allows one writer
        process: writers run in the `duckdb` pool; readers elsewhere ask for read_only)."""
        with RunStore.from_settings(self.settings, read_only=read_only) as store:
            yield store

    def model_for(self, slot_or_version: str) -> ChatModel:
        """A chat model for a slot (`primary`, `canary`, ...) or a registered version id."""
        if self.settings.paths.database.exists():
            with self.store(read_only=True) as store:
                version = self.registry(store, read_only=True).get(slot_or_version)
            if version is not None:
                return self.model_for_version(version)
        return self._slot_model(slot_or_version)

    def ingest_days(
        self, days: list[str], on_day: Callable[[IngestReport], None] | None = None
    ) -> IngestSummary:
        """Ingest the landing zone's files for each day (idempotent; bad lines to quarantine).
        `on_day` hears each day's report as soon as that day is in."""
        archive = self.archive
        summary = IngestSummary()
        with self.store() as store:
            for day in days:
                summary.reports[day] = store.ingest_day(day, archive.files(day))
                if on_day is not None:
                    on_day(summary.reports[day])
        return summary

    def score_days(self, start_day: str, end_day: str) -> ScoreReport:
        """Per-run metrics for a day range into `scored_runs` (replaces those days' rows)."""
        from autoretrain.runs.scoring import score_days as score

        with self.store() as store:
            return score(store.con, start_day, end_day, self.settings.promotion_gates())

    def decide_days(
        self, start_day: str, end_day: str, reviewer: ChatModel | None = None
    ) -> DecisionReport:
        """PromotionGuardAgent decisions for a day range into `promotion_decisions`."""
        from autoretrain.agents.promotion_guard import PromotionGuardAgent
        from autoretrain.agents.promotion_guard import decide_days as decide
        from autoretrain.parallel import workers_for

        guard = PromotionGuardAgent(self.settings.promotion_gates(), reviewer=reviewer)
        workers = workers_for(self.settings.dataset.workers)
        with self.store() as store:
            return decide(store.con, start_day, end_day, guard, workers)

    def selfplay(
        self,
        n: int,
        *,
        slot: str = "primary",
        concurrency: int | None = None,
        workers: int | None = None,
        seed: int | None = None,
        canary_share: float | None = None,
        progress: bool = True,
        primary_model: ChatModel | None = None,
        canary_model: ChatModel | None = None,
    ) -> SelfPlayReport:
        """Run `n` self-play runs against the model in `slot` (and a share on the canary slot),
        landing every run in the landing zone. Returns the SelfPlayReport."""
        from autoretrain.agents.play import agent_from_settings
        from autoretrain.agents.workflow import WorkflowConfig
        from autoretrain.plugins import verifier_from_settings
        from autoretrain.providers.base import Sampling
        from autoretrain.runs.pricing import PriceTable
        from autoretrain.selfplay import SelfPlayRunner, SlotTarget

        cfg = self.settings.selfplay
        catalog = self.catalog
        share = cfg.canary_share if canary_share is None else canary_share
        agent = agent_from_settings(self.settings)
        slot_model = self._slot_model
        if agent is not None:
            # The team's agent reaches each slot through the gateway: nothing to load here.
            from autoretrain.agents.http_agent import AgentSlot

            slot_model = AgentSlot
        primary = SlotTarget(slot, primary_model or slot_model(slot), self.settings.provider)
        canary = None
        if share > 0:
            canary = SlotTarget(
                "canary", canary_model or slot_model("canary"), self.settings.provider
            )
        seed = self.selfplay_seed(primary.model.name) if seed is None else seed
        runner = SelfPlayRunner(
            catalog,
            catalog.registry,
            verifier_from_settings(self.settings, self.grader),
            self.archive,
            primary,
            canary=canary,
            canary_share=share,
            prices=PriceTable.from_settings(self.settings),
            # Seeded sampling too: the same seed, model and concurrency give the same runs.
            workflow=WorkflowConfig(
                sampling=Sampling(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
            ),
            concurrency=concurrency or cfg.concurrency,
            workers=workers or cfg.workers,
            progress=progress,
            exclude=catalog.evaluation_hashes(self.settings.evaluation.instances_per_scenario),
            agent=agent,
        )
        if cfg.allocation == "catalog":
            return runner.run(n, seed=seed, weights=cfg.category_weights or None)
        return self._measured_selfplay(runner, n, seed, primary.model.name)

    def _measured_selfplay(
        self, runner: SelfPlayRunner, n: int, seed: int, model: str
    ) -> SelfPlayReport:
        """Self-play shared out by measurement (autoretrain/allocation.py): an even pilot when
        the store knows too little of `model`, then the rest by teaching value; scenarios the
        incumbent never solved go to the teacher profile when one is set."""
        from autoretrain.allocation import allocate, merge_counts, needs_pilot

        cfg = self.settings.selfplay
        policy = cfg.allocation_policy()
        playable = [s for s in self.catalog.train_scenarios if s.selfplay_weight > 0]
        ids = [s.id for s in playable]
        counts = self.measured_counts(model)
        source = f"{sum(c[0] for c in counts.values())} runs of {model} in the store"
        report: SelfPlayReport | None = None
        if needs_pilot(ids, counts, policy):
            # Stratified: the same number of runs of every scenario, so each gets measured.
            each = max(1, min(n, round(n * policy.pilot_share)) // len(ids))
            pilot = [
                instance
                for s in ids
                for instance in self.catalog.selfplay_instances(
                    each,
                    seed=seed,
                    weights={**dict.fromkeys(ids, 0.0), s: 1.0},
                    exclude=runner.exclude,
                )
            ]
            report = runner.run(len(pilot), instances=pilot)
            counts = merge_counts(counts, report.scenario_counts())
            source += f" and an even pilot of {report.finished}"
        allocation = allocate(
            [(s.id, s.category) for s in playable],
            counts,
            policy,
            # What the catalog or the settings weigh by hand stays as they say.
            overrides={
                **{s.id: s.selfplay_weight for s in playable if s.selfplay_weight_set},
                **cfg.category_weights,
            },
            boost_categories=self.regressed_categories(model),
            source=source,
        )
        rest = n - (report.requested if report else 0)
        if rest > 0 and not runner.stopped:
            instances = self.catalog.selfplay_instances(
                rest, seed=seed + 1, weights=allocation.weights, exclude=runner.exclude
            )
            teacher = self._teacher_runner(runner) if allocation.unsolved else None
            if teacher is not None:
                unsolved = set(allocation.unsolved)
                taught = [i for i in instances if i.scenario_id in unsolved]
                instances = [i for i in instances if i.scenario_id not in unsolved]
                report = _added(report, teacher.run(len(taught), instances=taught))
                if teacher.stopped:  # Ctrl-C while the teacher played: stop the round too
                    runner.stop()
            report = _added(report, runner.run(len(instances), instances=instances))
        assert report is not None
        report.allocation = allocation.to_dict()
        return report

    def _teacher_runner(self, runner: SelfPlayRunner) -> SelfPlayRunner | None:
        """A runner like `runner` whose model is the `selfplay.teacher` profile's, or None."""
        from autoretrain.providers.factory import chat_model_for
        from autoretrain.selfplay import SelfPlayRunner, SlotTarget

        name = self.settings.selfplay.teacher
        if not name:
            return None
        if name not in self.settings.providers:
            raise ValueError(
                f"selfplay.teacher {name!r} is not a provider profile; known: "
                f"{sorted(self.settings.providers)}"
            )
        model = chat_model_for(self.settings.model_copy(update={"provider": name}), "primary")
        return SelfPlayRunner(
            runner.catalog,
            runner.tools,
            runner.verifier,
            runner.archive,
            SlotTarget("teacher", model, name),
            prices=runner.prices,
            workflow=runner.workflow,
            concurrency=runner.concurrency,
            progress=runner.progress,
            exclude=runner.exclude,
        )

    def selfplay_seed(self, model: str) -> int:
        """`selfplay.seed` for a model's first round; `selfplay.seed` plus the self-play runs
        it already has in the store after that. A seed fixes which instances are drawn and how
        they are sampled, so without this a round played again on the same incumbent (its
        candidate rejected, or another automated batch) repeated the last one run for run: the
        same runs, deduplicated into the same dataset, trained into the same candidate. Counted
        from the store, so a batch still in the landing zone is not counted yet."""
        if not self.settings.paths.database.exists():
            return self.settings.selfplay.seed
        with self.store(read_only=True) as store:
            (played,) = store.con.execute(
                "SELECT count(*) FROM runs WHERE traffic = 'selfplay' AND model = ?", [model]
            ).fetchone()
        return self.settings.selfplay.seed + played

    def measured_counts(self, model: str) -> dict[str, tuple[int, int]]:
        """scenario id → (runs, verified) of `model`'s self-play and evaluation in the store."""
        from autoretrain.allocation import measured_counts

        if not self.settings.paths.database.exists():
            return {}
        with self.store(read_only=True) as store:
            return measured_counts(store.con, model)

    def regressed_categories(self, incumbent: str) -> list[str]:
        """The categories (either tier) in which the last candidate evaluated against
        `incumbent` fell more than 2 points below it, if the gate rejected that candidate: what
        the next round must rehearse. [] when there is none."""
        comparison = self._last_comparison(incumbent)
        if comparison is None or comparison.get("decision") != "reject":
            return []
        rates: dict[tuple[str, str], dict[str, float]] = {}
        for row in comparison.get("categories", []):
            rates.setdefault((row["tier"], row["category"]), {})[row["role"]] = row["pass_rate"]
        return sorted(
            {
                category
                for (_tier, category), by_role in rates.items()
                if by_role.get("candidate", 1.0)
                < by_role.get("incumbent", 0.0) - REGRESSION_NOTICED
            }
        )

    def round_learning_rate(self, incumbent: str) -> float | None:
        """`training.learning_rate_after_regression` when the last candidate against
        `incumbent` was rejected with a category that fell (it forgot something the incumbent
        does); None otherwise: the round trains at `training.learning_rate`."""
        gentle = self.settings.training.learning_rate_after_regression
        if gentle is None or not (regressed := self.regressed_categories(incumbent)):
            return None
        log.info(
            "the last candidate against %s regressed %s: this round trains at learning rate %g",
            incumbent, ", ".join(regressed), gentle,
        )  # fmt: skip
        return gentle

    def _last_comparison(self, incumbent: str) -> dict[str, Any] | None:
        root = self.settings.paths.reports
        if not root.exists():
            return None
        # Evaluation ids start with their UTC time, so the newest sorts last.
        for path in sorted(root.glob("*/comparison.json"), reverse=True):
            comparison = _read_json(path)
            if comparison.get("incumbent") == incumbent:
                return comparison
        return None

    def registry(self, store: RunStore, read_only: bool = False) -> ModelRegistry:
        """The model registry over an open store."""
        from autoretrain.deploy.registry import ModelRegistry

        return ModelRegistry.from_settings(store.con, self.settings, read_only=read_only)

    def ensure_base_model(self, **bootstrap_options: Any) -> str | None:
        """The first incumbent. For a local profile with an empty primary slot: bootstrap the
        embedded model (if not on disk), register it as `v0` and put it in primary. Otherwise the
        incumbent is whatever primary holds (or, for remote profiles, what the profile names).
        An Azure OpenAI profile that trains hosted (`training.backend: azure`) registers its base
        model as `v0`, served by the deployment the profile's `slots.primary` names."""
        if (
            self.settings.profile.kind == "azure_openai"
            and self.settings.training.backend == "azure"
        ):
            return self._ensure_hosted_base()
        if self.settings.profile.kind != "local":
            return None
        with self.store() as store:
            registry = self.registry(store)
            current = registry.slots().get("primary")
            if current is not None:
                return current
        model_dir = self.embedded_model_dir()
        if not (model_dir / "config.json").exists():
            self._build_base_model(model_dir, **bootstrap_options)
        else:
            self._warn_if_bootstrapped_elsewhere(model_dir)
        with self.store() as store:
            registry = self.registry(store)
            if registry.get(BASE_VERSION) is None:
                registry.register(
                    version_id=BASE_VERSION,
                    base_model=f"{EMBEDDED}-tiny-llama",
                    kind="local",
                    model_dir=model_dir,
                    training_metrics=_read_json(model_dir / "training_metrics.json"),
                )
            registry.promote(
                BASE_VERSION,
                "primary",
                reason="bootstrap: the first incumbent",
                actor="autoretrain",
            )
        return BASE_VERSION

    def _ensure_hosted_base(self) -> str | None:
        """The hosted loop's first incumbent: `training.hosted_base_model`, served by the
        deployment a person made for it (the profile's `slots.primary`). Registered as `v0` in
        primary, with that deployment recorded (`HAND_MADE_DEPLOYMENT`): a rollback to v0 flips
        the slot back to it, and autoretrain never creates or deletes it."""
        from autoretrain.deploy.targets import HAND_MADE_DEPLOYMENT

        base = self.settings.training.hosted_base_model
        deployment = self.settings.profile.slots.get("primary")
        with self.store() as store:
            registry = self.registry(store)
            current = registry.slots().get("primary")
            if current is not None or not (base and deployment):
                return current  # held already, or nothing to register: the profile serves it
            if registry.get(BASE_VERSION) is None:
                registry.register(
                    version_id=BASE_VERSION,
                    base_model=base,
                    kind="hosted",
                    hosted_model_id=base,
                    training_metrics={HAND_MADE_DEPLOYMENT: deployment},
                )
            registry.promote(
                BASE_VERSION,
                "primary",
                reason=f"the hosted base model, served by deployment {deployment}",
                actor="autoretrain",
            )
        return BASE_VERSION

    def embedded_model_dir(self, version: str = BASE_VERSION) -> Path:
        """Where the embedded model's versions live: `<models>/embedded/<version>`."""
        return self.settings.paths.models / EMBEDDED / version

    def bootstrap(self, output: Path | None = None, force: bool = False, **options: Any) -> Path:
        """Build the embedded base model into `output` (default: the embedded `v0`) and return
        its folder. An existing folder is a FileExistsError unless `force`, which replaces it.
        `options` (demos_per_scenario, seed, time_budget_s, calibrate) override the training
        settings; None means the setting. Registers nothing: `ensure_base_model` does that."""
        import shutil

        target = output or self.embedded_model_dir()
        if target.exists():
            if not force:
                raise FileExistsError(errno.EEXIST, "already exists", str(target))
            shutil.rmtree(target)
        self._build_base_model(
            target, **{name: value for name, value in options.items() if value is not None}
        )
        return target

    def _build_base_model(
        self, target: Path, calibrate: bool | None = None, **options: Any
    ) -> None:
        """bootstrap_base_model on this catalog, with the training settings as defaults;
        calibrated (`bootstrap_calibrated`) when `calibrate`, or unset and the settings say so."""
        from autoretrain.training.bootstrap import bootstrap_base_model, bootstrap_calibrated

        training = self.settings.training
        options = {
            "demos_per_scenario": training.bootstrap_demos_per_scenario,
            "seed": training.seed,
            "time_budget_s": training.bootstrap_time_budget_s,
            "evaluation_per_scenario": self.settings.evaluation.instances_per_scenario,
            **options,
        }
        if calibrate is None:
            calibrate = training.bootstrap_calibration
        if calibrate:
            bootstrap_calibrated(self.catalog, target, self.train_pass_rates, **options)
        else:
            bootstrap_base_model(self.catalog, target, **options)

    def _warn_if_bootstrapped_elsewhere(self, model_dir: Path) -> None:
        """An existing v0 from another catalog is kept (it may be wanted: a catalog edited
        since), but its tokenizer and demonstrations are that catalog's: say so."""
        import logging

        built = _read_json(model_dir / "train_config.json").get("bootstrap") or {}
        if built.get("catalog_hash") and built["catalog_hash"] != self.catalog.hash:
            logging.getLogger(__name__).warning(
                "%s was bootstrapped from catalog %s (%s…), not this one (%s, %s…): its "
                "tokenizer and demonstrations are that catalog's. For a new catalog, use a fresh "
                "AUTORETRAIN_HOME or rebuild it (`autoretrain bootstrap --force`).",
                model_dir,
                built.get("catalog_root", "?"),
                built["catalog_hash"][:12],
                self.catalog.root,
                self.catalog.hash[:12],
            )

    def _slot_model(self, slot: str) -> ChatModel:
        """The model serving a slot. Local profiles follow the registry (runs are recorded under
        the version id, which canary analysis and the ledger speak); others follow the profile.
        An Azure slot is called through the deployment the slot file names, and its runs are
        recorded under the registered version that holds the slot, as local ones are."""
        from autoretrain.providers.factory import chat_model_for

        kind = self.settings.profile.kind
        if kind == "local" and not self.settings.profile.slots.get(slot):
            version = self.slot_version(slot)
            if version is not None:
                return self.model_for_version(version)
        model = chat_model_for(self.settings, slot)
        if kind == "azure_openai":
            version = self.slot_version(slot)
            if version is not None:
                model.name = version.id
        return model

    def slot_version(self, slot: str = "primary") -> ModelVersion | None:
        """The registered version in a slot of the active profile, or None (read-only: callers
        outside the `duckdb` pool, such as self-play, must not take the writer lock)."""
        if not self.settings.paths.database.exists():
            return None
        with self.store(read_only=True) as store:
            return self.registry(store, read_only=True).resolve_slot(slot)

    def model_for_version(self, version: ModelVersion) -> ChatModel:
        """A chat model for a registered version: local directories load in-process."""
        from autoretrain.providers.factory import chat_model_for

        if version.kind == "local":
            model = chat_model_for(
                self.settings, model_dir=version.adapter_dir or version.model_dir
            )
            model.name = version.id
            return model
        if self.settings.profile.kind != "azure_openai":
            raise ValueError(
                f"version {version.id} is hosted ({version.hosted_model_id}): calling it needs an "
                f"azure_openai provider profile, not {self.settings.provider!r} "
                f"({self.settings.profile.kind})"
            )
        # Hosted: its own deployment serves it (made now if it has none: one per version, as
        # Azure cannot re-point a deployment), called by name, whatever the slots hold.
        from autoretrain.deploy.targets import AzureTarget, slot_target

        target = slot_target(self.settings)
        assert isinstance(target, AzureTarget)
        model = chat_model_for(self.settings, deployment=target.deployment_for_evaluation(version))
        model.name = version.id
        return model

    def build_training_dataset(
        self,
        runs: Iterable[Run | Mapping[str, Any] | str | bytes] | None = None,
        *,
        decisions: Mapping[str, str] | None = None,
        catalog: Catalog | None = None,
        source: str | None = None,
        manifest_extra: dict[str, Any] | None = None,
        require_runs: bool = False,
    ) -> DatasetVersion:
        """Promotable runs (human decisions over automatic ones) → a new dataset version.

        The same build for every caller: by default the run store's promotable runs and the
        project's catalog. `runs` (records from elsewhere, with optional `decisions`: run_id →
        decision), `catalog` (another catalog) and `source` replace those inputs; the manifest
        has the same keys either way (`manifest_extra` adds to them). `require_runs` refuses,
        with a ValueError, to build from a store that has no promotable run."""
        from autoretrain.curation.builder import build_dataset
        from autoretrain.curation.source import promoted_records

        catalog = catalog or self.catalog

        def build(
            records: Iterable[Run | Mapping[str, Any] | str | bytes],
            source: str,
            source_model: str | None,
        ) -> DatasetVersion:
            return build_dataset(
                records,
                out_root=self.settings.paths.datasets,
                eval_hashes=catalog.evaluation_hashes(
                    self.settings.evaluation.instances_per_scenario
                ),
                eval_scenario_ids={s.id for s in catalog.eval_scenarios},
                config=self.settings.dataset,
                gates=self.settings.promotion_gates(),
                manifest_extra={
                    "catalog_hash": catalog.hash,
                    "source": source,
                    "source_model": source_model,
                    "agent_version": _agent_version(),
                    **(manifest_extra or {}),
                },
                decisions=decisions,
            )

        if runs is not None:
            # Runs from outside the store: no slot's model is known to have produced them.
            return build(runs, source or "runs given by the caller", None)
        incumbent = self.slot_version("primary")
        # Streamed: the records wait in a temporary file, not as Run objects in memory.
        promoted = promoted_records(
            lambda: self.store(read_only=True), self.settings.paths.datasets
        )
        with promoted as (n, records):
            if require_runs and not n:
                raise ValueError(
                    f"no promoted runs in {self.settings.paths.database}: score and decide runs "
                    "first (`autoretrain review` settles the ones that need a human)"
                )
            references = self.reference_demonstrations(incumbent.id if incumbent else None)
            if references:
                manifest_extra = {
                    **(manifest_extra or {}),
                    "reference_demonstrations": {
                        "why": "the incumbent verified none of its runs of these scenarios",
                        "runs": len(references),
                        "by_scenario": dict(Counter(r.scenario_id for r in references)),
                    },
                }
            return build(
                chain(records, references),
                source or f"run store {self.settings.paths.database}",
                incumbent.id if incumbent else None,
            )

    def reference_demonstrations(self, incumbent: str | None) -> list[Run]:
        """Reference-solution runs (curation/reference.py) of every train scenario `incumbent`
        never solved in `selfplay.min_observations` runs or more; none when
        `dataset.reference_demos_per_unsolved_scenario` is 0."""
        from autoretrain.curation.reference import reference_runs

        per_scenario = self.settings.dataset.reference_demos_per_unsolved_scenario
        if not per_scenario or incumbent is None:
            return []
        least = self.settings.selfplay.min_observations
        unsolved = [
            scenario_id
            for scenario_id, (runs, verified) in self.measured_counts(incumbent).items()
            if verified == 0 and runs >= least
        ]
        train = {s.id for s in self.catalog.train_scenarios}
        return reference_runs(
            self.catalog,
            [s for s in unsolved if s in train],
            per_scenario,
            self.catalog.evaluation_hashes(self.settings.evaluation.instances_per_scenario),
            agent_version=_agent_version(),
        )

    def train_candidate(
        self,
        dataset_dir: str | Path,
        version_id: str,
        *,
        backend: str | None = None,
        base_dir: Path | None = None,
        output_dir: Path | None = None,
        **overrides: Any,
    ) -> TrainResult | HostedTrainResult:
        """Fine-tune on a dataset version, from the root of the primary's lineage or from the
        primary itself (`training.init_from`, `training_start`); register the result as
        `version_id`, its parent the incumbent (the primary). The base model's demonstrations
        are mixed back in (REFERENCE.md's recipe: verified self-play plus the original demos),
        so the model keeps what it was taught. `overrides` are TrainConfig fields (`mix_in`
        adds files).

        `backend` overrides `training.backend`; `output_dir` replaces
        `<models>/embedded/<version_id>`. `base_dir` trains a model directory from outside the
        registry instead of the incumbent: no demonstrations, no merge default, and nothing is
        registered (register it yourself, docs/guides/own-model.md)."""
        from pathlib import Path

        from autoretrain.providers.local import TINY_MODEL_PARAMS
        from autoretrain.training.base_model import parameter_count
        from autoretrain.training.bootstrap import DEMOS_FILE
        from autoretrain.training.config import TrainConfig
        from autoretrain.training.lora import train

        if (backend or self.settings.training.backend) == "azure":
            return self.train_hosted_candidate(dataset_dir, version_id)
        incumbent = None
        defaults: dict[str, Any] = {}
        mix_in = [str(p) for p in overrides.pop("mix_in", None) or []]
        if base_dir is None:
            incumbent = self.slot_version("primary")
            if incumbent is None or incumbent.kind != "local":
                raise ValueError(
                    "local training needs a local model in the primary slot; for hosted models "
                    "set training.backend: azure (docs/configuration.md)"
                )
            with self.store(read_only=True) as store:
                if self.registry(store, read_only=True).get(version_id) is not None:
                    raise ValueError(
                        f"version {version_id!r} is already registered; versions are never "
                        "overwritten: pick a new version id"
                    )
            base_dir = self.training_start(incumbent)
            demos = self.settings.paths.models / EMBEDDED / BASE_VERSION / DEMOS_FILE
            mix_in = ([str(demos)] if demos.exists() else []) + mix_in
            # A merged model, never a bare adapter: a later round may train on top of this
            # version (`training.init_from: incumbent`), and WiSE-FT interpolates whole weights.
            defaults["merge_adapter"] = True
            if (rate := self.round_learning_rate(incumbent.id)) is not None:
                defaults["learning_rate"] = rate
            # Tiny models train on one thread: their 128-wide matrices are too small for intra-op
            # threads to pay off, and on a busy machine the threads' spin-waiting cost ~5x.
            if parameter_count(base_dir) < TINY_MODEL_PARAMS:
                defaults["torch_threads"] = 1
        overrides = {k: v for k, v in overrides.items() if v is not None}
        config = TrainConfig.from_settings(
            self.settings.training, mix_in=mix_in, **{**defaults, **overrides}
        )
        output_dir = output_dir or self.settings.paths.models / EMBEDDED / version_id
        probe = None
        if incumbent is not None and self.settings.training.phrasing_slice:
            config, probe = self.phrasing_slice_epochs(
                Path(dataset_dir), Path(base_dir), incumbent, config, output_dir
            )
        extra = {"phrasing_slice": probe} if probe is not None else None
        result = train(Path(dataset_dir), Path(base_dir), output_dir, config, extra_metadata=extra)
        if probe is not None:
            result.metrics.record["phrasing_slice"] = probe
        if incumbent is None:
            return result
        with self.store() as store:
            registry = self.registry(store)
            registry.register(
                version_id=version_id,
                base_model=incumbent.base_model,
                kind="local",
                model_dir=result.merged_dir or result.model_dir,
                adapter_dir=result.adapter_dir if not result.merged_dir else None,
                dataset_version=Path(dataset_dir).name,
                training_metrics=result.metrics.record,
                parent_version=incumbent.id,
            )
            if self.settings.profile.kind == "local":
                # Served by its id from now on (a replay through a team's agent asks for it).
                registry.write_serving_config()
        return result

    def phrasing_slice_epochs(
        self,
        dataset_dir: Path,
        base_dir: Path,
        incumbent: ModelVersion,
        config: TrainConfig,
        output_dir: Path,
    ) -> tuple[TrainConfig, dict[str, Any]]:
        """`config` with the epoch count the phrasing-slice probe chose against `incumbent`
        (training/phrasing_slice.py), and the probe's record (`epochs` None: the configured
        count stays, `reason` says why)."""
        import shutil
        from dataclasses import replace
        from pathlib import Path

        from autoretrain.agents.play import agent_from_settings
        from autoretrain.providers.factory import chat_model_for
        from autoretrain.training.phrasing_slice import probe_epochs

        if agent_from_settings(self.settings) is not None:
            return config, {
                "epochs": None,
                "reason": "the slice replays through the built-in workflow; a round played by "
                "the team's own agent trains the configured epochs",
            }

        def load(path: Path, name: str) -> Any:
            model = chat_model_for(self.settings, model_dir=path)
            model.name = name
            return model

        workdir = output_dir.with_name(f".{output_dir.name}.phrasing-slice")
        try:
            record = probe_epochs(
                dataset_dir=dataset_dir,
                base_dir=base_dir,
                config=config,
                catalog=self.catalog,
                incumbent_model=load(
                    Path(incumbent.model_dir or incumbent.adapter_dir), incumbent.id
                ),
                load_model=load,
                setup=self.replay_setup(),
                workdir=workdir,
            )
        finally:
            # The probe's models and runs are only a measurement; its record keeps the figures.
            shutil.rmtree(workdir, ignore_errors=True)
        record["configured_epochs"] = config.epochs
        if record["epochs"] is not None:
            config = replace(config, epochs=record["epochs"])
        return config, record

    def training_start(self, incumbent: ModelVersion) -> Path:
        """The weights a round fine-tunes (`training.init_from`): the incumbent's, or those of
        the first local version of its lineage (its root; v0 for the embedded model)."""
        from pathlib import Path

        start = incumbent
        if self.settings.training.init_from == "base":
            # A parent is registered before its child, so the chain ends.
            with self.store(read_only=True) as store:
                registry = self.registry(store, read_only=True)
                while start.parent_version:
                    parent = registry.get(start.parent_version)
                    if parent is None or parent.kind != "local":
                        break
                    start = parent
        return Path(start.model_dir or start.adapter_dir)

    def hosted_backend(self, backend: HostedBackend | None = None) -> HostedBackend:
        from autoretrain.training.backend import Backoff
        from autoretrain.training.hosted import HostedBackend

        if backend is not None:
            return backend
        name = self.settings.training.hosted_profile or self.settings.provider
        if name not in self.settings.providers:
            raise ValueError(f"training.hosted_profile {name!r} is not a provider profile")
        longest = self.settings.training.hosted_poll_max_s
        poll = Backoff(initial_s=min(5.0, longest), max_s=longest)
        return HostedBackend.from_profile(self.settings.providers[name], backoff=poll)

    def train_hosted_candidate(
        self, dataset_dir: str | Path, version_id: str, backend: HostedBackend | None = None
    ) -> HostedTrainResult:
        """The candidate as an Azure OpenAI fine-tuning job (submitted once, re-attached after a
        crash), registered as a hosted version when it succeeds."""
        from pathlib import Path

        from autoretrain.training.config import TrainMetrics
        from autoretrain.training.hosted import HostedFineTuneError
        from autoretrain.training.hosted_candidate import train_hosted

        training = self.settings.training
        incumbent = self.slot_version("primary")
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
            self.hosted_backend(backend),
            Path(dataset_dir),
            base,
            version_id,
            self.settings.paths.models,
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
        with self.store() as store:
            registry = self.registry(store)
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
            "hosted",
            None,
            None,
            TrainMetrics(metrics),
            candidate.job_id,
            outcome.model_id,
            candidate.reattached,
        )

    def evaluate_candidate(self, version_id: str, progress: bool = True) -> Comparison:
        """Replay both evaluation tiers through the incumbent (primary) and the candidate; decide;
        save the comparison, its report and chart. Returns the Comparison (with evaluation_id)."""
        from autoretrain.evaluation.harness import evaluate
        from autoretrain.evaluation.report import save_comparison

        catalog = self.catalog
        with self.store() as store:
            registry = self.registry(store)
            incumbent = registry.get(registry.slots().get("primary") or "")
            candidate = registry.get(version_id)
        if incumbent is None or candidate is None:
            raise ValueError(
                f"cannot evaluate: incumbent {incumbent} / candidate {version_id!r} not registered"
            )
        from autoretrain.agents.play import agent_from_settings

        agent = agent_from_settings(self.settings)
        model_for = self.model_for_version
        if agent is not None:
            # The team's agent plays both versions through the gateway, by version id.
            from autoretrain.agents.http_agent import AgentSlot

            def model_for(version: ModelVersion) -> Any:  # an AgentSlot stands in for the model
                return AgentSlot(version.id)

        comparison = evaluate(
            model_for(incumbent),
            model_for(candidate),
            catalog,
            self.replay_setup(),
            incumbent_name=incumbent.id,
            candidate_name=candidate.id,
            progress=progress,
            **({"agent": agent} if agent is not None else {}),
        )
        with self.store() as store:
            save_comparison(store.con, comparison, self.settings.paths.reports)
        return comparison

    def replay_setup(self) -> ReplaySetup:
        """What the replay harness takes from the settings: the evaluation section, the gates'
        thresholds for the active profile, the landing zone, prices, the profile's name, and
        the verifier (with the rubric judge, when there is one)."""
        from autoretrain.evaluation.harness import ReplaySetup
        from autoretrain.plugins import verifier_from_settings
        from autoretrain.runs.pricing import PriceTable

        return ReplaySetup(
            evaluation=self.settings.evaluation,
            lifts=self.settings.evaluation_lifts(),
            landing=self.settings.paths.landing,
            prices=PriceTable.from_settings(self.settings),
            provider=self.settings.provider,
            verifier=verifier_from_settings(self.settings, self.grader),
        )

    def deploy(
        self,
        version_id: str,
        slot: str,
        reason: str | None,
        evaluation_id: str | None = None,
        *,
        actor: str | None = "autoretrain",
        profile: str | None = None,
    ) -> LedgerEntry:
        """Serve a version in a slot through the profile's target (serving.json, an Azure
        deployment, an LM Studio id), then record it in the ledger. Returns the ledger entry
        (see `move_slot` for what the serving side did)."""
        return self.move_slot(
            version_id, slot, reason=reason, evaluation_id=evaluation_id, actor=actor,
            profile=profile,
        ).entry  # fmt: skip

    def deploy_candidate(self, candidate: str, slot: str) -> LedgerEntry:
        """Automation's deployment: re-read the candidate's own recorded decisions (its evaluation,
        and for primary its canary analysis) and move the slot only if they clear it; the ledger
        cites the evaluation that did. Raises ClearanceRefused, changing nothing, otherwise."""
        from autoretrain.deploy.clearance import clear
        from autoretrain.deploy.targets import deploy_to_slot, slot_target

        with self.store() as store:
            registry = self.registry(store)
            clearance = clear(store.con, registry, candidate, slot)
            entry, _ = deploy_to_slot(
                registry,
                slot_target(self.settings),
                candidate,
                slot,
                reason=clearance.reason,
                evaluation_id=clearance.evaluation_id,
                actor="autoretrain",
            )
            return entry

    def canary_runs_needed(self, share: float) -> int:
        """Self-play runs for one canary round: enough that each slot clears the analysis's
        minimum with room (2.5x), and at least half an iteration's self-play, so the
        non-inferiority test has the power the loop's figures were measured with."""
        min_runs = self.settings.evaluation_lifts().min_canary_runs
        return max(
            self.settings.selfplay.runs_per_iteration // 2,
            int(2.5 * min_runs / min(share, 1 - share)),
        )

    def canary_traffic(
        self, candidate: str, progress: bool = False, max_rounds: int = 3
    ) -> CanaryTraffic:
        """Canary traffic for a candidate in the canary slot: self-play split between canary and
        primary, ingested, then analysed (canary vs the current primary) and recorded. Plays
        another round while the analysis lacks traffic, up to `max_rounds`; a candidate that no
        longer holds canary gets a failed analysis without traffic."""
        from autoretrain.deploy.clearance import save_canary_analysis

        share = self.settings.selfplay.canary_share or 0.5
        played = rounds = 0
        while True:
            analysis, primary = self.analyze_canary(candidate)
            holds = primary is not None and analysis.window.get("canary_model") == candidate
            if analysis.passed or not holds or rounds >= max_rounds:
                break
            if not _insufficient(analysis):
                break
            before = set(self.archive.days())
            report = self.selfplay(
                self.canary_runs_needed(share), canary_share=share, progress=progress
            )
            played += report.finished
            rounds += 1
            days = sorted(set(self.archive.days()) - before | self._today())
            self.ingest_days(days)
        with self.store() as store:
            save_canary_analysis(store.con, candidate, primary, analysis)
        return CanaryTraffic(candidate, played, rounds, analysis)

    def _today(self) -> set[str]:
        """Landing days self-play may just have written (UTC today; yesterday across midnight)."""
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        days = {f"{now:%Y-%m-%d}", f"{now - timedelta(days=1):%Y-%m-%d}"}
        return days & set(self.archive.days())

    def analyze_canary(self, candidate: str) -> tuple[CanaryAnalysis, str | None]:
        """The candidate's canary analysis against the current primary, over the runs since both
        slots took their current versions; a candidate that does not hold the canary slot fails it
        without looking at traffic."""
        from autoretrain.evaluation.canary import CanaryAnalysis, canary_analysis
        from autoretrain.evaluation.compare import Gate

        with self.store(read_only=True) as store:
            registry = self.registry(store, read_only=True)
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
                lifts=self.settings.evaluation_lifts(),
                canary_model=candidate,
                primary_model=primary,
                bootstrap_samples=self.settings.evaluation.bootstrap_samples,
            )
            return analysis, primary

    def rollback(
        self,
        slot: str = "primary",
        reason: str | None = "rollback",
        *,
        actor: str | None = "autoretrain",
        profile: str | None = None,
    ) -> LedgerEntry:
        """Serve the slot's previously promoted version again and record the rollback."""
        entry = self.roll_back_slot(slot, reason=reason, actor=actor, profile=profile).entry
        assert entry is not None  # a rollback always moves the slot
        return entry

    def new_promotable_runs(self) -> tuple[int, str | None]:
        """How many promotable runs are not yet in the newest dataset version (and its name).
        A new version is worth building once this passes `dataset.min_new_promotable_runs`."""
        import json

        from autoretrain.curation.manifest import MANIFEST
        from autoretrain.runs.review import promotable_run_ids

        with self.store(read_only=True) as store:
            promotable = set(promotable_run_ids(store.con))
        root = self.settings.paths.datasets
        versions = (
            sorted(p for p in root.iterdir() if (p / MANIFEST).exists()) if root.exists() else []
        )
        if not versions:
            return len(promotable), None
        manifest = json.loads((versions[-1] / MANIFEST).read_text())
        used = {rid for ids in manifest.get("run_ids", {}).values() for rid in ids}
        used |= {x["run_id"] for x in manifest.get("excluded_runs", [])}
        return len(promotable - used), versions[-1].name

    def pass_rates(self, model: ChatModel, per_scenario: int | None = None) -> PassRates:
        """One model's verified pass rate on both evaluation tiers (greedy; nothing recorded).
        For a quick look at a model; the regression gate compares two models with `evaluate`."""
        catalog = self.catalog
        per_scenario = per_scenario or self.settings.evaluation.instances_per_scenario
        out: dict[str, TierPassRate] = {}
        for tier in ("in_distribution", "held_out"):
            instances = catalog.eval_instances(tier, per_scenario)  # type: ignore[arg-type]
            out[tier] = self._greedy_pass_rate(model, instances)
        return PassRates(**out)

    def train_pass_rates(self, model_dir: Path, per_scenario: int = 10) -> dict[str, float]:
        """A local model's greedy pass rate per category on fresh train instances: neither
        the bootstrap's demonstrations (the demo seed range's lower half) nor evaluation
        instances. The calibrated bootstrap's probe."""
        from autoretrain.providers.local import LocalChatModel

        catalog = self.catalog
        exclude = catalog.evaluation_hashes(self.settings.evaluation.instances_per_scenario)
        instances = [
            instance
            for scenario in catalog.train_scenarios
            for instance in catalog.reference_instances(scenario.id, per_scenario, exclude)
        ]
        model = LocalChatModel(model_dir, name=model_dir.name)
        return self._greedy_pass_rate(model, instances).by_category

    def _greedy_pass_rate(self, model: ChatModel, instances: list[Any]) -> TierPassRate:
        from collections import defaultdict

        from autoretrain.agents.play import play
        from autoretrain.agents.workflow import WorkflowConfig
        from autoretrain.plugins import verifier_from_settings
        from autoretrain.providers.base import Sampling
        from autoretrain.runs.tracker import RunTracker

        sampling = Sampling(temperature=0.0, max_tokens=self.settings.evaluation.max_tokens)
        tracker = RunTracker(None, model=getattr(model, "name", "model"), traffic="evaluation")
        by_category: dict[str, list[bool]] = defaultdict(list)
        for run in play(
            instances,
            model,
            tracker=tracker,
            tools=self.catalog.registry,
            verifier=verifier_from_settings(self.settings, self.grader),
            workflow=WorkflowConfig(sampling=sampling),
            batch_size=self.settings.evaluation.batch_size,
        ):
            by_category[run.category or "?"].append(run.status == "succeeded")
        results = [ok for oks in by_category.values() for ok in oks]
        return TierPassRate(
            instances=len(results),
            pass_rate=sum(results) / len(results) if results else 0.0,
            by_category={c: round(sum(v) / len(v), 4) for c, v in sorted(by_category.items())},
        )

    def move_slot(
        self,
        version_id: str,
        slot: str,
        *,
        reason: str | None = None,
        evaluation_id: str | None = None,
        actor: str | None = None,
        profile: str | None = None,
    ) -> SlotChange:
        """`deploy`, with what the serving side did. Everything the registry would refuse is
        refused before the target is built or moves (so a bad version id is named before an
        Azure credential is looked for); the registry records the move once the target did it."""
        from autoretrain.deploy.targets import deploy_to_slot, slot_target

        with self.store() as store:
            registry = self.registry(store)
            registry.check_promotable(version_id, slot, profile)
            entry, result = deploy_to_slot(
                registry,
                slot_target(self.settings, profile),
                version_id,
                slot,
                reason=reason,
                evaluation_id=evaluation_id,
                actor=actor,
                profile=profile,
            )
            return SlotChange(entry, result)

    def roll_back_slot(
        self,
        slot: str = "primary",
        *,
        reason: str | None = None,
        actor: str | None = None,
        profile: str | None = None,
    ) -> SlotChange:
        """`rollback`, with what the serving side did; a slot with nothing to roll back to, or
        whose previous version would not load, is refused before the target is built."""
        from autoretrain.deploy.targets import rollback_slot, slot_target

        with self.store() as store:
            registry = self.registry(store)
            previous = registry.rollback_target(slot, profile)
            if previous is not None:
                registry.check_promotable(previous, slot, profile)
            entry, result = rollback_slot(
                registry,
                slot_target(self.settings, profile),
                slot,
                reason=reason,
                actor=actor,
                profile=profile,
            )
            return SlotChange(entry, result)
