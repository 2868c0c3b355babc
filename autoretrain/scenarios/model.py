"""What a scenario is and what one rendered instance of it holds.

The catalog's vocabulary: the seed ranges that keep demonstrations, self-play and evaluation
apart, the splits and expected-outcome kinds, a scenario's budgets, the `Scenario` template
itself, and the `ScenarioInstance` it renders into with the `prompt_hash` that identifies it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoretrain.scenarios.generators import Generator


SEED_RANGES: dict[str, tuple[int, int]] = {  # half-open [start, stop); disjoint by construction
    "demo": (0, 100_000),
    "selfplay": (100_000, 1_000_000_000),
    "eval": (1_000_000_000, 2_000_000_000),
}
SPLITS = ("train", "eval")
EXPECTED_KINDS = ("exact", "numeric", "regex", "contains", "json_schema", "rubric", "python")
DATA_DIR = "data"


@dataclass(frozen=True)
class Budgets:
    max_turns: int = 4
    max_seconds: float = 60.0
    max_tokens: int = 2048


@dataclass(frozen=True)
class Scenario:
    id: str
    category: str
    tags: tuple[str, ...]
    split: str
    system_prompt: str
    prompt: str
    params: dict[str, Generator]
    tools: tuple[str, ...]
    reference_calls: tuple[dict[str, Any], ...]  # templates: {"name": ..., "arguments": {...}}
    reference_answer: str  # template
    expected: dict[str, Any]  # template
    budgets: Budgets
    planner: bool
    file: str
    description: str = ""
    selfplay_weight: float = 1.0
    # Set in the YAML (not the default): measured allocation leaves such a weight as it is.
    selfplay_weight_set: bool = False

    def space_size(self, tables: dict[str, list[str]]) -> int:
        size = 1
        for generator in self.params.values():
            size *= generator.size(tables)
            if size > 10**12:
                return size
        return size


@dataclass(frozen=True)
class ScenarioInstance:
    scenario_id: str
    category: str
    split: str
    seed: int
    system_prompt: str
    user_prompt: str
    tools: list[dict]  # shared by every instance of the scenario: treat as read-only
    expected: dict
    reference_calls: list[dict]
    reference_answer: str
    budgets: Budgets
    planner: bool
    instance_hash: str
    tags: tuple[str, ...] = ()
    reference_results: list[str] = field(default_factory=list)  # tool outputs, in call order
    params: dict[str, Any] = field(default_factory=dict)

    def initial_messages(self) -> list[dict]:
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.user_prompt},
        ]

    def reference_messages(self) -> list[dict]:
        """The transcript a correct agent produces: one assistant turn per tool call, each
        followed by the real tool's result, then the final answer."""
        messages = self.initial_messages()
        for index, (call, result) in enumerate(
            zip(self.reference_calls, self.reference_results, strict=True)
        ):
            call_id = f"call_{index}"
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": call["name"],
                                "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                            },
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        messages.append({"role": "assistant", "content": self.reference_answer})
        return messages

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario_id": self.scenario_id,
            "category": self.category,
            "split": self.split,
            "seed": self.seed,
            "instance_hash": self.instance_hash,
            "system_prompt": self.system_prompt,
            "user_prompt": self.user_prompt,
            "tools": [spec["function"]["name"] for spec in self.tools],
            "reference_calls": self.reference_calls,
            "reference_results": self.reference_results,
            "reference_answer": self.reference_answer,
            "expected": self.expected,
            "budgets": vars(self.budgets),
            "planner": self.planner,
        }


def prompt_hash(system_prompt: str, user_prompt: str) -> str:
    """sha256 of a rendered prompt; recompute it from a run's first two messages."""
    payload = json.dumps([system_prompt, user_prompt], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
