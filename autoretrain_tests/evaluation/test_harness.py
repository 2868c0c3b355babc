"""The replay harness over the real catalog, workflow, tools, verifier and landing zone.

Statistical cases use `ReferenceModel`, a deterministic model that follows each instance's
reference solution when the instance's own fixed uniform draw is below its skill (so a more
skilled model passes a superset of a less skilled one's instances). The plumbing cases use the
real tiny embedded model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import pytest

from autoretrain.evaluation.compare import RESULT_COLUMNS, compare
from autoretrain.evaluation.harness import ReplaySetup, evaluate, replay
from autoretrain.project import Project
from autoretrain.providers.base import ChatResponse, ProviderError, Sampling, SequentialBatchMixin
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import Run
from autoretrain.scenarios import load_catalog, prompt_hash
from autoretrain.settings import Settings, load_settings


def setup(settings: Settings) -> ReplaySetup:
    """What the harness takes from these settings, as the project hands it over."""
    return Project(settings).replay_setup()


class ReferenceModel(SequentialBatchMixin):
    """Answers an instance with its reference tool calls and answer when the instance's
    draw (sha256 of `salt` and its hash, in [0, 1)) is below `skill`; otherwise says it does
    not know. `skill` may map categories to their own skill. It knows the evaluation instances
    and any `extra` ones (self-play)."""

    native_batching = True  # in-process and instant: no thread pool

    def __init__(self, catalog, skill, name, *, salt: str = "", extra=(), latency_s=0.001):
        self.name = name
        self.skill = skill
        self.salt = salt
        self.latency_s = latency_s
        self.instances = {}
        for tier in ("in_distribution", "held_out"):
            for per in (70, 30, 10, 3, 2, 1):
                for inst in catalog.eval_instances(tier, per):
                    self.instances[inst.instance_hash] = inst
        for inst in extra:
            self.instances[inst.instance_hash] = inst
        self.samplings: list[Sampling] = []

    def knows(self, inst) -> bool:
        digest = hashlib.sha256(f"{self.salt}:{inst.instance_hash}".encode()).hexdigest()
        skill = self.skill.get(inst.category, 0.0) if isinstance(self.skill, dict) else self.skill
        return int(digest[:8], 16) / 2**32 < skill

    def chat(self, messages, tools=None, sampling=Sampling()):
        self.samplings.append(sampling)
        inst = self.instances.get(prompt_hash(messages[0]["content"], messages[1]["content"]))
        if inst is None:
            raise ProviderError("ReferenceModel: unknown instance")
        made = sum(1 for m in messages if m["role"] == "assistant" and m.get("tool_calls"))
        if self.knows(inst) and made < len(inst.reference_calls):
            call = inst.reference_calls[made]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{made}",
                        "type": "function",
                        "function": {
                            "name": call["name"],
                            "arguments": json.dumps(call["arguments"]),
                        },
                    }
                ],
            }
        else:
            answer = inst.reference_answer if self.knows(inst) else "I do not know."
            message = {"role": "assistant", "content": answer}
        return ChatResponse(
            message=message,
            prompt_tokens=20,
            completion_tokens=6,
            latency_s=self.latency_s,
            model=self.name,
        )


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("scenarios")


def stored_runs(settings) -> list[Run]:
    archive = RunArchive(settings.paths.landing)
    return [
        Run.model_validate_json(line)
        for day in archive.days()
        for path in archive.files(day)
        for line in path.read_text().splitlines()
    ]


def gate(comparison, name):
    return next(g for g in comparison.reasons if g.name == name)


# ---------------------------------------------------------------- decisions (deterministic model)


def test_a_better_candidate_is_promoted_at_the_default_size(settings, catalog):
    incumbent = ReferenceModel(catalog, 0.5, "v1")
    candidate = ReferenceModel(catalog, 0.55, "v2")
    # Both models answer instantly: their latency ratio is the machine's load, not the model.
    relaxed = settings.model_copy(update={"lifts": {"default": {"max_latency_ratio": 1000.0}}})
    comparison = evaluate(incumbent, candidate, catalog, setup(relaxed), progress=False)
    assert comparison.promoted, [(g.name, g.detail) for g in comparison.failed_gates]
    lift = gate(comparison, "in_distribution_lift")
    # The default size reaches significance for a ~5-point paired lift with room to spare.
    assert 0.03 <= lift.value <= 0.08
    assert gate(comparison, "in_distribution_significance").value < 1e-6
    ind = next(
        p for p in comparison.paired if p["tier"] == "in_distribution" and p["category"] == "*"
    )
    assert ind["instances"] > 1500 and ind["incumbent_better"] == 0


def test_an_identical_candidate_is_rejected_for_no_lift(settings, catalog):
    model = ReferenceModel(catalog, 0.6, "v1")
    comparison = evaluate(
        model,
        model,
        catalog,
        setup(settings),
        incumbent_name="v1",
        candidate_name="v1-again",
        instances_per_scenario=10,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert gate(comparison, "in_distribution_lift").value == 0.0
    assert gate(comparison, "in_distribution_lift").passed is False
    assert gate(comparison, "in_distribution_significance").passed is False


def test_a_candidate_worse_in_one_category_is_rejected(settings, catalog):
    categories = catalog.categories()
    incumbent = ReferenceModel(catalog, dict.fromkeys(categories, 0.4), "v1")
    better = dict.fromkeys(categories, 0.6) | {"lookup": 0.2}
    comparison = evaluate(
        incumbent,
        ReferenceModel(catalog, better, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=30,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert gate(comparison, "in_distribution_lift").passed is True
    category = gate(comparison, "category_regression")
    assert category.passed is False and "lookup" in category.detail


def test_an_empty_evaluation_is_rejected(settings, catalog):
    model = ReferenceModel(catalog, 0.9, "v1")
    comparison = evaluate(
        model,
        ReferenceModel(catalog, 1.0, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=0,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert gate(comparison, "non_empty").passed is False
    assert stored_runs(settings) == []


def test_a_candidate_whose_provider_fails_every_call_is_rejected_with_the_reason(settings, catalog):
    down = ScriptedModel([], name="v2", default=ProviderError("connection refused by 127.0.0.1:9"))
    comparison = evaluate(
        ReferenceModel(catalog, 0.5, "v1"),
        down,
        catalog,
        setup(settings),
        instances_per_scenario=3,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert [g.name for g in comparison.reasons] == ["evaluation_ran"]
    detail = comparison.reasons[0].detail
    assert "candidate 'v2'" in detail and "connection refused" in detail
    assert "of" in detail and "failed at the provider" in detail
    # The failed runs are still on record, as evaluation traffic.
    runs = stored_runs(settings)
    candidate_runs = [r for r in runs if r.tags["role"] == "candidate"]
    assert candidate_runs and all(r.status == "error" for r in candidate_runs)


def test_an_incumbent_whose_provider_fails_is_rejected_too(settings, catalog):
    down = ScriptedModel([], name="v1", default=ProviderError("HTTP 503"))
    comparison = evaluate(
        down,
        ReferenceModel(catalog, 0.9, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=3,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert "incumbent 'v1'" in comparison.reasons[0].detail


class Flaky(ReferenceModel):
    """Fails at the provider on a fixed tenth of the instances; like an HTTP provider, one
    failed request fails only its own conversation (the harness pools it)."""

    native_batching = False

    def chat(self, messages, tools=None, sampling=Sampling()):
        digest = hashlib.sha256(
            prompt_hash(messages[0]["content"], messages[1]["content"]).encode()
        )
        if digest.digest()[0] < 26:
            raise ProviderError("HTTP 502 after 3 retries")
        return super().chat(messages, tools, sampling)


def test_provider_failures_below_the_limit_never_help_the_candidate(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    settings = load_settings(
        config_file=tmp_path / "absent.yaml", evaluation={"max_provider_error_rate": 0.2}
    )
    # A flaky incumbent: its failed instances are dropped for both models, not credited.
    result = replay(
        Flaky(catalog, 0.5, "v1"),
        ReferenceModel(catalog, 0.5, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=10,
        progress=False,
    )
    assert result.error is None and result.dropped == result.provider_failures["incumbent"] > 0
    assert len(result.rows) == 2 * (sum(result.instances.values()) - result.dropped)
    comparison = compare(result.rows, candidate="v2", incumbent="v1")
    assert gate(comparison, "in_distribution_lift").value == 0.0
    assert any("dropped for both models" in note for note in result.notes)
    # A flaky candidate: its failed runs stay in, as failures.
    result = replay(
        ReferenceModel(catalog, 0.5, "v1"),
        Flaky(catalog, 0.5, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=10,
        progress=False,
    )
    assert result.dropped == 0 and result.provider_failures["candidate"] > 0
    assert len(result.rows) == 2 * sum(result.instances.values())
    comparison = compare(result.rows, candidate="v2", incumbent="v1")
    assert gate(comparison, "in_distribution_lift").value < 0


def test_a_broken_harness_is_a_reject_not_a_crash(settings, catalog):
    landing = settings.paths.landing
    landing.parent.mkdir(parents=True)
    landing.write_text("not a folder")  # the landing zone cannot be written
    comparison = evaluate(
        ReferenceModel(catalog, 0.5, "v1"),
        ReferenceModel(catalog, 1.0, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=3,
        progress=False,
    )
    assert comparison.decision == "reject"
    assert comparison.reasons[0].name == "evaluation_ran"
    assert "evaluation failed" in comparison.reasons[0].detail


def test_several_samples_share_seeds_and_use_the_configured_temperature(
    catalog, tmp_path, monkeypatch
):
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    settings = load_settings(
        config_file=tmp_path / "absent.yaml",
        evaluation={"samples_per_instance": 2, "temperature": 0.7, "seed": 5},
    )
    incumbent, candidate = ReferenceModel(catalog, 0.5, "v1"), ReferenceModel(catalog, 0.6, "v2")
    result = replay(
        incumbent, candidate, catalog, setup(settings), instances_per_scenario=2, progress=False
    )
    assert {(s.temperature, s.seed) for s in incumbent.samplings} == {
        (s.temperature, s.seed) for s in candidate.samplings
    }
    assert {s.temperature for s in incumbent.samplings} == {0.7}
    assert len({s.seed for s in incumbent.samplings}) == 2
    cells = Counter((r["tier"], r["instance_hash"], r["sample"]) for r in result.rows)
    assert set(cells.values()) == {2}  # each instance sample answered by both roles
    assert {r["sample"] for r in result.rows} == {0, 1}
    # One sample is greedy.
    greedy = ReferenceModel(catalog, 0.5, "v1")
    replay(
        greedy,
        greedy,
        catalog,
        setup(load_settings(config_file=tmp_path / "absent.yaml")),
        instances_per_scenario=1,
        progress=False,
    )
    assert {s.temperature for s in greedy.samplings} == {0.0}


def test_rows_have_the_comparison_columns_and_a_frame(settings, catalog):
    result = replay(
        ReferenceModel(catalog, 0.5, "v1"),
        ReferenceModel(catalog, 0.5, "v2"),
        catalog,
        setup(settings),
        instances_per_scenario=1,
        progress=False,
    )
    assert all(tuple(row) == RESULT_COLUMNS for row in result.rows)
    frame = result.frame()
    assert frame.columns == list(RESULT_COLUMNS) and frame.height == len(result.rows)
    assert compare(frame, candidate="v2", incumbent="v1").reasons[0].passed is True


# ---------------------------------------------------------------- the real tiny model


@pytest.fixture(scope="module")
def tiny_model(catalog, tmp_path_factory):
    """The tiny embedded model, untrained: enough for plumbing, and deterministic when greedy.
    (That training makes it better is the loop test's business, where training time is paid
    once.)"""
    from autoretrain.training.base_model import build_untrained_model
    from autoretrain.training.bootstrap import demonstration_records
    from autoretrain.training.chat_format import render

    demos, _ = demonstration_records(catalog, 4, 0, catalog.evaluation_hashes(70))
    corpus = [render(r["messages"], r["tools"]) for r in demos]
    return build_untrained_model(
        tmp_path_factory.mktemp("tiny") / "v0",
        corpus,
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=600,
    )


@pytest.mark.integration
def test_real_model_identical_candidate_is_rejected_and_runs_land_as_evaluation(
    tiny_model, catalog, tmp_path, monkeypatch
):
    from autoretrain.providers.local import LocalChatModel

    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    # Short turns keep an untrained model's rambling cheap; the workflow is unchanged.
    settings = load_settings(config_file=tmp_path / "absent.yaml", evaluation={"max_tokens": 8})
    incumbent = LocalChatModel(tiny_model, name="v0")
    candidate = LocalChatModel(tiny_model, name="v0-copy")  # the same model directory
    comparison = evaluate(
        incumbent, candidate, catalog, setup(settings), instances_per_scenario=1, progress=False
    )
    assert comparison.decision == "reject"
    assert gate(comparison, "in_distribution_lift").value == 0.0
    assert gate(comparison, "in_distribution_lift").passed is False

    runs = stored_runs(settings)
    expected = {t: catalog.eval_instances(t, 1) for t in ("in_distribution", "held_out")}
    assert len(runs) == 2 * sum(len(v) for v in expected.values())
    assert {r.traffic for r in runs} == {"evaluation"}
    assert {r.tags["evaluation_id"] for r in runs} == {comparison.evaluation_id}
    assert {r.slot for r in runs} == {None}
    transcripts = defaultdict(dict)
    for r in runs:
        assert r.model == ("v0" if r.tags["role"] == "incumbent" else "v0-copy")
        assert r.tags["sample"] == "0"
        transcripts[(r.tags["tier"], r.instance_hash)][r.tags["role"]] = [
            m.model_dump(exclude={"tool_calls"}) for m in r.messages
        ]
    for tier, instances in expected.items():
        assert {h for t, h in transcripts if t == tier} == {i.instance_hash for i in instances}
    # Same instances, same greedy sampling, same weights: the same conversation, turn by turn.
    for pair in transcripts.values():
        assert pair["incumbent"] == pair["candidate"]


def test_reference_model_is_deterministic(catalog):
    # The statistical tests above rely on it: the same instance, the same verdict, every time.
    a, b = ReferenceModel(catalog, 0.5, "a"), ReferenceModel(catalog, 0.5, "b")
    instances = catalog.eval_instances("in_distribution", 3)
    assert [a.knows(i) for i in instances] == [b.knows(i) for i in instances]
    assert 0.3 < sum(a.knows(i) for i in instances) / len(instances) < 0.7


def test_http_providers_are_pooled_and_local_batchers_are_not(catalog):
    from autoretrain.agents.play import ConcurrentModel, driven
    from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel

    # Its own chat_batch raises for the whole batch when one request fails: pool it instead.
    http = OpenAICompatibleChatModel("m", base_url="http://127.0.0.1:9/v1")
    with driven(http, 8) as model:
        assert isinstance(model, ConcurrentModel) and model.model is http
    native = ReferenceModel(catalog, 0.5, "v1")
    with driven(native, 8) as model:
        assert model is native
