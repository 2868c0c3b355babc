"""The JSON Schema of one catalog YAML file (`autoretrain scenarios schema` prints it)."""

from __future__ import annotations

from typing import Any

from autoretrain.scenarios.model import EXPECTED_KINDS, SPLITS

_PAIR = {"type": "array", "minItems": 2, "maxItems": 2}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # module:function


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
        "tools": {
            "description": "Tools by import path that join the catalog's registry: "
            "'module:function', or {function, name, description, parameters}.",
            "type": "array",
            "items": {"$ref": "#/$defs/tool"},
        },
        "scenarios": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/scenario"}},
    },
    "$defs": {
        "tool": {
            "oneOf": [
                {"type": "string", "pattern": _IMPORT_PATH},
                {
                    "type": "object",
                    "required": ["function"],
                    "additionalProperties": False,
                    "properties": {
                        "function": {"type": "string", "pattern": _IMPORT_PATH},
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "description": {"type": "string", "minLength": 1},
                        "parameters": {
                            "description": "JSON Schema of the arguments object; default: "
                            "derived from the function's type hints and docstring.",
                            "type": "object",
                        },
                    },
                },
            ]
        },
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
                _expected_case(
                    "python",
                    {
                        "function": {
                            "description": "'module:function', or the name of an installed "
                            "autoretrain.graders entry point",
                            "type": "string",
                            "minLength": 1,
                        },
                        "args": {"type": "object"},
                    },
                    ["function"],
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
