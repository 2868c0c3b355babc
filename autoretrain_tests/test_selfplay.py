"""SelfPlayRunner over the real catalog, tools, verifier, landing zone and run store."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from autoretrain.agents.verifier import VerifierAgent
from autoretrain.project import Project
from autoretrain.providers.base import ChatResponse
from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.store import RunStore
from autoretrain.scenarios import SEED_RANGES, load_catalog
from autoretrain.selfplay import SelfPlayRunner, SlotTarget


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("scenarios")


class ReferencePlayer:
    """Answers with the reference solution, except for instances whose seed is odd, where the
    final answer is wrong: a deterministic stand-in for a half-right model."""

    name = "reference-player"

    def __init__(self, catalog):
        self.catalog = catalog
        self.lock = threading.Lock()
        self.calls = 0

    def chat(self, messages, tools=None, sampling=None):
        with self.lock:
            self.calls += 1
        inst = self._instance(messages)
        ref = [m for m in inst.reference_messages() if m["role"] == "assistant"]
        turn = sum(1 for m in messages if m["role"] == "assistant")
        reply = dict(ref[min(turn, len(ref) - 1)])
        if not reply.get("tool_calls") and inst.seed % 2:
            reply["content"] = "I am not sure."
        return ChatResponse(message=reply, prompt_tokens=10, completion_tokens=5)

    def _instance(self, messages):
        return self.by_prompt[messages[1]["content"]]


def runner_for(settings, catalog, model, **kw):
    return SelfPlayRunner(
        catalog,
        catalog.registry,
        VerifierAgent(),
        RunArchive(settings.paths.landing),
        SlotTarget("primary", model, "test"),
        progress=False,
        **kw,
    )


def test_200_runs_land_and_ingest_with_nothing_quarantined(settings, catalog):
    instances = catalog.selfplay_instances(200, seed=1)
    lo, hi = SEED_RANGES["selfplay"]
    assert all(lo <= i.seed < hi and i.split == "train" for i in instances)
    model = ReferencePlayer(catalog)
    model.by_prompt = {i.user_prompt: i for i in instances}
    report = runner_for(settings, catalog, model, concurrency=16).run(
        200, seed=1, instances=instances
    )
    assert report.finished == 200 and report.by_slot == {"primary": 200}
    assert 0 < report.by_status["succeeded"] < 200  # odd seeds answer wrongly, then recover or not
    archive = RunArchive(settings.paths.landing)
    summary = Project(settings).ingest_days(archive.days())
    assert summary.read == 200 and summary.quarantined == 0
    with RunStore.from_settings(settings, read_only=True) as store:
        runs = store.runs()
    assert runs.height == 200 and set(runs["traffic"]) == {"selfplay"}


def test_canary_share_splits_traffic_deterministically(settings, catalog):
    instances = catalog.selfplay_instances(100, seed=2)
    primary, canary = ReferencePlayer(catalog), ReferencePlayer(catalog)
    primary.by_prompt = canary.by_prompt = {i.user_prompt: i for i in instances}
    runner = runner_for(
        settings, catalog, primary, canary=SlotTarget("canary", canary, "test"), canary_share=0.3
    )
    report = runner.run(100, seed=2, instances=instances)
    assert report.by_slot["primary"] + report.by_slot["canary"] == 100
    assert 15 <= report.by_slot["canary"] <= 45
    again = runner_for(
        settings, catalog, primary, canary=SlotTarget("canary", canary, "test"), canary_share=0.3
    ).run(100, seed=2, instances=instances)
    assert again.by_slot == report.by_slot


def test_endpoint_down_records_every_run_and_the_runner_goes_on(settings, catalog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAICompatibleChatModel(
        "ghost", f"http://127.0.0.1:{port}/v1", timeout_s=2, max_retries=1, backoff_s=0.01
    )
    report = runner_for(settings, catalog, model, concurrency=4).run(6, seed=3)
    assert report.finished == 6 and report.by_status == {"error": 6}
    summary = Project(settings).ingest_days(RunArchive(settings.paths.landing).days())
    assert summary.inserted == 6 and summary.quarantined == 0
    with RunStore.from_settings(settings, read_only=True) as store:
        (run, *_) = list(store.records())
    errors = [e.payload["error"] for e in run.events if e.type == "error"]
    assert errors and "ghost" in errors[0]


def test_stop_keeps_finished_runs(settings, catalog):
    instances = catalog.selfplay_instances(50, seed=4)
    model = ReferencePlayer(catalog)
    model.by_prompt = {i.user_prompt: i for i in instances}
    runner = runner_for(settings, catalog, model, concurrency=5)
    original = model.chat

    def chat_then_stop(*args, **kw):
        if model.calls == 12:
            runner.stop()  # what Ctrl-C does
        return original(*args, **kw)

    model.chat = chat_then_stop
    report = runner.run(50, seed=4, instances=instances)
    assert report.interrupted and 0 < report.finished < 50
    landed = sum(
        len(f.read_text().splitlines())
        for d in RunArchive(settings.paths.landing).days()
        for f in RunArchive(settings.paths.landing).files(d)
    )
    assert landed == report.finished


def _landed(landing) -> list[dict]:
    import json

    archive = RunArchive(landing)
    return [
        json.loads(line)
        for day in archive.days()
        for f in archive.files(day)
        for line in f.read_text().splitlines()
    ]


def test_sampled_self_play_is_reproducible_for_a_seed(settings, catalog, tmp_path_factory):
    """Temperature > 0 on a real local model: the same seed gives the same transcripts,
    whatever the process did before; another seed gives others."""
    import json

    import torch

    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.base import Sampling
    from autoretrain.providers.local import LocalChatModel
    from autoretrain_tests.providers.tiny_models import cached_untrained_model

    model = LocalChatModel(cached_untrained_model(tmp_path_factory))
    instances = catalog.selfplay_instances(12, seed=3)

    def transcripts(seed: int, landing, global_seed: int) -> list[str]:
        torch.manual_seed(global_seed)  # torch's global stream must not matter
        SelfPlayRunner(
            catalog,
            catalog.registry,
            VerifierAgent(),
            RunArchive(landing),
            SlotTarget("primary", model, "local"),
            workflow=WorkflowConfig(sampling=Sampling(temperature=1.0, max_tokens=8, seed=seed)),
            concurrency=4,
            progress=False,
        ).run(12, seed=3, instances=instances)
        records = _landed(landing)
        assert len(records) == 12
        return sorted(json.dumps([r["instance_hash"], r["messages"]]) for r in records)

    first = transcripts(5, tmp_path_factory.mktemp("a"), global_seed=1)
    assert first == transcripts(5, tmp_path_factory.mktemp("b"), global_seed=2)
    assert first != transcripts(6, tmp_path_factory.mktemp("c"), global_seed=1)


def test_a_local_model_plays_in_worker_processes(settings, catalog, tmp_path_factory):
    """workers > 1: spawned processes load their own copy of the model and take chunks of the
    runs as they come free (here the parent may well play them all before a worker has
    started). Every run lands once, and a seed gives the same sampled runs with 2 or 3
    workers, whichever process played a chunk. (Whether greedy runs match one process's is the
    bench's question, on a trained model: an untrained one's near-ties flip with batch shape.)"""
    import json

    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.base import Sampling
    from autoretrain.providers.local import LocalChatModel
    from autoretrain_tests.providers.tiny_models import cached_untrained_model

    model = LocalChatModel(cached_untrained_model(tmp_path_factory))
    instances = catalog.selfplay_instances(24, seed=3)

    def play(workers: int) -> list[str]:
        landing = tmp_path_factory.mktemp("landing")
        report = SelfPlayRunner(
            catalog,
            catalog.registry,
            VerifierAgent(),
            RunArchive(landing),
            SlotTarget("primary", model, "local"),
            workflow=WorkflowConfig(sampling=Sampling(temperature=1.0, max_tokens=8, seed=5)),
            concurrency=4,
            workers=workers,
            progress=False,
        ).run(24, seed=3, instances=instances)
        records = _landed(landing)
        assert report.finished == len(records) == 24
        assert sorted(r["instance_hash"] for r in records) == sorted(
            i.instance_hash for i in instances
        )
        assert sum(report.by_status.values()) == 24 and report.by_slot == {"primary": 24}
        return sorted(json.dumps([r["instance_hash"], r["messages"]]) for r in records)

    assert play(workers=2) == play(workers=3)


def test_a_worker_plays_the_chunks_left_with_its_own_model_copy(
    settings, catalog, tmp_path_factory
):
    """The worker's side, in this process: the job pickles (the model as its recipe) and the
    worker takes every chunk left after the first, reports each run and the files it wrote,
    and says it is done."""
    import multiprocessing
    import pickle
    import queue
    import signal

    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.base import Sampling
    from autoretrain.providers.local import LocalChatModel
    from autoretrain.selfplay import _Job, _worker_main
    from autoretrain_tests.providers.tiny_models import cached_untrained_model

    model = LocalChatModel(cached_untrained_model(tmp_path_factory), max_batch_size=3)
    instances = catalog.selfplay_instances(9, seed=2)
    job = _Job(
        catalog_root=catalog.root,
        catalog_hash=catalog.hash,
        verifier=VerifierAgent(),
        landing=settings.paths.landing,
        slot="primary",
        provider="local",
        model=model.recipe(),
        chunks=[instances[:3], instances[3:6], instances[6:]],
        prices=None,
        workflow=WorkflowConfig(sampling=Sampling(temperature=0.0, max_tokens=6)),
        concurrency=3,
        traffic="selfplay",
    )
    copy = pickle.loads(pickle.dumps(job))
    assert copy.model().max_batch_size == 3  # the recipe loads an equal copy
    events: queue.Queue = queue.Queue()
    previous = signal.getsignal(signal.SIGINT)
    try:
        _worker_main(1, copy, multiprocessing.Value("i", 1), events, threading.Event())
    finally:
        signal.signal(signal.SIGINT, previous)
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [k for k, *_ in got].count("run") == 6 and got[-1] == ("done",)
    (files,) = [payload[0] for kind, *payload in got if kind == "files"]
    landed = _landed(settings.paths.landing)
    assert len(landed) == 6 and files
    assert {r["instance_hash"] for r in landed} == {i.instance_hash for i in instances[3:]}


def test_workers_fall_back_to_one_process_for_other_providers(settings, catalog, caplog):
    caplog.set_level(logging.INFO, logger="autoretrain.selfplay")  # documented: info, not warning
    instances = catalog.selfplay_instances(20, seed=6)
    model = ReferencePlayer(catalog)
    model.by_prompt = {i.user_prompt: i for i in instances}
    report = runner_for(settings, catalog, model, concurrency=4, workers=2).run(
        20, seed=6, instances=instances
    )
    assert report.finished == 20 and len(_landed(settings.paths.landing)) == 20
    assert "only a local model plays in several processes" in caplog.text
    with pytest.raises(ValueError, match="workers must be at least 1"):
        runner_for(settings, catalog, model, workers=0)


def test_a_failing_worker_reports_what_broke(settings, catalog, tmp_path):
    """A worker whose catalog folder is gone says so (and that it is done) instead of hanging
    its parent."""
    import multiprocessing
    import queue
    import signal

    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.selfplay import _Job, _worker_main

    events: queue.Queue = queue.Queue()
    job = _Job(
        catalog_root=tmp_path / "no-such-catalog",
        catalog_hash=catalog.hash,
        verifier=VerifierAgent(),
        landing=tmp_path / "landing",
        slot="primary",
        provider="test",
        model=lambda: ReferencePlayer(catalog),
        chunks=[catalog.selfplay_instances(2, seed=1)],
        prices=None,
        workflow=WorkflowConfig(),
        concurrency=2,
        traffic="selfplay",
    )
    previous = signal.getsignal(signal.SIGINT)
    try:
        _worker_main(1, job, multiprocessing.Value("i", 0), events, threading.Event())
        # A worker leaves Ctrl-C to its parent.
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    kinds = [events.get_nowait() for _ in range(events.qsize())]
    assert kinds[-1] == ("done",)
    (error,) = [payload for kind, *payload in kinds if kind == "error"]
    assert "worker 1" in error[0] and "no-such-catalog" in error[0]


PARENT_SCRIPT = """
import sys

from autoretrain.agents.verifier import VerifierAgent
from autoretrain.agents.workflow import WorkflowConfig
from autoretrain.providers.base import Sampling
from autoretrain.providers.local import LocalChatModel
from autoretrain.runs.archive import RunArchive
from autoretrain.scenarios import load_catalog
from autoretrain.selfplay import SelfPlayRunner, SlotTarget


class Watched(SelfPlayRunner):
    # Says on stdout when a worker's run has reached this process: the worker is playing.
    own = 0

    def _drive(self, *args, **kwargs):
        for run in super()._drive(*args, **kwargs):
            Watched.own += 1
            yield run

    def _play_in_processes(self, target, instances, sink, workers, count):
        seen = [0]

        def counted(status, category, scenario_id):
            count(status, category, scenario_id)
            seen[0] += 1
            if seen[0] > Watched.own:
                print("worker-run", flush=True)

        return super()._play_in_processes(target, instances, sink, workers, counted)


if __name__ == "__main__":
    catalog_dir, landing, model_dir, n = sys.argv[1:5]
    catalog = load_catalog(catalog_dir)
    Watched(
        catalog,
        catalog.registry,
        VerifierAgent(),
        RunArchive(landing),
        SlotTarget("primary", LocalChatModel(model_dir), "local"),
        workflow=WorkflowConfig(sampling=Sampling(temperature=1.0, max_tokens=8, seed=5)),
        concurrency=8,
        workers=2,
        progress=False,
    ).run(int(n), seed=4)
"""


@pytest.mark.integration  # two real processes loading torch: about a minute on 2 busy cores
def test_a_worker_stops_when_its_parent_is_killed(catalog, tmp_path, tmp_path_factory):
    """kill -9 of a self-play process: its worker finishes the runs in flight, lands them, and
    exits within seconds, instead of playing every chunk left (issue 21: 20 more seconds of
    runs landing after the kill)."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from autoretrain_tests.providers.tiny_models import cached_untrained_model

    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    landing = tmp_path / "landing"
    n = 20000  # far more than the worker plays in the time allowed below
    parent = subprocess.Popen(
        [sys.executable, str(script), str(catalog.root), str(landing)]
        + [str(cached_untrained_model(tmp_path_factory)), str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    workers: list[psutil.Process] = []
    try:
        # The worker has played runs and its parent has counted them: it is mid-play.
        ready, _, _ = select.select([parent.stdout], [], [], 300)
        assert ready, "no worker run within 300 s"
        assert parent.stdout.readline().strip() == "worker-run", "the worker never played"
        workers = [
            p
            for p in psutil.Process(parent.pid).children()
            if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(workers) == 1
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        killed = time.monotonic()
        while time.monotonic() - killed < 60 and _running(workers[0]):
            time.sleep(0.2)
        stopped_after = time.monotonic() - killed
        assert not _running(workers[0]), "the worker still runs 60 s after its parent died"
        landed = _landed(landing)
        # What it played before it saw the parent go is kept; it did not play on to the end.
        assert 0 < len(landed) < n / 4, len(landed)
        time.sleep(1.0)
        assert len(_landed(landing)) == len(landed)  # nothing lands after it exited
        print(f"worker exited {stopped_after:.1f} s after its parent's kill -9")
    finally:
        for proc in [*workers]:
            if _running(proc):
                proc.kill()
        if parent.poll() is None:
            parent.kill()


def _running(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
