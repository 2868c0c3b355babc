"""Graders from outside the package: `expected: {kind: python}` (import path or entry point), and
the rubric judge built from a provider profile named in the settings.

The rubric judge is a ScriptedModel standing in for the profile's model (`build_judge` is the
one seam patched), so the wiring through self-play, the replay and pass rates is real.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from autoretrain import plugins
from autoretrain.agents.verifier import VerifierAgent
from autoretrain.evaluation.harness import replay
from autoretrain.project import Project
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.runs.archive import RunArchive
from autoretrain.scenarios import CatalogError, check_expected, load_catalog
from autoretrain.settings import GraderSettings, ProviderProfile

GRADERS = '''
def right_city(answer, instance, city, strict=False):
    """Passes when the answer names the city; the score says how cleanly."""
    found = city.lower() in answer.lower()
    clean = answer.strip().rstrip(".").lower() == city.lower()
    score = 1.0 if clean else (0.5 if found else 0.0)
    return found and (clean or not strict), score, f"looked for {city} ({instance.scenario_id})"


def is_even(answer, instance):
    return int(answer) % 2 == 0


def broken(answer, instance):
    raise RuntimeError("grader bug")


def odd_reply(answer, instance):
    return "yes"
'''

PYTHON_CATALOG = """
scenarios:
  - id: capital_python
    category: capitals
    split: train
    system_prompt: Answer with the city only.
    prompt: "What is the capital of {country}?"
    params:
      country: {choice: [France]}
    reference:
      answer: Paris
    expected:
      kind: python
      function: "{module}:right_city"
      args: {city: Paris, strict: true}
"""

RUBRIC_CATALOG = """
defaults:
  system_prompt: Answer politely.
scenarios:
  - id: greet_train
    category: greeting
    split: train
    prompt: "Greet {name}."
    params:
      name: {choice: [Ada, Alan, Grace, Linus]}
    reference:
      answer: "Hello!"
    expected: {kind: rubric, rubric: "A polite greeting.", pass_score: 0.8}
  - id: farewell_eval
    category: greeting
    split: eval
    prompt: "Say goodbye to {name} warmly."
    params:
      name: {choice: [Ada, Alan, Grace, Linus]}
    reference:
      answer: "Goodbye!"
    expected: {kind: rubric, rubric: "A warm farewell.", pass_score: 0.8}
"""


@pytest.fixture
def graders_module(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    module = f"teamgraders_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(GRADERS)
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    yield folder, module
    sys.modules.pop(module, None)


def write_catalog(tmp_path: Path, body: str) -> Path:
    root = tmp_path / f"cat_{uuid.uuid4().hex[:6]}"
    root.mkdir()
    (root / "scenarios.yaml").write_text(textwrap.dedent(body))
    return root


# --- python graders ---------------------------------------------------------------------------


def test_a_python_grader_checks_answers_and_the_reference(tmp_path, graders_module):
    module = graders_module[1]
    catalog = load_catalog(write_catalog(tmp_path, PYTHON_CATALOG.replace("{module}", module)))
    instance = catalog.instance("capital_python", 1)
    verifier = VerifierAgent()
    good = verifier.verify(instance, "Paris.")
    assert (good.passed, good.score, good.verifier) == (True, 1.0, "expected:python")
    assert good.feedback == "looked for Paris (capital_python)"  # it got the instance
    near = verifier.verify(instance, "It is Paris, of course")
    assert (near.passed, near.score) == (False, 0.5)  # strict, from `args`
    assert not verifier.verify(instance, "").passed


def test_a_python_grader_that_misbehaves_fails_the_check(graders_module):
    module = graders_module[1]
    for name, says in [
        ("broken", "failed: RuntimeError: grader bug"),
        ("odd_reply", "returned 'yes'; return a bool or (passed, score, feedback)"),
        ("nowhere", "has no attribute 'nowhere'"),
    ]:
        outcome = check_expected({"kind": "python", "function": f"{module}:{name}"}, "4")
        assert not outcome.passed and outcome.score == 0.0
        assert says in outcome.feedback
    assert check_expected({"kind": "python", "function": f"{module}:is_even"}, "4").passed


def test_a_grader_that_cannot_be_imported_names_the_scenario_and_field(tmp_path):
    body = PYTHON_CATALOG.replace("{module}", f"missing_{uuid.uuid4().hex[:6]}")
    with pytest.raises(CatalogError) as info:
        load_catalog(write_catalog(tmp_path, body))
    message = str(info.value)
    assert "scenario 'capital_python': field 'expected.function'" in message
    assert "cannot import module" in message


def test_a_reference_that_fails_its_python_grader_is_refused(tmp_path, graders_module):
    body = PYTHON_CATALOG.replace("{module}", graders_module[1]).replace(
        "answer: Paris", "answer: Lyon"
    )
    with pytest.raises(CatalogError, match="field 'reference.answer'.*looked for Paris"):
        load_catalog(write_catalog(tmp_path, body))


def test_an_entry_point_grader_is_found_by_name(tmp_path, graders_module):
    folder, module = graders_module
    info = folder / f"team_{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: team_{module}\nVersion: 0.1\n")
    name = f"city_{module}"
    (info / "entry_points.txt").write_text(f"[autoretrain.graders]\n{name} = {module}:right_city\n")
    importlib.invalidate_caches()
    body = PYTHON_CATALOG.replace('"{module}:right_city"', name)
    catalog = load_catalog(write_catalog(tmp_path, body))
    assert VerifierAgent().verify(catalog.instance("capital_python", 2), "Paris").passed
    outcome = check_expected({"kind": "python", "function": "no_such_grader_name"}, "x")
    assert "no grader 'no_such_grader_name'" in outcome.feedback
    assert name in outcome.feedback  # the installed graders are listed


# --- the rubric judge from the settings -------------------------------------------------------


@pytest.fixture
def judged(settings, tmp_path, monkeypatch):
    """Settings whose rubric judge is the `judge` profile, a catalog of rubric scenarios, and
    the scripted judge that profile's model is (scores 0.9, then whatever a test scripts)."""
    root = write_catalog(tmp_path, RUBRIC_CATALOG)
    judge = ScriptedModel([], name="judge-model", default='{"score": 0.9, "reason": "polite"}')
    built: list[tuple[str, str]] = []

    def build_judge(settings, profile, slot):
        built.append((profile, slot))
        return judge

    monkeypatch.setattr(plugins, "build_judge", build_judge)
    providers = {
        **settings.providers,
        "judge": ProviderProfile(kind="openai_compatible", slots={"grader": "gpt-judge"}),
    }
    configured = settings.model_copy(
        update={
            "providers": providers,
            "scenarios_dir": root,
            "graders": GraderSettings(rubric_profile="judge", rubric_slot="grader"),
        }
    )
    return configured, judge, built


def test_settings_name_an_unknown_rubric_profile(settings):
    from autoretrain.settings import Settings

    with pytest.raises(ValueError, match="graders.rubric_profile = 'nobody': no such profile"):
        Settings(**{**settings.model_dump(), "graders": {"rubric_profile": "nobody"}})


def test_the_verifier_grades_a_rubric_with_the_profiles_judge(judged):
    settings, judge, built = judged
    verifier = plugins.verifier_from_settings(settings)
    instance = Project(settings).catalog.instance("greet_train", 3)
    verification = verifier.verify(instance, "Hello there, Ada!")
    assert verification.passed and verification.score == 0.9
    assert verification.verifier == "rubric:judge/grader"
    assert built == [("judge", "grader")]  # built once, on first use
    assert "Rubric: A polite greeting." in judge.calls[0][1]["content"]
    # It travels to self-play's worker processes without its model, and rebuilds it there.
    copy = pickle.loads(pickle.dumps(verifier))
    assert copy.grader._model is None
    assert copy.verify(instance, "Hi").passed and len(built) == 2
    # Without a profile, rubric answers fail and say why: they never train a model.
    plain = plugins.verifier_from_settings(
        settings.model_copy(update={"graders": GraderSettings()})
    )
    unjudged = plain.verify(instance, "Hello!")
    assert not unjudged.passed and "needs a rubric grader and none is configured" in (
        unjudged.feedback
    )


def test_pass_rates_use_the_rubric_judge(judged):
    settings, judge, _ = judged
    player = ScriptedModel([], name="player", default="Hello, dear friend!")
    rates = Project(settings).pass_rates(player, per_scenario=3)
    assert rates.in_distribution.pass_rate == 1.0
    assert rates.held_out.pass_rate == 1.0
    judge.script = ['{"score": 0.2, "reason": "rude"}'] * 100  # now every answer falls short
    rates = Project(settings).pass_rates(player, per_scenario=3)
    assert rates.in_distribution.pass_rate == 0.0


def test_self_play_lands_rubric_runs_verified_by_the_judge(judged):
    settings, judge, _ = judged
    player = ScriptedModel([], name="player", default="Hello, dear friend!")
    report = Project(settings).selfplay(
        6, primary_model=player, workers=1, concurrency=2, progress=False
    )
    assert report.finished == 6
    assert report.by_status == {"succeeded": 6}
    assert len(judge.calls) >= 6


def test_the_replay_grades_rubrics_with_the_settings_judge(judged, tmp_path):
    settings, judge, _ = judged
    catalog = Project(settings).catalog
    incumbent = ScriptedModel([], name="incumbent", default="Hello, dear friend!")
    candidate = ScriptedModel([], name="candidate", default="Hello, dear friend!")
    result = replay(
        incumbent,
        candidate,
        catalog,
        Project(settings).replay_setup(),
        archive=RunArchive(tmp_path / "landing"),
        instances_per_scenario=2,
        progress=False,
    )
    assert result.error is None and result.rows
    assert all(row["passed"] for row in result.rows)
    assert len(judge.calls) == len(result.rows)
