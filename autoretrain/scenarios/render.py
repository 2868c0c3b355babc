"""Rendering one scenario at one seed into an instance.

Parameters are drawn from a stream seeded by (id, seed), and the reference calls are executed
through the real tools, so templates may refer to earlier results (`{result_0}`). The same
(id, seed) always gives the same prompt, reference and expected outcome.
"""

from __future__ import annotations

import math
import random
from typing import Any

from autoretrain.agents.tools import ToolRegistry
from autoretrain.scenarios.model import Scenario, ScenarioInstance, prompt_hash
from autoretrain.scenarios.templates import TemplateError, render_text, render_value


class RenderError(ValueError):
    """A scenario that cannot render: names the field that failed."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(message)


def render_instance(
    scenario: Scenario, seed: int, registry: ToolRegistry, specs: list[dict]
) -> ScenarioInstance:
    tables = registry.tables.keys if registry.tables else {}
    rng = random.Random(f"{scenario.id}#{seed}")
    params: dict[str, Any] = {}
    for name, generator in scenario.params.items():
        params[name] = generator.draw(rng, tables)
    env: dict[str, Any] = dict(params)
    try:
        system_prompt = render_text(scenario.system_prompt, env)
        user_prompt = render_text(scenario.prompt, env)
    except TemplateError as exc:
        raise RenderError("prompt", str(exc)) from None
    calls: list[dict] = []
    results: list[str] = []
    for index, call in enumerate(scenario.reference_calls):
        where = f"reference.calls[{index}]"
        try:
            arguments = render_value(call.get("arguments", {}), env)
        except TemplateError as exc:
            raise RenderError(f"{where}.arguments", str(exc)) from None
        result = registry.call(call["name"], arguments)
        if not result.ok:
            raise RenderError(where, f"the reference call failed: {result.error}")
        calls.append({"name": call["name"], "arguments": arguments})
        results.append(result.content)
        env[f"result_{index}"] = _typed_result(result.content)
    try:
        answer = render_text(scenario.reference_answer, env)
    except TemplateError as exc:
        raise RenderError("reference.answer", str(exc)) from None
    try:
        expected = render_value(scenario.expected, env)
    except TemplateError as exc:
        raise RenderError("expected", str(exc)) from None
    return ScenarioInstance(
        scenario_id=scenario.id,
        category=scenario.category,
        split=scenario.split,
        seed=seed,
        system_prompt=system_prompt,
        user_prompt=user_prompt,
        tools=specs,
        expected=expected,
        reference_calls=calls,
        reference_answer=answer,
        budgets=scenario.budgets,
        planner=scenario.planner,
        instance_hash=prompt_hash(system_prompt, user_prompt),
        tags=scenario.tags,
        reference_results=results,
        params=params,
    )


def _typed_result(content: str) -> Any:
    """A tool result as a template value: numbers become numbers (for typed arguments)."""
    try:
        number = float(content)
    except ValueError:
        return content
    if not math.isfinite(number):
        return content
    return int(number) if number == int(number) and "." not in content else number
