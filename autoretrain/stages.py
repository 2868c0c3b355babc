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
    concurrency: int = 64,
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
    from autoretrain.providers.factory import chat_model_for
    from autoretrain.runs.pricing import PriceTable
    from autoretrain.scenarios import load_catalog
    from autoretrain.selfplay import SelfPlayRunner, SlotTarget

    cfg = settings.selfplay
    catalog = load_catalog(settings.scenarios_dir)
    share = cfg.canary_share if canary_share is None else canary_share
    primary = SlotTarget(slot, primary_model or chat_model_for(settings, slot), settings.provider)
    canary = None
    if share > 0:
        canary = SlotTarget(
            "canary", canary_model or chat_model_for(settings, "canary"), settings.provider
        )
    runner = SelfPlayRunner(
        catalog,
        catalog.registry,
        VerifierAgent(),
        RunArchive(settings.paths.landing),
        primary,
        canary=canary,
        canary_share=share,
        prices=PriceTable.from_settings(settings),
        workflow=WorkflowConfig(
            sampling=Sampling(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        ),
        concurrency=concurrency,
        progress=progress,
        exclude=catalog.evaluation_hashes(settings.evaluation.instances_per_scenario),
    )
    return runner.run(
        n, seed=cfg.seed if seed is None else seed, weights=cfg.category_weights or None
    )
