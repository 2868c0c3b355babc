from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from autoretrain.agents.verifier import VerifierAgent, check_expected
from autoretrain.providers.base import ProviderError
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.scenarios import load_catalog

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.fixture(scope="module")
def instance():
    return load_catalog(SHIPPED).instance("arith_multiply", 0)


def with_expected(instance, **expected):
    return replace(instance, expected=expected)


def test_numeric(instance):
    inst = with_expected(instance, kind="numeric", value=42.5, tolerance=0.01)
    verifier = VerifierAgent()
    for good in ("42.5", "42.50", "The answer is 42.5.", "85 / 2 = 42.5", "about 42.504"):
        verdict = verifier.verify(inst, good, attempt=2)
        assert verdict.passed and verdict.score == 1.0, good
        assert verdict.attempt == 2
    bad = verifier.verify(inst, "forty")
    assert not bad.passed and bad.score == 0.0
    assert bad.feedback == "expected a number close to 42.5, got no number in 'forty'"
    off = verifier.verify(inst, "43")
    assert off.feedback == "expected a number close to 42.5 (within 0.01), got 43"
    ambiguous = verifier.verify(inst, "42.5 or 43")
    assert not ambiguous.passed and "several different numbers" in ambiguous.feedback
    assert verifier.verify(
        with_expected(inst, kind="numeric", value=1000, tolerance=0), "1,000"
    ).passed
    relative = with_expected(inst, kind="numeric", value=200, tolerance=0.05, relative=True)
    assert verifier.verify(relative, "209").passed and not verifier.verify(relative, "211").passed


def test_exact(instance):
    inst = with_expected(instance, kind="exact", value="Paris")
    assert VerifierAgent().verify(inst, "  Paris. ").passed
    lower = VerifierAgent().verify(inst, "paris")
    assert not lower.passed and lower.feedback == "expected exactly 'Paris', got 'paris'"
    assert (
        VerifierAgent()
        .verify(with_expected(inst, kind="exact", value="Paris", ignore_case=True), "paris")
        .passed
    )


def test_regex(instance):
    inst = with_expected(instance, kind="regex", pattern=r"\bcannot\b", ignore_case=True)
    assert VerifierAgent().verify(inst, "I CANNOT do that.").passed
    verdict = VerifierAgent().verify(inst, "Sure, here it is")
    assert not verdict.passed and "contain a match for" in verdict.feedback
    full = with_expected(instance, kind="regex", pattern=r"which .*\?", full=True, ignore_case=True)
    assert VerifierAgent().verify(full, "Which unit is 5 in?").passed
    assert not VerifierAgent().verify(full, "Which unit is 5 in? Also hello").passed


def test_contains(instance):
    inst = with_expected(
        instance, kind="contains", all=["84", "cans"], any=["total", "sum"], none=["maybe"]
    )
    assert VerifierAgent().verify(inst, "84 cans in total").passed
    partial = VerifierAgent().verify(inst, "84 in total")
    assert not partial.passed
    assert 0 < partial.score < 1
    assert "should mention 'cans'" in partial.feedback
    forbidden = VerifierAgent().verify(inst, "maybe 84 cans in total")
    assert (
        not forbidden.passed
        and forbidden.score == 0.0
        and "must not mention 'maybe'" in forbidden.feedback
    )


def test_json_schema(instance):
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"const": "ada"}}}
    inst = with_expected(instance, kind="json_schema", schema=schema)
    assert VerifierAgent().verify(inst, '{"name": "ada"}').passed
    assert VerifierAgent().verify(inst, '```json\n{"name": "ada"}\n```').passed
    not_json = VerifierAgent().verify(inst, "name: ada")
    assert not not_json.passed and "not JSON" in not_json.feedback
    wrong = VerifierAgent().verify(inst, '{"name": "bob"}')
    assert not wrong.passed and "at name" in wrong.feedback


@pytest.mark.parametrize("answer", [None, "", "   \n"])
def test_missing_or_empty_answer_fails(instance, answer):
    verdict = VerifierAgent().verify(instance, answer)
    assert not verdict.passed and verdict.score == 0.0
    assert "no answer" in verdict.feedback


def test_a_broken_expected_outcome_fails_instead_of_raising(instance):
    assert not check_expected({"kind": "numeric", "value": "n/a"}, "3").passed
    assert not check_expected({"kind": "telepathy"}, "3").passed
    assert not check_expected({"kind": "regex", "pattern": "("}, "3").passed


# --- rubric grading through any ChatModel --------------------------------------------------------


@pytest.fixture
def rubric(instance):
    return with_expected(
        instance, kind="rubric", rubric="Polite and mentions the number.", pass_score=0.7
    )


def test_rubric_pass_and_fail(rubric):
    grader = ScriptedModel(
        ['{"score": 0.9, "reason": "polite, has the number"}', '{"score": 0.4, "reason": "rude"}']
    )
    verifier = VerifierAgent(grader=grader)
    good = verifier.verify(rubric, "It is 84, thank you.")
    assert good.passed and good.score == 0.9 and good.verifier == "rubric:scripted"
    assert "polite, has the number" in good.feedback
    bad = verifier.verify(rubric, "84. Go away.")
    assert not bad.passed and bad.score == 0.4 and "needs 0.7" in bad.feedback
    prompt = grader.calls[0][1]["content"]
    assert "Polite and mentions the number." in prompt and "It is 84, thank you." in prompt


def test_rubric_without_a_grader_fails(rubric):
    verdict = VerifierAgent().verify(rubric, "84")
    assert not verdict.passed and verdict.score == 0.0
    assert "needs a rubric grader and none is configured" in verdict.feedback


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "empty reply"),
        ("I think it is fine", "no JSON object"),
        ('{"score": "high"}', "no numeric 'score'"),
        ('{"score": 7}', "outside [0, 1]"),
        ('{"score": NaN}', "no numeric 'score'"),
        ('{"score": 0.9', "no JSON object"),
    ],
)
def test_rubric_with_unusable_grader_replies_fails(rubric, reply, why):
    verdict = VerifierAgent(grader=ScriptedModel([reply])).verify(rubric, "84")
    assert not verdict.passed and verdict.score == 0.0
    assert why in verdict.feedback


def test_rubric_grader_error_fails(rubric):
    verdict = VerifierAgent(grader=ScriptedModel([ProviderError("endpoint down")])).verify(
        rubric, "84"
    )
    assert not verdict.passed and "grader failed: ProviderError: endpoint down" in verdict.feedback


def test_rubric_grader_timeout_fails(rubric):
    release = threading.Event()

    def slow(messages, tools):
        release.wait(10)
        return '{"score": 1.0}'

    verdict = VerifierAgent(grader=ScriptedModel([slow]), timeout_s=0.2).verify(rubric, "84")
    release.set()
    assert not verdict.passed and verdict.score == 0.0
    assert "timed out after 0.2 s" in verdict.feedback
