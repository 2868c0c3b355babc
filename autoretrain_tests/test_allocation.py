"""Measured allocation (#20): self-play goes where a verified run teaches the most; scenarios
the incumbent never solves get an exploration share, reference demonstrations in the dataset,
or a teacher model; a rejected round's regressed categories are rehearsed harder next round.

Real parts: the shipped catalog and tools, the verifier, the landing zone and DuckDB store, and
for the teacher a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from autoretrain.allocation import MAX_TEACH, AllocationPolicy, allocate, needs_pilot
from autoretrain.curation.reference import reference_runs
from autoretrain.project import Project
from autoretrain.providers.base import ChatResponse
from autoretrain.runs.archive import RunArchive
from autoretrain.scenarios import load_catalog
from autoretrain.settings import Settings
from autoretrain_tests.deploy.model_files import copy_model, tiny_model
from autoretrain_tests.loopback import LoopbackServer

SCENARIOS = [("a", "x"), ("b", "x"), ("c", "y"), ("d", "z")]


def test_weights_follow_the_teaching_value_with_a_floor_and_an_exploration_share():
    policy = AllocationPolicy(min_observations=10, floor=0.2, explore_share=0.1)
    # a: half right (most to learn), b: always right (floor), c: one in ten, d: never in 40.
    allocation = allocate(
        SCENARIOS, {"a": (40, 20), "b": (40, 40), "c": (40, 4), "d": (40, 0)}, policy
    )
    w = allocation.weights
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["a"] > w["c"] > w["b"] > 0
    assert allocation.unsolved == ["d"] and w["d"] == pytest.approx(0.1)
    # The solved scenario keeps exactly its floor relative to the others' teaching values.
    assert w["b"] / w["a"] == pytest.approx(policy.floor * MAX_TEACH / (20.5 / 41 * 20.5 / 41))
    assert allocation.to_dict()["pass_rates"] == {"a": 0.5, "b": 1.0, "c": 0.1, "d": 0.0}


def test_too_few_runs_is_unknown_not_unsolved_and_asks_for_a_pilot():
    policy = AllocationPolicy(min_observations=30)
    counts = {"a": (5, 0), "b": (40, 40), "c": (40, 4), "d": (40, 0)}
    allocation = allocate(SCENARIOS, counts, policy)
    assert allocation.unsolved == ["d"]
    assert allocation.weights["a"] == max(allocation.weights.values())  # measured first
    assert needs_pilot([s for s, _ in SCENARIOS], counts, policy)
    assert not needs_pilot(["b", "c", "d"], counts, policy)


def test_overrides_and_a_regressed_category_change_only_what_they_name():
    counts = {s: (40, 20) for s, _ in SCENARIOS}
    even = allocate(SCENARIOS, counts).weights
    assert len(set(round(v, 9) for v in even.values())) == 1
    named = allocate(SCENARIOS, counts, overrides={"z": 0.0, "a": 2.0}).weights
    assert named["d"] == 0 and named["a"] == pytest.approx(2 * named["b"])
    boosted = allocate(SCENARIOS, counts, boost_categories=["y"])
    assert boosted.weights["c"] == pytest.approx(3 * boosted.weights["a"])
    assert boosted.boosted == ["y"]


def test_nothing_to_play_is_an_error_not_an_empty_round():
    with pytest.raises(ValueError, match="positive self-play weight"):
        allocate(SCENARIOS, {}, overrides={"x": 0, "y": 0, "z": 0})


# --- through the Project ------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog():
    return load_catalog("scenarios")


class SkillfulIn:
    """A model that answers with the reference solution in the categories it knows and says
    "I don't know" elsewhere: a deterministic stand-in for an incumbent's uneven skills. It
    finds each prompt's instance in `seen`, which `recording` fills as the catalog draws."""

    def __init__(self, seen: dict, knows: set[str], name: str = "incumbent-x"):
        self.name = name
        self.knows = knows
        self.seen = seen

    def chat(self, messages, tools=None, sampling=None):
        instance = self.seen[messages[1]["content"]]
        if instance.category not in self.knows:
            return ChatResponse(message={"role": "assistant", "content": "I don't know."})
        return ChatResponse(message=reference_turn(instance, messages))


def reference_turn(instance, messages) -> dict:
    ref = [m for m in instance.reference_messages() if m["role"] == "assistant"]
    turn = sum(1 for m in messages if m["role"] == "assistant")
    return dict(ref[min(turn, len(ref) - 1)])


def recording(project: Project) -> dict:
    """prompt → instance for every instance the project's catalog draws for self-play."""
    seen: dict = {}
    catalog = project.catalog
    draw = catalog.selfplay_instances

    def drawing(*args, **kwargs):
        instances = draw(*args, **kwargs)
        seen.update({i.user_prompt: i for i in instances})
        return instances

    catalog.selfplay_instances = drawing
    return seen


def measured(settings: Settings, catalog_root=None, providers=None, **selfplay) -> Settings:
    raw = settings.model_dump()
    raw["selfplay"].update(
        {"allocation": "measured", "workers": 1, "concurrency": 32, "min_observations": 5}
    )
    raw["selfplay"].update(selfplay)
    if catalog_root is not None:
        raw["scenarios_dir"] = str(catalog_root)
    raw["providers"].update(providers or {})
    return Settings.model_validate(raw)


def test_a_measured_round_pilots_then_sends_runs_where_they_teach(settings, catalog):
    project = Project(measured(settings, pilot_share=0.5))
    model = SkillfulIn(recording(project), knows={"clarify", "decline", "conversion"})
    report = project.selfplay(600, primary_model=model, progress=False)
    allocation = report.allocation
    assert report.finished == 600
    n_train = len(catalog.train_scenarios)
    each = 300 // n_train  # every scenario measured as often, past min_observations
    assert f"even pilot of {each * n_train}" in allocation["source"] and each >= 5
    rates = allocation["pass_rates"]
    known = {s.id for s in catalog.train_scenarios if s.category in model.knows}
    assert all(rates[s] == 1.0 for s in known)
    # Unsolved: every scenario of a category the model does not know; those the catalog
    # weighs by hand (the shipped catalog does) keep their weight, the others share exploration.
    unknown = {s.id for s in catalog.train_scenarios if s.id not in known}
    assert set(allocation["unsolved"]) == unknown
    by_hand = {s.id for s in catalog.train_scenarios if s.selfplay_weight_set}
    explored = unknown - by_hand
    assert explored  # lookup has no hand-set weight
    assert sum(allocation["weights"][s] for s in explored) == pytest.approx(0.1, abs=1e-3)
    # A second round trusts the store: ingested, its runs are enough to measure without a pilot.
    project.ingest_days(RunArchive(project.settings.paths.landing).days())
    again = project.selfplay(200, primary_model=model, progress=False)
    assert "pilot" not in again.allocation["source"] and again.finished == 200


@pytest.fixture
def unweighted_catalog(tmp_path):
    """The shipped catalog without its hand-set weights: measurement decides everything."""
    import shutil

    root = tmp_path / "catalog"
    shutil.copytree("scenarios", root)
    for path in root.glob("*.yaml"):
        lines = [line for line in path.read_text().splitlines() if "selfplay_weight:" not in line]
        path.write_text("\n".join(lines) + "\n")
    return root


def test_unsolved_scenarios_get_the_exploration_share(settings, unweighted_catalog):
    project = Project(measured(settings, unweighted_catalog, explore_share=0.2, pilot_share=0.2))
    catalog = project.catalog
    knows = {"clarify", "decline", "conversion", "text"}
    model = SkillfulIn(recording(project), knows=knows)
    n = 1000
    report = project.selfplay(n, primary_model=model, progress=False)
    allocation = report.allocation
    unsolved = set(allocation["unsolved"])
    assert unsolved == {s.id for s in catalog.train_scenarios if s.category not in knows}
    assert sum(allocation["weights"][s] for s in unsolved) == pytest.approx(0.2, abs=1e-3)
    # After the even pilot, the runs follow the weights.
    played = sum(k for s, k in report.by_scenario.items() if s in unsolved)
    pilot = report.allocation["observations"]
    in_pilot = sum(pilot[s] for s in unsolved)
    assert played - in_pilot == pytest.approx(0.2 * (n - sum(pilot.values())), rel=0.25)


class TeacherHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat completions endpoint that answers with the reference: a
    stronger model, for the test's purpose."""

    teacher: TeacherServer

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body["messages"]
        instance = self.teacher.by_prompt[messages[1]["content"]]
        with self.teacher.lock:
            self.teacher.calls[instance.scenario_id] += 1
        reply = {
            "id": "chatcmpl-teacher",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": reference_turn(instance, messages),
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class TeacherServer(LoopbackServer):
    handler = TeacherHandler
    handler_attribute = "teacher"

    def __init__(self):
        self.by_prompt: dict = {}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()


def test_a_teacher_plays_what_the_incumbent_cannot_and_its_runs_verify(
    settings, unweighted_catalog
):
    teacher = TeacherServer().start()
    try:
        project = Project(
            measured(
                settings,
                unweighted_catalog,
                explore_share=0.3,
                pilot_share=0.5,
                concurrency=4,  # the loopback teacher is a plain threading HTTP server
                teacher="teacher",
                providers={
                    "teacher": {
                        "kind": "openai_compatible",
                        "base_url": f"{teacher.base_url}/v1",
                        "slots": {"primary": "big-teacher"},
                    }
                },
            )
        )
        teacher.by_prompt = recording(project)
        model = SkillfulIn(teacher.by_prompt, knows={"clarify", "decline", "conversion"})
        report = project.selfplay(400, primary_model=model, progress=False)
    finally:
        teacher.stop()
    unsolved = set(report.allocation["unsolved"])
    # The teacher played only those (~200 runs over ~20 scenarios: not every one drawn).
    assert unsolved and set(teacher.calls) <= unsolved
    assert len(teacher.calls) > len(unsolved) / 2
    project.ingest_days(RunArchive(project.settings.paths.landing).days())
    with project.store(read_only=True) as store:
        rows = store.con.execute(
            "SELECT DISTINCT scenario_id, model, status FROM runs WHERE slot = 'teacher'"
        ).fetchall()
        landed = store.con.execute("SELECT count(*) FROM runs WHERE slot = 'teacher'").fetchone()
    assert {r[0] for r in rows} == set(teacher.calls)
    assert {(r[1], r[2]) for r in rows} == {("big-teacher", "succeeded")}
    assert landed[0] == report.by_slot["teacher"] > 0


def test_reference_demonstrations_fill_in_for_unsolved_scenarios(catalog):
    exclude = catalog.evaluation_hashes(70)
    runs = reference_runs(catalog, ["text_initials", "arith_add"], 4, exclude)
    assert Counter(r.scenario_id for r in runs) == {"text_initials": 4, "arith_add": 4}
    assert all(r.verified and r.traffic == "demo" for r in runs)
    assert not {r.instance_hash for r in runs} & exclude
    # Never the bootstrap's demonstrations: those come from the start of the demo range.
    demo = {i.instance_hash for i in catalog.demo_instances(50, exclude=exclude)}
    assert not {r.instance_hash for r in runs} & demo
    # The same catalog gives the same runs, byte for byte.
    again = reference_runs(catalog, ["arith_add", "text_initials"], 4, exclude)
    assert [r.to_json() for r in runs] == [r.to_json() for r in again]


def test_the_dataset_adds_reference_solutions_for_what_the_incumbent_never_solved(
    settings, tmp_path_factory
):
    raw = measured(settings, pilot_share=0.5).model_dump()
    raw["dataset"]["reference_demos_per_unsolved_scenario"] = 3
    raw["dataset"]["min_new_promotable_runs"] = 0
    project = Project(Settings.model_validate(raw))
    knows = {"clarify", "decline", "conversion"}
    with project.store() as store:
        registry = project.registry(store)
        model_dir = copy_model(tiny_model(tmp_path_factory), project.paths.root / "models" / "v1")
        registry.register(base_model="tiny", kind="local", model_dir=model_dir, version_id="v1")
        registry.promote("v1", "primary")
    model = SkillfulIn(recording(project), knows=knows, name="v1")
    report = project.selfplay(400, primary_model=model, progress=False)
    days = project.archive.days()
    project.ingest_days(days)
    project.score_days(days[0], days[-1])
    project.decide_days(days[0], days[-1])

    dataset = project.build_training_dataset()
    added = dataset.manifest["reference_demonstrations"]
    unsolved = set(report.allocation["unsolved"])
    assert unsolved and set(added["by_scenario"]) == unsolved
    assert set(added["by_scenario"].values()) == {3} and added["runs"] == 3 * len(unsolved)
    used = set(dataset.manifest["run_ids"]["train"] + dataset.manifest["run_ids"]["eval"])
    assert sum(1 for r in used if r.startswith("reference-")) == added["runs"]


def test_a_rejected_round_has_the_next_one_rehearse_what_it_regressed(settings):
    project = Project(measured(settings, pilot_share=0.5))

    def row(tier, category, role, rate):
        return {"tier": tier, "category": category, "role": role, "pass_rate": rate}

    comparison = {
        "incumbent": "incumbent-x",
        "candidate": "cand-1",
        "decision": "reject",
        "categories": [
            row("held_out", "decline", "incumbent", 0.99),
            row("held_out", "decline", "candidate", 0.44),
            row("in_distribution", "conversion", "incumbent", 0.5),
            row("in_distribution", "conversion", "candidate", 0.49),  # within noise
            row("in_distribution", "text", "incumbent", 0.1),
            row("in_distribution", "text", "candidate", 0.3),
        ],
    }
    report_dir = project.paths.reports / "eval-20261203T000000Z-abcdef"
    report_dir.mkdir(parents=True)
    (report_dir / "comparison.json").write_text(json.dumps(comparison))
    assert project.regressed_categories("incumbent-x") == ["decline"]
    assert project.regressed_categories("another-model") == []
    # The learning rate stays unless a gentler one is set for a round after a regression.
    assert project.round_learning_rate("incumbent-x") is None
    gentle = settings.model_copy(
        update={
            "training": settings.training.model_copy(
                update={"learning_rate_after_regression": 3e-4}
            )
        }
    )
    assert Project(gentle).round_learning_rate("incumbent-x") == 3e-4
    assert Project(gentle).round_learning_rate("another-model") is None

    model = SkillfulIn(recording(project), knows={"clarify", "decline", "conversion"})
    report = project.selfplay(400, primary_model=model, progress=False)
    assert report.allocation["boosted_categories"] == ["decline"]

    # A promoted candidate teaches nothing to rehearse.
    (report_dir / "comparison.json").write_text(json.dumps({**comparison, "decision": "promote"}))
    assert project.regressed_categories("incumbent-x") == []
    assert Project(gentle).round_learning_rate("incumbent-x") is None


def test_a_round_played_again_on_the_same_model_draws_new_instances(settings, catalog):
    """A seed fixes the instances and their sampling: a second round on an unchanged incumbent
    (its candidate rejected) used to replay the first run for run, so its dataset and
    candidate came out identical. The first round of a model keeps `selfplay.seed`."""
    raw = settings.model_dump()
    raw["selfplay"].update({"workers": 1, "concurrency": 32, "seed": 5})
    project = Project(Settings.model_validate(raw))
    seen = recording(project)
    model = SkillfulIn(seen, knows={"clarify", "decline"})
    assert project.selfplay_seed(model.name) == 5  # nothing played yet
    project.selfplay(120, primary_model=model, progress=False)
    first = set(seen)
    project.ingest_days(RunArchive(project.settings.paths.landing).days())
    assert project.selfplay_seed(model.name) == 5 + 120
    seen.clear()
    project.selfplay(120, primary_model=model, progress=False)
    assert len(set(seen) - first) > 60  # mostly new prompts, not the first round again
    # Another model's first round is seeded as the settings say.
    assert project.selfplay_seed("another-model") == 5
