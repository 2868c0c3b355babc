"""SelfPlayRunner over the real catalog, tools, verifier, landing zone and run store."""

from __future__ import annotations

import socket
import threading

import pytest

from autoretrain import stages
from autoretrain.agents.verifier import VerifierAgent
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
    summary = stages.ingest_days(settings, archive.days())
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
    summary = stages.ingest_days(settings, RunArchive(settings.paths.landing).days())
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
        archive = RunArchive(landing)
        records = [
            json.loads(line)
            for day in archive.days()
            for f in archive.files(day)
            for line in f.read_text().splitlines()
        ]
        assert len(records) == 12
        return sorted(json.dumps([r["instance_hash"], r["messages"]]) for r in records)

    first = transcripts(5, tmp_path_factory.mktemp("a"), global_seed=1)
    assert first == transcripts(5, tmp_path_factory.mktemp("b"), global_seed=2)
    assert first != transcripts(6, tmp_path_factory.mktemp("c"), global_seed=1)
