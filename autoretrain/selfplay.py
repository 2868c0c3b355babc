"""SelfPlayRunner: keeps the agent working on the scenario catalog so fresh runs keep landing.

Instances are sampled from the catalog's self-play seed range (never the evaluation range),
weighted per category and seeded. A configurable share goes to the canary slot. Local models
answer many runs per forward pass (`run_many` batches their pending requests); HTTP providers
get the same effect from a thread pool of concurrent requests. One batched decoder keeps one
core busy, so a local model can also play in several processes (`workers`), each with its own
copy taking the next chunk of runs when it is free (bench/results/selfplay.md). Every finished
run goes to the landing zone in batches; Ctrl-C stops starting new runs, finishes those in
flight and keeps every finished run.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoretrain.agents.play import play
from autoretrain.agents.workflow import AGENT_VERSION, WorkflowConfig
from autoretrain.providers.base import (
    ChatModel,
)
from autoretrain.runs.archive import BufferedArchive, RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.runs.schema import Run, Traffic
from autoretrain.runs.tracker import RunTracker

log = logging.getLogger(__name__)


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
    by_scenario: Counter = field(default_factory=Counter)
    verified_by_scenario: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    # How the runs were shared out (Allocation.to_dict()), when self-play measured it.
    allocation: dict[str, Any] | None = None

    def scenario_counts(self) -> dict[str, tuple[int, int]]:
        """scenario id → (runs, verified runs), the measurement allocation reads."""
        return {s: (n, self.verified_by_scenario[s]) for s, n in self.by_scenario.items()}

    def add(self, other: SelfPlayReport) -> SelfPlayReport:
        """This report with `other`'s runs added (a pilot and the rest of its round)."""
        self.requested += other.requested
        self.finished += other.finished
        for mine, theirs in (
            (self.by_status, other.by_status),
            (self.by_slot, other.by_slot),
            (self.by_category, other.by_category),
            (self.by_scenario, other.by_scenario),
            (self.verified_by_scenario, other.verified_by_scenario),
        ):
            mine.update(theirs)
        self.files += other.files
        self.seconds += other.seconds
        self.interrupted = self.interrupted or other.interrupted
        return self

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
            **({"allocation": self.allocation} if self.allocation else {}),
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
        workers: int = 1,
        traffic: Traffic = "selfplay",
        progress: bool = True,
        exclude: set[str] | frozenset[str] = frozenset(),
        agent: Any = None,
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
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.traffic = traffic
        self.progress = progress
        # Hashes of evaluation instances: self-play never plays (and so never trains on) them.
        self.exclude = exclude
        # None: the built-in workflow on each target's model; an HttpAgent (settings
        # `agent.kind: http`): the team's own /run, told each target's slot.
        self.agent = agent
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish the runs in flight, start no new ones."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

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

        def count(status: str, category: str | None, scenario_id: str | None) -> None:
            report.finished += 1
            report.by_scenario[scenario_id or "?"] += 1
            if status == "succeeded":
                report.verified_by_scenario[scenario_id or "?"] += 1
            report.by_status[status] += 1
            report.by_slot[target.slot] += 1
            report.by_category[category or "?"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(passed=f"{report.pass_rate:.0%}", refresh=False)

        workers = self._workers_for(target, len(instances))
        if workers == 1:
            for run in self._drive(target, instances, sink, self.workflow, self._stop.is_set):
                count(run.status, run.category, run.scenario_id)
            return
        sink.written += self._play_in_processes(target, instances, sink, workers, count)

    def _drive(
        self,
        target: SlotTarget,
        instances: list,
        sink: BufferedArchive,
        workflow: WorkflowConfig,
        should_stop: Callable[[], bool],
    ) -> Iterator[Run]:
        """Play `instances` on the target's model here, yielding each run as it lands in `sink`."""
        tracker = RunTracker(
            sink,
            self.prices,
            agent_version=AGENT_VERSION,
            provider=target.provider,
            model=target.model.name,
            slot=target.slot,
            traffic=self.traffic,
        )
        yield from play(
            instances,
            target.model,
            tracker=tracker,
            tools=self.tools,
            verifier=self.verifier,
            workflow=workflow,
            batch_size=self.concurrency,
            tags=lambda inst: {"selfplay_seed": str(inst.seed)},
            should_stop=should_stop,
            seed_per_call=True,
            agent=self.agent,
            slot=target.slot,
        )

    def _workers_for(self, target: SlotTarget, n: int) -> int:
        """Processes to play `n` runs in: several only for a local model (a worker loads its own
        copy from the model's recipe) with the catalog's own tools (a worker rebuilds them from
        the catalog folder), and never more than there are chunks of runs to share."""
        if self.workers == 1 or self.agent is not None:
            return 1  # an HTTP agent's concurrency is its own thread pool
        from autoretrain.providers.local import LocalChatModel

        why_not = None
        if not isinstance(target.model, LocalChatModel):
            why_not = "only a local model plays in several processes"
        elif self.tools is not getattr(self.catalog, "registry", None):
            why_not = "worker processes rebuild tools from the catalog; these are not its own"
        if why_not:
            # Documented (settings: other providers ignore it), so not worth a warning each run.
            log.info(
                "self-play: workers=%d ignored (%s); playing in this process",
                self.workers,
                why_not,
            )
            return 1
        return max(1, min(self.workers, -(-n // self.concurrency)))

    def _play_in_processes(
        self,
        target: SlotTarget,
        instances: list,
        sink: BufferedArchive,
        workers: int,
        count: Callable[[str, str | None, str | None], None],
    ) -> list[Any]:
        """Play `instances` here and in `workers - 1` spawned processes, each with its own model
        copy and landing-zone writer. Returns the files the workers wrote (this process's go to
        `sink` as usual).

        The runs are cut into chunks of one batch, and every process takes the next chunk when
        it is free, so a worker still loading its model leaves no one idle at the end. Runs
        that start together also stay in step (similar prompt lengths, fewer padded rows): on
        the embedded model, one process played 2,400 runs at 256 in flight at 99 runs/s in
        chunks against 84 refilled as runs finished. Each chunk samples from a stream derived
        from the seed and its index, so a seed gives the same runs whichever process plays a
        chunk, with any number of workers above one (one process refills its batch instead: an
        equally seeded, different sample).
        """
        size = self.concurrency
        chunks = [instances[i : i + size] for i in range(0, len(instances), size)]
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe under torch and threads
        events = ctx.Queue()
        stop = ctx.Event()
        next_chunk = ctx.Value("i", 0)
        job = _Job(
            catalog_root=self.catalog.root,
            catalog_hash=self.catalog.hash,
            catalog_tools=getattr(self.catalog, "tool_refs", []),
            verifier=self.verifier,
            landing=self.archive.landing,
            slot=target.slot,
            provider=target.provider,
            # Its recipe, not the model: a worker loads its copy after it has read the job.
            model=target.model.recipe(),
            chunks=chunks,
            prices=self.prices,
            workflow=self.workflow,
            concurrency=self.concurrency,
            traffic=self.traffic,
        )
        procs = [
            ctx.Process(target=_worker_main, args=(k, job, next_chunk, events, stop))
            for k in range(1, workers)
        ]
        for proc in procs:
            proc.start()
        files: list[Any] = []
        failures: list[str] = []
        done = 0

        def drain(block: bool) -> None:
            nonlocal done
            if self._stop.is_set():
                stop.set()
            try:
                while True:
                    kind, *payload = events.get(timeout=0.5) if block else events.get_nowait()
                    block = False
                    if kind == "run":
                        count(*payload)
                    elif kind == "files":
                        files.extend(payload[0])
                    elif kind == "error":
                        failures.append(payload[0])
                    elif kind == "done":
                        done += 1
            except queue.Empty:
                pass

        try:
            plays = _play_chunks(
                self, target, chunks, self.workflow, next_chunk, sink, self._stop.is_set
            )
            for run in plays:
                count(run.status, run.category, run.scenario_id)
                drain(block=False)
            while done < len(procs):
                drain(block=True)
                crashed = [p for p in procs if p.exitcode not in (None, 0)]
                if crashed and done + len(crashed) >= len(procs):
                    drain(block=False)  # whatever a crashed worker sent before it died
                    failures += [f"worker exited with code {p.exitcode}" for p in crashed]
                    break
        finally:
            stop.set()
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()
        if failures:
            # Every run a worker finished is in the landing zone already; say what broke.
            raise RuntimeError("self-play worker failed:\n" + "\n".join(failures))
        return files


@dataclass
class _Job:
    """What a worker process needs, as plain data: the model as its recipe (a call that loads
    a copy from its directories), which the worker calls once it has started."""

    catalog_root: Path
    catalog_hash: str
    verifier: Any
    landing: Path
    slot: str
    provider: str
    model: Callable[[], ChatModel]
    chunks: list[list]
    prices: PriceTable | None
    workflow: WorkflowConfig
    concurrency: int
    traffic: Traffic
    # The settings' tools the catalog was loaded with: the worker's copy needs the same ones.
    catalog_tools: list[dict] = field(default_factory=list)


def _play_chunks(
    runner: SelfPlayRunner,
    target: SlotTarget,
    chunks: list[list],
    workflow: WorkflowConfig,
    next_chunk: Any,
    sink: BufferedArchive,
    should_stop: Callable[[], bool],
) -> Iterator[Run]:
    """Take chunks off `next_chunk` until none are left, playing each on its own stream."""
    lock = next_chunk.get_lock()
    while not should_stop():
        # With a timeout: a parent killed while holding the lock never releases it, and a
        # worker waiting on it forever would never see that its parent is gone.
        if not lock.acquire(timeout=1.0):
            continue
        try:
            index = next_chunk.value
            next_chunk.value += 1
        finally:
            lock.release()
        if index >= len(chunks):
            return
        chunk_workflow = replace(workflow, sampling=workflow.sampling.derived(index))
        yield from runner._drive(target, chunks[index], sink, chunk_workflow, should_stop)


def _worker_main(index: int, job: _Job, next_chunk: Any, events: Any, stop: Any) -> None:
    """A worker process: plays chunks and reports each run; Ctrl-C is the parent's to handle
    (it sets `stop`), so the worker ignores SIGINT and finishes its runs in flight.

    A parent that dies without setting `stop` (`kill -9`, a crash) would leave the worker
    playing every chunk left, landing runs nobody asked for any more. So the worker also stops
    when its parent is gone: it finishes the runs in flight, lands them (nothing is lost), and
    exits."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_gone = _parent_watch()

    def should_stop() -> bool:
        return stop.is_set() or parent_gone()

    try:
        from autoretrain.scenarios import load_catalog

        catalog = load_catalog(job.catalog_root, job.catalog_tools)
        if catalog.hash != job.catalog_hash:
            raise RuntimeError(
                f"{job.catalog_root} changed while self-play started (catalog hash "
                f"{catalog.hash}, expected {job.catalog_hash})"
            )
        target = SlotTarget(job.slot, job.model(), job.provider)
        runner = SelfPlayRunner(
            catalog,
            catalog.registry,
            job.verifier,
            RunArchive(job.landing),
            target,
            prices=job.prices,
            concurrency=job.concurrency,
            traffic=job.traffic,
            progress=False,
        )
        with BufferedArchive(runner.archive) as sink:
            try:
                plays = _play_chunks(
                    runner, target, job.chunks, job.workflow, next_chunk, sink, should_stop
                )
                for run in plays:
                    events.put(("run", run.status, run.category, run.scenario_id))
            finally:
                sink.flush()
                events.put(("files", [str(p) for p in sink.written]))
    except BaseException:
        events.put(("error", f"worker {index}: {traceback.format_exc()}"))
    finally:
        events.put(("done",))
        if parent_gone() and hasattr(events, "cancel_join_thread"):
            # Nobody reads the queue any more: exit without waiting to flush it into the pipe.
            events.cancel_join_thread()


def _parent_watch() -> Callable[[], bool]:
    """A check that is true once the process that spawned this one has died. It polls the
    parent's sentinel (a pipe multiprocessing closes when the parent exits, whatever killed
    it), so a recycled pid cannot fool it. Outside a spawned process: never true."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return lambda: False
    return lambda: not parent.is_alive()


def _progress(total: int, enabled: bool) -> Any:
    from autoretrain.progress import progress_bar

    return progress_bar(total, "self-play", "run", enabled)


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
