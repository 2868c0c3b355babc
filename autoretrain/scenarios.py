"""The scenario catalog: YAML files of task templates that render into deterministic instances.

A scenario is a task template (`prompt`) with seeded parameter generators (`params`), the tools
it allows, a reference solution (tool calls and final answer) and the expected outcome a verifier
checks. `Catalog.instance(scenario_id, seed)` renders one instance: the same (id, seed) always
gives the same prompt, reference and expected outcome, and its `instance_hash` identifies the
rendered prompt across runs, datasets and evaluations.

Reference calls are executed through the real tools while rendering, so templates may refer to
earlier results (`{result_0}`). The template mini-language (see docs/scenarios.md) is
substitution plus a fixed set of string filters: `{name}`, `{name.field}`, `{name|upper}`,
`{{`/`}}` for literal braces. Nothing is ever evaluated as Python.

Evaluation has two tiers, and seeds keep them apart: demonstrations, self-play and the
in-distribution tier draw from disjoint `SEED_RANGES`; the held-out tier uses eval scenarios whose
ids and templates never appear among the train scenarios (the loader refuses a catalog where they
do). Where a scenario's instance space is small (a lookup over 60 keys), the in-distribution tier
takes at most a quarter of it, so the rest stays available to demonstrations and self-play.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml

from autoretrain.agents.tools import ToolRegistry, default_registry

SEED_RANGES: dict[str, tuple[int, int]] = {  # half-open [start, stop); disjoint by construction
    "demo": (0, 100_000),
    "selfplay": (100_000, 1_000_000_000),
    "eval": (1_000_000_000, 2_000_000_000),
}
SPLITS = ("train", "eval")
EXPECTED_KINDS = ("exact", "numeric", "regex", "contains", "json_schema", "rubric")
DATA_DIR = "data"
# The in-distribution tier never takes more than this share of a scenario's instance space.
EVAL_SPACE_SHARE = 0.25
# Distinct instances are drawn from consecutive seeds; give up after this many per wanted one.
_DRAWS_PER_INSTANCE = 8


class CatalogError(ValueError):
    """A catalog that cannot be used. `issues` lists every problem found, each naming the file,
    the scenario and the field."""

    def __init__(self, issues: list[CatalogIssue]):
        self.issues = issues
        lines = [str(issue) for issue in issues]
        summary = f"{len(issues)} problem(s) in the scenario catalog:\n  " + "\n  ".join(lines)
        super().__init__(summary if len(issues) != 1 else lines[0])


@dataclass(frozen=True)
class CatalogIssue:
    file: str
    scenario: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.scenario:
            where.append(f"scenario {self.scenario!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return ": ".join(where) + f": {self.message}"


@dataclass(frozen=True)
class Budgets:
    max_turns: int = 4
    max_seconds: float = 60.0
    max_tokens: int = 2048


# --- the template mini-language -----------------------------------------------------------------


def _initials(text: str) -> str:
    return "".join(word[0].upper() for word in text.split())


FILTERS: dict[str, Callable[[str], Any]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "strip": str.strip,
    "reverse": lambda s: s[::-1],
    "reverse_words": lambda s: " ".join(reversed(s.split())),
    "sort_words": lambda s: " ".join(sorted(s.split())),
    "first_word": lambda s: (s.split() or [""])[0],
    "last_word": lambda s: (s.split() or [""])[-1],
    "initials": _initials,
    "snake": lambda s: "_".join(s.lower().split()),
    "word_count": lambda s: len(s.split()),
    "char_count": lambda s: len(s),
    "escape": re.escape,  # for a value placed inside a regex pattern
}

_PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)((?:\|[a-z_]+)*)\}"
)


class TemplateError(ValueError):
    pass


def placeholders(template: str) -> list[tuple[str, list[str]]]:
    """(name, filters) of each placeholder in `template`, in order."""
    found = []
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1):
            filters = [f for f in (match.group(2) or "").split("|") if f]
            found.append((match.group(1), filters))
    return found


def _resolve(name: str, filters: list[str], env: dict[str, Any]) -> Any:
    head, *path = name.split(".")
    if head not in env:
        raise TemplateError(f"unknown name {{{name}}}; defined: {', '.join(sorted(env))}")
    value = env[head]
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{{{name}}}: {head} has no field {part!r}")
        value = value[part]
    for filt in filters:
        if filt not in FILTERS:
            raise TemplateError(f"unknown filter {filt!r}; known: {', '.join(sorted(FILTERS))}")
        value = FILTERS[filt](_as_text(value))
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value == int(value) and math.isfinite(value):
        return str(int(value))
    return str(value)


def render_text(template: str, env: dict[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        filters = [f for f in (match.group(2) or "").split("|") if f]
        return _as_text(_resolve(match.group(1), filters, env))

    return _PLACEHOLDER.sub(substitute, template)


def render_value(template: Any, env: dict[str, Any]) -> Any:
    """Render strings inside a JSON-like structure. A string that is exactly one placeholder keeps
    the value's type, so `{"value": "{v}"}` becomes `{"value": 12.5}`, not `"12.5"`."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole and whole.group(1):
            filters = [f for f in (whole.group(2) or "").split("|") if f]
            return _resolve(whole.group(1), filters, env)
        return render_text(template, env)
    if isinstance(template, dict):
        return {key: render_value(value, env) for key, value in template.items()}
    if isinstance(template, list):
        return [render_value(item, env) for item in template]
    return template


def _typed_result(content: str) -> Any:
    """A tool result as a template value: numbers become numbers (for typed arguments)."""
    try:
        number = float(content)
    except ValueError:
        return content
    if not math.isfinite(number):
        return content
    return int(number) if number == int(number) and "." not in content else number


# --- parameter generators -----------------------------------------------------------------------

GENERATOR_KINDS = ("int", "float", "choice", "table_key", "words")


@dataclass(frozen=True)
class Generator:
    kind: str
    spec: dict[str, Any]

    def draw(self, rng: random.Random, tables: dict[str, list[str]]) -> Any:
        if self.kind == "int":
            lo, hi = self.spec["int"]
            return rng.randint(lo, hi)
        if self.kind == "float":
            lo, hi = self.spec["float"]
            decimals = self.spec.get("decimals", 1)
            value = round(rng.uniform(lo, hi), decimals)
            return int(value) if decimals == 0 else value
        if self.kind == "choice":
            return rng.choice(self.spec["choice"])
        if self.kind == "table_key":
            return rng.choice(tables[self.spec["table_key"]])
        lo, hi = self._count()
        words = self.spec["words"]
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    def _count(self) -> tuple[int, int]:
        count = self.spec.get("count", 1)
        return (count, count) if isinstance(count, int) else (count[0], count[1])

    def size(self, tables: dict[str, list[str]]) -> int:
        """How many distinct values it can produce (an upper bound for words)."""
        if self.kind == "int":
            lo, hi = self.spec["int"]
            return max(hi - lo + 1, 1)
        if self.kind == "float":
            lo, hi = self.spec["float"]
            return max(int((hi - lo) * 10 ** self.spec.get("decimals", 1)) + 1, 1)
        if self.kind == "choice":
            return len({json.dumps(c, sort_keys=True) for c in self.spec["choice"]})
        if self.kind == "table_key":
            return len(tables.get(self.spec["table_key"], []))
        lo, hi = self._count()
        n = len(set(self.spec["words"]))
        return sum(n**k for k in range(lo, hi + 1))


# --- scenarios and instances --------------------------------------------------------------------


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


# --- the catalog --------------------------------------------------------------------------------


class Catalog:
    def __init__(self, scenarios: list[Scenario], root: Path, hash: str, registry: ToolRegistry):
        self.scenarios = scenarios
        self.root = root
        self.hash = hash
        self.registry = registry
        self._by_id = {s.id: s for s in scenarios}
        self._specs = {s.id: registry.specs(list(s.tools)) for s in scenarios}
        self._eval_cache: dict[tuple[str, int], list[ScenarioInstance]] = {}

    def __len__(self) -> int:
        return len(self.scenarios)

    def get(self, scenario_id: str) -> Scenario:
        try:
            return self._by_id[scenario_id]
        except KeyError:
            raise KeyError(
                f"no scenario {scenario_id!r} in {self.root}; "
                f"run `autoretrain scenarios list` to see the ids"
            ) from None

    @property
    def train_scenarios(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "train"]

    @property
    def eval_scenarios(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "eval"]

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.scenarios})

    @cached_property
    def _tables(self) -> dict[str, list[str]]:
        return self.registry.tables.keys if self.registry.tables else {}

    def space_size(self, scenario_id: str) -> int:
        return self.get(scenario_id).space_size(self._tables)

    def instance(self, scenario_id: str, seed: int) -> ScenarioInstance:
        scenario = self.get(scenario_id)
        return render_instance(scenario, seed, self.registry, self._specs[scenario.id])

    def _distinct(
        self, scenario: Scenario, start: int, stop: int, count: int, exclude: Collection[str]
    ) -> list[ScenarioInstance]:
        """Up to `count` instances with distinct prompts from consecutive seeds in [start, stop)."""
        found: list[ScenarioInstance] = []
        seen = set(exclude)
        for seed in range(start, min(stop, start + count * _DRAWS_PER_INSTANCE)):
            if len(found) == count:
                break
            instance = self.instance(scenario.id, seed)
            if instance.instance_hash not in seen:
                seen.add(instance.instance_hash)
                found.append(instance)
        return found

    def demo_instances(
        self, per_scenario: int, exclude: Collection[str] = ()
    ) -> list[ScenarioInstance]:
        """Distinct instances of every train scenario from the demo seed range; pass
        `exclude=catalog.evaluation_hashes(n)` to keep evaluation prompts out."""
        start, stop = SEED_RANGES["demo"]
        return [
            instance
            for scenario in self.train_scenarios
            for instance in self._distinct(scenario, start, stop, per_scenario, exclude)
        ]

    def selfplay_instances(
        self,
        n: int,
        seed: int,
        weights: dict[str, float] | None = None,
        exclude: Collection[str] = (),
    ) -> list[ScenarioInstance]:
        """`n` instances of train scenarios from the self-play seed range. `weights` maps a
        scenario id or a category to a relative weight (an id wins over its category; unnamed
        scenarios weigh their catalog `selfplay_weight`, 1 unless set). Instances whose hash is
        in `exclude` are redrawn."""
        scenarios = self.train_scenarios
        chosen_weights = self._weights(scenarios, weights or {})
        if not scenarios or sum(chosen_weights) <= 0:
            raise ValueError("no train scenario has a positive self-play weight")
        rng = random.Random(f"selfplay#{seed}")
        start, stop = SEED_RANGES["selfplay"]
        excluded = set(exclude)
        out: list[ScenarioInstance] = []
        for _ in range(n):
            for _attempt in range(_DRAWS_PER_INSTANCE * 4):
                (scenario,) = rng.choices(scenarios, weights=chosen_weights)
                instance = self.instance(scenario.id, rng.randrange(start, stop))
                if instance.instance_hash not in excluded:
                    out.append(instance)
                    break
        return out

    def _weights(self, scenarios: list[Scenario], weights: dict[str, float]) -> list[float]:
        known = {s.id for s in scenarios} | {s.category for s in scenarios}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ValueError(
                f"self-play weights name unknown scenarios or categories: {unknown}; "
                f"categories are {self.categories()}"
            )
        return [
            float(weights.get(s.id, weights.get(s.category, s.selfplay_weight))) for s in scenarios
        ]

    def eval_instances(
        self, tier: Literal["in_distribution", "held_out"], per_scenario: int
    ) -> list[ScenarioInstance]:
        """in_distribution: train scenarios, seeds from the eval range (at most a quarter of a
        small scenario's instance space); held_out: eval scenarios. Deterministic."""
        if tier not in ("in_distribution", "held_out"):
            raise ValueError(f"unknown evaluation tier {tier!r}; use in_distribution or held_out")
        key = (tier, per_scenario)
        if key not in self._eval_cache:
            start, stop = SEED_RANGES["eval"]
            instances: list[ScenarioInstance] = []
            for scenario in (
                self.train_scenarios if tier == "in_distribution" else self.eval_scenarios
            ):
                count = per_scenario
                if tier == "in_distribution":
                    share = int(scenario.space_size(self._tables) * EVAL_SPACE_SHARE)
                    count = min(per_scenario, max(share, 1))
                instances.extend(self._distinct(scenario, start, stop, count, ()))
            self._eval_cache[key] = instances
        return list(self._eval_cache[key])

    def evaluation_hashes(self, per_scenario: int) -> set[str]:
        return {
            instance.instance_hash
            for tier in ("in_distribution", "held_out")
            for instance in self.eval_instances(tier, per_scenario)  # type: ignore[arg-type]
        }

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "id": s.id,
                "category": s.category,
                "split": s.split,
                "tags": list(s.tags),
                "tools": list(s.tools),
                "calls": len(s.reference_calls),
                "expected": s.expected.get("kind"),
                "planner": s.planner,
                "selfplay_weight": s.selfplay_weight,
                "file": s.file,
            }
            for s in self.scenarios
        ]


# --- loading and validation ---------------------------------------------------------------------

_PAIR = {"type": "array", "minItems": 2, "maxItems": 2}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _expected_case(kind: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
        "then": {
            "properties": {"kind": {"const": kind}, **properties},
            "required": ["kind", *required],
            "additionalProperties": False,
        },
    }


CATALOG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://autoretrain.dev/schema/scenario-catalog/v1.json",
    "title": "autoretrain scenario catalog file",
    "description": "One YAML file of the catalog: optional defaults and a list of scenarios. "
    "Strings in prompt, reference and expected are templates (see docs/scenarios.md).",
    "type": "object",
    "required": ["scenarios"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "defaults": {
            "description": "Values every scenario of this file inherits unless it sets its own.",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "system_prompt": {"type": "string", "minLength": 1},
                "split": {"enum": list(SPLITS)},
                "category": {"type": "string", "minLength": 1},
                "tags": _STRINGS,
                "tools": _STRINGS,
                "budgets": {"$ref": "#/$defs/budgets"},
                "planner": {"type": "boolean"},
                "selfplay_weight": {"$ref": "#/$defs/selfplay_weight"},
            },
        },
        "scenarios": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/scenario"}},
    },
    "$defs": {
        "budgets": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_turns": {"type": "integer", "minimum": 1, "maximum": 100},
                "max_seconds": {"type": "number", "exclusiveMinimum": 0},
                "max_tokens": {"type": "integer", "minimum": 1},
            },
        },
        "generator": {
            "description": "How a parameter is drawn: {int: [lo, hi]} (inclusive), "
            "{float: [lo, hi], decimals: n}, {choice: [...]}, {table_key: table}, "
            "{words: [...], count: n | [lo, hi]}.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["int"],
                    "additionalProperties": False,
                    "properties": {"int": {**_PAIR, "items": {"type": "integer"}}},
                },
                {
                    "type": "object",
                    "required": ["float"],
                    "additionalProperties": False,
                    "properties": {
                        "float": {**_PAIR, "items": {"type": "number"}},
                        "decimals": {"type": "integer", "minimum": 0, "maximum": 6},
                    },
                },
                {
                    "type": "object",
                    "required": ["choice"],
                    "additionalProperties": False,
                    "properties": {"choice": {"type": "array", "minItems": 1}},
                },
                {
                    "type": "object",
                    "required": ["table_key"],
                    "additionalProperties": False,
                    "properties": {"table_key": {"type": "string", "minLength": 1}},
                },
                {
                    "type": "object",
                    "required": ["words"],
                    "additionalProperties": False,
                    "properties": {
                        "words": {**_STRINGS, "minItems": 1},
                        "count": {
                            "oneOf": [
                                {"type": "integer", "minimum": 1},
                                {**_PAIR, "items": {"type": "integer", "minimum": 1}},
                            ]
                        },
                    },
                },
            ],
        },
        "call": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "arguments": {"type": "object"},
            },
        },
        "expected": {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": list(EXPECTED_KINDS)}},
            "allOf": [
                _expected_case(
                    "exact",
                    {"value": {"type": ["string", "number"]}, "ignore_case": {"type": "boolean"}},
                    ["value"],
                ),
                _expected_case(
                    "numeric",
                    {
                        "value": {"type": ["string", "number"]},
                        "tolerance": {"type": "number", "minimum": 0},
                        "relative": {"type": "boolean"},
                    },
                    ["value"],
                ),
                _expected_case(
                    "regex",
                    {
                        "pattern": {"type": "string", "minLength": 1},
                        "ignore_case": {"type": "boolean"},
                        "full": {"type": "boolean"},
                    },
                    ["pattern"],
                ),
                _expected_case(
                    "contains",
                    {
                        "all": _STRINGS,
                        "any": _STRINGS,
                        "none": _STRINGS,
                        "ignore_case": {"type": "boolean"},
                    },
                    [],
                ),
                _expected_case("json_schema", {"schema": {"type": "object"}}, ["schema"]),
                _expected_case(
                    "rubric",
                    {
                        "rubric": {"type": "string", "minLength": 1},
                        "pass_score": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    ["rubric"],
                ),
            ],
        },
        "scenario": {
            "type": "object",
            "required": ["id", "prompt", "reference", "expected"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "category": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "description": {"type": "string"},
                "tags": _STRINGS,
                "split": {"enum": list(SPLITS)},
                "system_prompt": {"type": "string", "minLength": 1},
                "prompt": {"type": "string", "minLength": 1},
                "params": {
                    "type": "object",
                    "propertyNames": {
                        "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                        "not": {"pattern": "^result_[0-9]+$"},
                    },
                    "additionalProperties": {"$ref": "#/$defs/generator"},
                },
                "tools": _STRINGS,
                "reference": {
                    "type": "object",
                    "required": ["answer"],
                    "additionalProperties": False,
                    "properties": {
                        "calls": {"type": "array", "items": {"$ref": "#/$defs/call"}},
                        "answer": {"type": "string", "minLength": 1},
                    },
                },
                "expected": {"$ref": "#/$defs/expected"},
                "budgets": {"$ref": "#/$defs/budgets"},
                "planner": {"type": "boolean"},
                "selfplay_weight": {"$ref": "#/$defs/selfplay_weight"},
            },
        },
        "selfplay_weight": {
            "description": "How often self-play draws this scenario, relative to the others "
            "(default 1; 0 never). `selfplay.category_weights` in the settings overrides it.",
            "type": "number",
            "minimum": 0,
        },
    },
}

_REQUIRED_AFTER_DEFAULTS = ("category", "split", "system_prompt")


def catalog_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted([*root.glob("*.yaml"), *root.glob("*.yml")])


def _content_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    data_dir = base / DATA_DIR
    data_files = sorted(p for p in data_dir.rglob("*") if p.is_file()) if data_dir.is_dir() else []
    for path in [*files, *data_files]:
        digest.update(str(path.relative_to(base)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _field_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _normalized_template(template: str) -> str:
    """The template's shape: case, spacing, final punctuation and parameter names ignored, so
    'What is {x} plus {y}?' and 'what is {a}  plus {b}' count as the same template."""
    shape = _PLACEHOLDER.sub(lambda m: "{}" if m.group(1) else m.group(0), template)
    return re.sub(r"\s+", " ", shape.strip().lower()).rstrip(".?! ")


class _Loader:
    def __init__(self, root: Path):
        self.root = root
        self.issues: list[CatalogIssue] = []

    def issue(self, file: Path | str, scenario: str | None, field_name: str | None, msg: str):
        self.issues.append(CatalogIssue(str(file), scenario, field_name, msg))

    def load(self) -> Catalog:
        import jsonschema

        root = self.root
        if not root.exists():
            raise CatalogError([CatalogIssue(str(root), None, None, "no such file or directory")])
        files = catalog_files(root)
        if not files:
            raise CatalogError(
                [CatalogIssue(str(root), None, None, "no *.yaml scenario files in this folder")]
            )
        data_dir = (root if root.is_dir() else root.parent) / DATA_DIR
        try:
            registry = default_registry(data_dir)
        except ValueError as exc:
            raise CatalogError([CatalogIssue(str(data_dir), None, None, str(exc))]) from None
        validator = jsonschema.Draft202012Validator(CATALOG_SCHEMA)
        scenarios: list[Scenario] = []
        for path in files:
            scenarios.extend(self._load_file(path, validator, registry))
        self._check_catalog(scenarios)
        if self.issues:
            raise CatalogError(self.issues)
        catalog = Catalog(scenarios, root, _content_hash(root, files), registry)
        self._check_rendering(catalog)
        if self.issues:
            raise CatalogError(self.issues)
        return catalog

    def _load_file(self, path: Path, validator: Any, registry: ToolRegistry) -> list[Scenario]:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            self.issue(where, None, None, f"not valid YAML: {getattr(exc, 'problem', exc)}")
            return []
        except (OSError, UnicodeDecodeError) as exc:
            self.issue(path, None, None, f"cannot read: {exc}")
            return []
        if not isinstance(data, dict):
            self.issue(path, None, None, "expected a mapping with a 'scenarios' list at the top")
            return []
        errors = list(validator.iter_errors(data))
        for error in errors:
            self._schema_issue(path, data, error)
        # Scenarios without schema errors are still checked, so one pass reports every problem.
        bad = {_scenario_index(e) for e in errors}
        if None in bad:
            return []
        defaults = data.get("defaults") or {}
        out = []
        for index, raw in enumerate(data["scenarios"]):
            if index in bad:
                continue
            scenario = self._build(path, {**defaults, **raw}, registry)
            if scenario is not None:
                out.append(scenario)
        return out

    def _schema_issue(self, path: Path, data: dict, error: Any) -> None:
        parts = list(error.absolute_path)
        scenario = None
        if len(parts) >= 2 and parts[0] == "scenarios" and isinstance(parts[1], int):
            raw = data["scenarios"][parts[1]]
            scenario = raw.get("id") if isinstance(raw, dict) else None
            scenario = scenario or f"#{parts[1] + 1}"
            parts = parts[2:]
        message = error.message
        if error.validator == "required":
            missing = [k for k in error.validator_value if k not in (error.instance or {})]
            parts = [*parts, missing[0]] if missing else parts
            message = "missing required field"
        elif error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            if extra:
                parts = [*parts, extra[0]]
                known = ", ".join(sorted(error.schema.get("properties", {})))
                message = f"unknown field (known: {known})"
        elif error.validator == "enum" and parts and parts[-1] == "kind":
            message = f"unknown verifier kind {error.instance!r}; known kinds: {', '.join(EXPECTED_KINDS)}"
        elif error.validator == "oneOf" and len(parts) >= 2 and parts[0] == "params":
            message = (
                f"not a parameter generator: {json.dumps(error.instance)}; use one of "
                "{int: [lo, hi]}, {float: [lo, hi], decimals: n}, {choice: [...]}, "
                "{table_key: table}, {words: [...], count: n | [lo, hi]}"
            )
        self.issue(path, scenario, _field_path(parts) or None, message)

    def _build(self, path: Path, raw: dict, registry: ToolRegistry) -> Scenario | None:
        sid = raw["id"]
        ok = True
        for name in _REQUIRED_AFTER_DEFAULTS:
            if name not in raw:
                self.issue(path, sid, name, "missing required field (set it here or in defaults)")
                ok = False
        tools = raw.get("tools", [])
        for index, name in enumerate(tools):
            if name not in registry:
                self.issue(
                    path,
                    sid,
                    f"tools[{index}]",
                    f"unknown tool {name!r}; available: {', '.join(registry.names)}",
                )
                ok = False
        tables = registry.tables.keys if registry.tables else {}
        params: dict[str, Generator] = {}
        for name, spec in (raw.get("params") or {}).items():
            kind = next(k for k in GENERATOR_KINDS if k in spec)
            bad = _generator_problem(kind, spec, tables)
            if bad:
                self.issue(path, sid, f"params.{name}", bad)
                ok = False
            params[name] = Generator(kind, spec)
        calls = raw["reference"].get("calls", [])
        for index, call in enumerate(calls):
            if call["name"] not in tools:
                self.issue(
                    path,
                    sid,
                    f"reference.calls[{index}].name",
                    f"the reference calls {call['name']!r}, which is not in this scenario's "
                    f"tools {tools}",
                )
                ok = False
        ok &= self._check_placeholders(path, sid, raw, set(params), len(calls))
        ok &= self._check_expected(path, sid, raw["expected"])
        if not ok:
            return None
        budgets = Budgets(**{**vars(Budgets()), **(raw.get("budgets") or {})})
        if "max_turns" not in (raw.get("budgets") or {}):
            budgets = Budgets(
                max(budgets.max_turns, len(calls) + 2), budgets.max_seconds, budgets.max_tokens
            )
        return Scenario(
            id=sid,
            category=raw["category"],
            tags=tuple(raw.get("tags", [])),
            split=raw["split"],
            system_prompt=raw["system_prompt"],
            prompt=raw["prompt"],
            params=params,
            tools=tuple(tools),
            reference_calls=tuple(calls),
            reference_answer=raw["reference"]["answer"],
            expected=raw["expected"],
            budgets=budgets,
            planner=bool(raw.get("planner", False)),
            file=str(path),
            description=raw.get("description", ""),
            selfplay_weight=float(raw.get("selfplay_weight", 1.0)),
        )

    def _check_placeholders(
        self, path: Path, sid: str, raw: dict, params: set[str], n_calls: int
    ) -> bool:
        fields: list[tuple[str, Any, set[str]]] = [
            ("system_prompt", raw.get("system_prompt", ""), params),
            ("prompt", raw["prompt"], params),
        ]
        for index, call in enumerate(raw["reference"].get("calls", [])):
            names = params | {f"result_{i}" for i in range(index)}
            fields.append((f"reference.calls[{index}].arguments", call.get("arguments", {}), names))
        results = params | {f"result_{i}" for i in range(n_calls)}
        fields.append(("reference.answer", raw["reference"]["answer"], results))
        fields.append(("expected", raw["expected"], results))
        ok = True
        for field_name, template, names in fields:
            for name, filters in _all_placeholders(template):
                head = name.split(".")[0]
                if head not in names:
                    hint = f"defined here: {', '.join(sorted(names)) or 'nothing'}"
                    self.issue(path, sid, field_name, f"unknown name {{{name}}} ({hint})")
                    ok = False
                for filt in filters:
                    if filt not in FILTERS:
                        self.issue(
                            path,
                            sid,
                            field_name,
                            f"unknown filter {filt!r} in {{{name}}}; known: {', '.join(sorted(FILTERS))}",
                        )
                        ok = False
        return ok

    def _check_expected(self, path: Path, sid: str, expected: dict) -> bool:
        kind = expected["kind"]
        if kind == "contains" and not (expected.get("all") or expected.get("any")):
            self.issue(path, sid, "expected", "a contains check needs an 'all' or an 'any' list")
            return False
        if kind == "regex" and not placeholders(expected["pattern"]):
            try:
                re.compile(expected["pattern"])
            except re.error as exc:
                self.issue(path, sid, "expected.pattern", f"not a valid regular expression: {exc}")
                return False
        if kind == "json_schema":
            import jsonschema

            try:
                jsonschema.validators.validator_for(expected["schema"]).check_schema(
                    expected["schema"]
                )
            except jsonschema.SchemaError as exc:
                self.issue(path, sid, "expected.schema", f"not a valid JSON Schema: {exc.message}")
                return False
        return True

    def _check_catalog(self, scenarios: list[Scenario]) -> None:
        first: dict[str, Scenario] = {}
        for scenario in scenarios:
            if scenario.id in first:
                self.issue(
                    scenario.file,
                    scenario.id,
                    "id",
                    f"duplicate id: also defined in {first[scenario.id].file}",
                )
            else:
                first[scenario.id] = scenario
        train_templates = {
            _normalized_template(s.prompt): s for s in scenarios if s.split == "train"
        }
        for scenario in scenarios:
            if scenario.split != "eval":
                continue
            twin = train_templates.get(_normalized_template(scenario.prompt))
            if twin is not None:
                self.issue(
                    scenario.file,
                    scenario.id,
                    "prompt",
                    f"an eval scenario shares its prompt template with train scenario "
                    f"{twin.id!r} ({twin.file}); held-out templates must be new",
                )

    def _check_rendering(self, catalog: Catalog) -> None:
        """Render two seeds of each scenario and check its reference against its own expected
        outcome, so a broken template or reference fails at load, not in the middle of a loop."""
        from autoretrain.agents.verifier import check_expected

        for scenario in catalog.scenarios:
            for seed in (SEED_RANGES["demo"][0], SEED_RANGES["eval"][0]):
                try:
                    instance = catalog.instance(scenario.id, seed)
                except RenderError as exc:
                    self.issue(scenario.file, scenario.id, exc.field, f"seed {seed}: {exc}")
                    break
                if instance.expected["kind"] == "rubric":
                    continue
                outcome = check_expected(instance.expected, instance.reference_answer)
                if not outcome.passed:
                    self.issue(
                        scenario.file,
                        scenario.id,
                        "reference.answer",
                        f"seed {seed}: the reference answer {instance.reference_answer!r} fails "
                        f"its own expected outcome: {outcome.feedback}",
                    )
                    break


def _scenario_index(error: Any) -> int | None:
    parts = list(error.absolute_path)
    if len(parts) >= 2 and parts[0] == "scenarios" and isinstance(parts[1], int):
        return parts[1]
    return None


def _all_placeholders(template: Any) -> list[tuple[str, list[str]]]:
    if isinstance(template, str):
        return placeholders(template)
    if isinstance(template, dict):
        return [p for value in template.values() for p in _all_placeholders(value)]
    if isinstance(template, list):
        return [p for item in template for p in _all_placeholders(item)]
    return []


def _generator_problem(kind: str, spec: dict, tables: dict[str, list[str]]) -> str | None:
    if kind in ("int", "float"):
        lo, hi = spec[kind]
        if lo > hi:
            return f"empty range [{lo}, {hi}]: the low bound is above the high one"
    if kind == "table_key" and spec["table_key"] not in tables:
        known = ", ".join(sorted(tables)) or f"none (put key,value CSV files in {DATA_DIR}/)"
        return f"unknown table {spec['table_key']!r}; tables: {known}"
    if (
        kind == "words"
        and isinstance(spec.get("count"), list)
        and spec["count"][0] > spec["count"][1]
    ):
        return f"empty count range {spec['count']}"
    return None


def load_catalog(path: Path | str = "scenarios") -> Catalog:
    """Load and validate every `*.yaml` in `path` (or one file) with the tables in `data/` beside
    them. Raises CatalogError listing every problem, each naming the file, scenario and field."""
    return _Loader(Path(path)).load()
