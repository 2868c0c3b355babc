"""Runs for curation tests, shaped like the workflow records them."""

from __future__ import annotations

import json
from typing import Any

from autoretrain.runs.schema import Run

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a key up.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
    },
}


def call(call_id: str, expression: str, name: str = "calculator") -> dict[str, Any]:
    arguments = json.dumps({"expression": expression})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def solved(a: int, b: int, *, call_id: str = "call_0", tool_output: str | None = None) -> list:
    """system, user, assistant calling the calculator, the tool's result, the answer."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": None, "tool_calls": [call(call_id, f"{a} + {b}")]},
        {
            "role": "tool",
            "tool_call_id": call_id,
            "name": "calculator",
            "content": tool_output if tool_output is not None else str(a + b),
        },
        {"role": "assistant", "content": str(a + b)},
    ]


def recovered(a: int, b: int) -> list:
    """A first attempt that answered wrong, the verifier's feedback, a second that was right."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_0", f"{a} - {b}")]},
        {"role": "tool", "tool_call_id": "call_0", "content": str(a - b)},
        {"role": "assistant", "content": str(a - b)},
        {
            "role": "user",
            "content": f"Verification failed: expected {a + b}. Please try again.",
        },
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", f"{a} + {b}")]},
        {"role": "tool", "tool_call_id": "call_1", "content": str(a + b)},
        {"role": "assistant", "content": str(a + b)},
    ]


def make_run(
    run_id: str,
    messages: list | None = None,
    *,
    scenario_id: str | None = "arith_add",
    instance_hash: str | None = None,
    category: str = "arithmetic",
    traffic: str = "selfplay",
    tools: list | None = None,
    **fields: Any,
) -> Run:
    return Run(
        run_id=run_id,
        scenario_id=scenario_id,
        instance_hash=instance_hash if instance_hash is not None else f"hash-{run_id}",
        category=category,
        traffic=traffic,
        status="succeeded",
        model="tiny-1",
        agent_version="executor-1.0",
        messages=messages if messages is not None else solved(2, 3),
        tools=tools if tools is not None else [CALCULATOR],
        **fields,
    )
