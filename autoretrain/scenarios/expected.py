"""Deterministic expected outcomes: does an answer meet a rendered instance's `expected`?

The kinds exact, numeric, regex, contains and json_schema are checked here, without a model;
`python` calls the team's own grader function (autoretrain/plugins.py); a `rubric` needs a
grader model and is left to the VerifierAgent. Every score is in [0, 1], and a
missing answer or a malformed expected outcome is a failure, never a crash, with the reason in
`feedback`, worded for a model that will retry ("expected a number close to 42.5, got 'forty'").
The catalog loader uses `check_expected` to test each scenario's reference against its own
expected outcome, and the verifier to score answers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\.\d+"
)
_QUOTE = 80  # characters of the answer quoted back in feedback


@dataclass(frozen=True)
class Outcome:
    passed: bool
    score: float
    feedback: str


def quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


def _normalize(text: str, ignore_case: bool) -> str:
    text = re.sub(r"\s+", " ", text.strip()).rstrip(".")
    return text.lower() if ignore_case else text


def numbers_in(text: str) -> list[float]:
    return [float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(text)]


def _the_number(answer: str) -> float | None:
    """The number an answer gives: its only number, or the only one after its last '='."""
    found = numbers_in(answer)
    if len(set(found)) == 1:
        return found[0]
    if "=" in answer:
        tail = numbers_in(answer.rsplit("=", 1)[1])
        if len(set(tail)) == 1:
            return tail[0]
    return None


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def check_exact(expected: dict, answer: str) -> Outcome:
    ignore_case = bool(expected.get("ignore_case", False))
    want = _normalize(str(expected["value"]), ignore_case)
    if _normalize(answer, ignore_case) == want:
        return Outcome(True, 1.0, "exact match")
    return Outcome(False, 0.0, f"expected exactly {str(expected['value'])!r}, got {quote(answer)}")


def check_numeric(expected: dict, answer: str) -> Outcome:
    try:
        want = float(expected["value"])
    except (TypeError, ValueError):
        return Outcome(False, 0.0, f"the expected value {expected['value']!r} is not a number")
    tolerance = float(expected.get("tolerance", 0.01))
    allowed = tolerance * abs(want) if expected.get("relative") else tolerance
    got = _the_number(answer)
    if got is None:
        found = numbers_in(answer)
        why = "several different numbers" if found else "no number"
        return Outcome(
            False, 0.0, f"expected a number close to {_fmt(want)}, got {why} in {quote(answer)}"
        )
    if math.isclose(got, want, abs_tol=allowed + 1e-9):
        return Outcome(True, 1.0, f"{_fmt(got)} is within {allowed:g} of {_fmt(want)}")
    return Outcome(
        False, 0.0, f"expected a number close to {_fmt(want)} (within {allowed:g}), got {_fmt(got)}"
    )


def check_regex(expected: dict, answer: str) -> Outcome:
    flags = re.IGNORECASE if expected.get("ignore_case") else 0
    try:
        pattern = re.compile(str(expected["pattern"]), flags)
    except re.error as exc:
        return Outcome(False, 0.0, f"the expected pattern is not a valid regex: {exc}")
    match = pattern.fullmatch(answer.strip()) if expected.get("full") else pattern.search(answer)
    if match:
        return Outcome(True, 1.0, "matches the expected pattern")
    how = "match" if expected.get("full") else "contain a match for"
    return Outcome(False, 0.0, f"the answer should {how} /{pattern.pattern}/, got {quote(answer)}")


def check_contains(expected: dict, answer: str) -> Outcome:
    ignore_case = bool(expected.get("ignore_case", True))
    text = answer.lower() if ignore_case else answer

    def has(word: str) -> bool:
        return (word.lower() if ignore_case else word) in text

    # Placeholders keep their type, so a rendered list may hold numbers.
    required = [str(w) for w in expected.get("all") or []]
    alternatives = [str(w) for w in expected.get("any") or []]
    forbidden = [str(w) for w in expected.get("none") or [] if has(str(w))]
    missing = [w for w in required if not has(w)]
    checks = len(required) + (1 if alternatives else 0)
    hits = len(required) - len(missing)
    any_ok = not alternatives or any(has(w) for w in alternatives)
    hits += 1 if alternatives and any_ok else 0
    score = hits / checks if checks else 1.0
    problems = []
    if missing:
        problems.append(f"it should mention {', '.join(repr(w) for w in missing)}")
    if not any_ok:
        problems.append(f"it should mention one of {', '.join(repr(w) for w in alternatives)}")
    if forbidden:
        problems.append(f"it must not mention {', '.join(repr(w) for w in forbidden)}")
        score = 0.0
    if problems:
        return Outcome(False, score, "; ".join(problems) + f"; got {quote(answer)}")
    return Outcome(True, 1.0, "mentions everything expected")


def check_json_schema(expected: dict, answer: str) -> Outcome:
    import jsonschema

    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    text = fenced.group(1) if fenced else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Outcome(False, 0.0, f"expected a JSON value, but the answer is not JSON ({exc.msg})")
    validator = jsonschema.validators.validator_for(expected["schema"])(expected["schema"])
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return Outcome(True, 1.0, "the JSON answer matches the schema")
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return Outcome(
        False, 0.0, f"the JSON answer does not match the schema at {where}: {error.message}"
    )


CHECKS = {
    "exact": check_exact,
    "numeric": check_numeric,
    "regex": check_regex,
    "contains": check_contains,
    "json_schema": check_json_schema,
}


def check_expected(
    expected: dict, answer: str | None, instance: Any = None, timeout_s: float | None = None
) -> Outcome:
    """Check an answer against a rendered expected outcome (not `rubric`). `instance` (the
    ScenarioInstance) is what a `python` grader gets beside the answer; `timeout_s` bounds it."""
    if answer is None or not str(answer).strip():
        return Outcome(False, 0.0, "no answer was given; reply with a short final answer")
    kind = expected.get("kind")
    if kind == "python":
        from autoretrain.plugins import GRADER_TIMEOUT_S, check_python

        outcome = check_python(expected, str(answer), instance, timeout_s or GRADER_TIMEOUT_S)
        return Outcome(outcome.passed, min(max(outcome.score, 0.0), 1.0), outcome.feedback)
    if kind not in CHECKS:
        return Outcome(False, 0.0, f"cannot check expected outcome of kind {kind!r} here")
    try:
        outcome = CHECKS[kind](expected, str(answer))
    except Exception as exc:  # a malformed expected outcome is a failed check, never a crash
        return Outcome(False, 0.0, f"the {kind} check could not run: {type(exc).__name__}: {exc}")
    return Outcome(outcome.passed, min(max(outcome.score, 0.0), 1.0), outcome.feedback)
