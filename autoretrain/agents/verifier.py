"""VerifierAgent: scores a final answer against a scenario instance's expected outcome.

Deterministic kinds (exact, numeric, regex, contains, json_schema) and the team's own `python`
graders are checked by `autoretrain.scenarios.expected` (the catalog loader needs them too); a
`rubric` is graded by any ChatModel (`graders.rubric_profile` in the settings names one; see
`autoretrain.plugins.verifier_from_settings`). Every score is in [0, 1]. A missing or empty answer, a rubric with no
grader, and a grader that times out, fails or answers nonsense are all failures, never passes,
with the reason in `feedback`, worded for a model that will retry ("expected a number close to
42.5, got 'forty'").
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import TYPE_CHECKING, Any

from autoretrain.runs.schema import Verification
from autoretrain.scenarios.expected import Outcome, check_expected, quote

if TYPE_CHECKING:
    from autoretrain.providers.base import ChatModel
    from autoretrain.scenarios.model import ScenarioInstance

_RUBRIC_SYSTEM = (
    "You grade an assistant's answer against a rubric. Reply with only a JSON object "
    '{"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)


class VerifierAgent:
    name = "verifier"

    def __init__(self, grader: ChatModel | None = None, timeout_s: float = 30.0):
        self.grader = grader
        self.timeout_s = timeout_s

    def verify(
        self, instance: ScenarioInstance, answer: str | None, attempt: int = 0
    ) -> Verification:
        kind = instance.expected.get("kind")
        if kind == "rubric":
            outcome = self._grade(instance, answer)
            verifier = f"rubric:{getattr(self.grader, 'name', 'none')}"
        else:
            outcome = check_expected(instance.expected, answer, instance, self.timeout_s)
            verifier = f"expected:{kind}"
        return Verification(
            verifier=verifier,
            passed=outcome.passed,
            score=outcome.score,
            feedback=outcome.feedback,
            attempt=attempt,
        )

    def _grade(self, instance: ScenarioInstance, answer: str | None) -> Outcome:
        if answer is None or not answer.strip():
            return Outcome(False, 0.0, "no answer was given; reply with a short final answer")
        if self.grader is None:
            return Outcome(False, 0.0, "this answer needs a rubric grader and none is configured")
        rubric = instance.expected["rubric"]
        pass_score = float(instance.expected.get("pass_score", 0.7))
        messages = [
            {"role": "system", "content": _RUBRIC_SYSTEM},
            {
                "role": "user",
                "content": f"Task: {instance.user_prompt}\nRubric: {rubric}\nAnswer: {answer}",
            },
        ]
        reply, error = self._call_grader(messages)
        if error:
            return Outcome(False, 0.0, error)
        score, reason, problem = _parse_grade(reply)
        if problem:
            return Outcome(
                False, 0.0, f"the grader's reply was unusable ({problem}): {quote(reply)}"
            )
        passed = score >= pass_score
        verdict = "meets" if passed else f"falls short of (needs {pass_score:g})"
        return Outcome(passed, score, f"grader score {score:g} {verdict} the rubric: {reason}")

    def _call_grader(self, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
        from autoretrain.providers.base import Sampling

        box: list[Any] = []

        def call() -> None:
            try:
                box.append(
                    self.grader.chat(messages, None, Sampling(temperature=0.0, max_tokens=128))
                )
            except Exception as exc:  # any grader failure is a failed verification, not a crash
                box.append(exc)

        worker = threading.Thread(target=call, name="verifier-grader", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if not box:
            return "", f"the rubric grader timed out after {self.timeout_s:g} s"
        if isinstance(box[0], Exception):
            return "", f"the rubric grader failed: {type(box[0]).__name__}: {box[0]}"
        content = box[0].message.get("content")
        if not content or not str(content).strip():
            return "", "the rubric grader returned an empty reply"
        return str(content), None


def _parse_grade(reply: str) -> tuple[float, str, str | None]:
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if not match:
        return 0.0, "", "no JSON object"
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        return 0.0, "", f"invalid JSON: {exc.msg}"
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return 0.0, "", "no numeric 'score'"
    if not 0.0 <= score <= 1.0:
        return 0.0, "", f"score {score} is outside [0, 1]"
    return float(score), str(data.get("reason", "")).strip(), None
