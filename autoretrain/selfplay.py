"""SelfPlayRunner: keeps the agent working on the scenario catalog so fresh runs keep landing.

Instances are sampled from the catalog's self-play seed range (never the evaluation range),
weighted per category and seeded. A configurable share goes to the canary slot. Local models
answer many runs per forward pass (`run_many` batches their pending requests); HTTP providers
get the same effect from a thread pool of concurrent requests. Every finished run goes to the
landing zone in batches; Ctrl-C stops starting new runs, finishes those in flight and keeps
every finished run.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from autoretrain.agents.workflow import (
    AGENT_VERSION,
    WorkflowConfig,
    agent_run,
    run_many,
    start_run,
)
from autoretrain.providers.base import (
    ChatModel,
    ChatResponse,
    Messages,
    Sampling,
    Tools,
)
from autoretrain.runs.archive import BufferedArchive, RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import Traffic
from autoretrain.runs.tracker import RunTracker

log = logging.getLogger(__name__)


class ConcurrentModel:
    """Answers `chat_batch` with concurrent `chat` calls: the batching of HTTP providers."""

    def __init__(self, model: ChatModel, concurrency: int):
        self.model = model
        self.name = model.name
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency))

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse:
        return self.model.chat(messages, tools, sampling)

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Tools | None],
        sampling: Sampling = Sampling(),
    ) -> list[ChatResponse | Exception]:
        futures = [
            self._pool.submit(self.model.chat, m, t, sampling.derived(i))
            for i, (m, t) in enumerate(zip(conversations, tools, strict=True))
        ]
        out: list[ChatResponse | Exception] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as exc:  # one failed request must not fail its neighbours
                out.append(exc)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class SlotTarget:
    slot: str
    model: ChatModel
    provider: str


@dataclass
class SelfPlayReport:
    requested: int
    finished: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_slot: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def runs_per_second(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0

    @property
    def pass_rate(self) -> float:
        return self.by_status["succeeded"] / self.finished if self.finished else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "finished": self.finished,
            "pass_rate": round(self.pass_rate, 4),
            "runs_per_second": round(self.runs_per_second, 2),
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
            "by_status": dict(self.by_status),
            "by_slot": dict(self.by_slot),
            "by_category": dict(self.by_category),
            "files": self.files,
        }


class SelfPlayRunner:
    def __init__(
        self,
        catalog: Any,
        tools: Any,
        verifier: Any,
        archive: RunArchive,
        primary: SlotTarget,
        *,
        canary: SlotTarget | None = None,
        canary_share: float = 0.0,
        prices: PriceTable | None = None,
        workflow: WorkflowConfig = WorkflowConfig(),
        concurrency: int = 64,
        traffic: Traffic = "selfplay",
        progress: bool = True,
        exclude: set[str] | frozenset[str] = frozenset(),
    ):
        if canary_share and canary is None:
            raise ValueError("canary_share > 0 needs a model in the canary slot")
        self.catalog = catalog
        self.tools = tools
        self.verifier = verifier
        self.archive = archive
        self.targets = [primary] + ([canary] if canary else [])
        self.canary_share = canary_share if canary else 0.0
        self.prices = prices
        self.workflow = workflow
        self.concurrency = concurrency
        self.traffic = traffic
        self.progress = progress
        # Hashes of evaluation instances: self-play never plays (and so never trains on) them.
        self.exclude = exclude
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish the runs in flight, start no new ones."""
        self._stop.set()

    def run(
        self,
        n: int,
        seed: int = 0,
        weights: dict[str, float] | None = None,
        instances: list | None = None,
    ) -> SelfPlayReport:
        instances = (
            instances
            if instances is not None
            else self.catalog.selfplay_instances(
                n, seed=seed, weights=weights, exclude=self.exclude
            )
        )
        report = SelfPlayReport(requested=len(instances))
        started = time.perf_counter()
        by_target: dict[str, list] = {t.slot: [] for t in self.targets}
        for inst in instances:
            by_target[self._slot_for(inst, seed)].append(inst)

        bar = _progress(len(instances), self.progress)
        previous = _install_sigint(self.stop)
        try:
            with BufferedArchive(self.archive) as sink:
                for target in self.targets:
                    self._play(target, by_target[target.slot], sink, report, bar)
                    if self._stop.is_set():
                        break
                sink.flush()
                report.files = [str(p) for p in sink.written]
        finally:
            _restore_sigint(previous)
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - started
        report.interrupted = self._stop.is_set() and report.finished < report.requested
        return report

    def _slot_for(self, instance: Any, seed: int) -> str:
        if self.canary_share <= 0:
            return self.targets[0].slot
        # Deterministic per instance and seed, so a rerun splits traffic the same way.
        digest = hashlib.sha256(
            f"{seed}:{instance.instance_hash}:{instance.seed}".encode()
        ).digest()
        return self.targets[1].slot if digest[0] / 256 < self.canary_share else self.targets[0].slot

    def _play(
        self,
        target: SlotTarget,
        instances: list,
        sink: BufferedArchive,
        report: SelfPlayReport,
        bar: Any,
    ) -> None:
        if not instances:
            return
        tracker = RunTracker(
            sink,
            self.prices,
            agent_version=AGENT_VERSION,
            provider=target.provider,
            model=target.model.name,
            slot=target.slot,
            traffic=self.traffic,
        )
        model = target.model
        pooled = None
        if not _batches_natively(model):
            pooled = model = ConcurrentModel(model, self.concurrency)
        sampling = self.workflow.sampling
        agents = (
            agent_run(
                inst,
                start_run(tracker, inst, tags={"selfplay_seed": str(inst.seed)}),
                self.tools,
                self.verifier,
                self.workflow,
            )
            for inst in instances
        )
        try:
            for run in run_many(
                agents,
                model,
                sampling,
                batch_size=self.concurrency,
                should_stop=self._stop.is_set,
                seed_per_call=True,
            ):
                report.finished += 1
                report.by_status[run.status] += 1
                report.by_slot[target.slot] += 1
                report.by_category[run.category or "?"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(passed=f"{report.pass_rate:.0%}", refresh=False)
        finally:
            if pooled is not None:
                pooled.close()


def _batches_natively(model: Any) -> bool:
    """Only providers that declare it (local models: shared forward passes) get whole batches;
    every other provider answers through a thread pool, so one failed request fails one run,
    not its batch-mates."""
    return bool(getattr(model, "native_batching", False))


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # A bar on a terminal; on a pipe or in a log, tqdm's occasional lines are enough.
    return tqdm(
        total=total, desc="self-play", unit="run", disable=None, file=sys.stderr, mininterval=1.0
    )


def _install_sigint(stop: Any) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        log.warning(
            "Ctrl-C: finishing runs in flight and keeping every finished run (again to abort)"
        )
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
