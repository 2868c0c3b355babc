"""Judge one JSON line by the schema itself, and say why it fails in words a person can act on.

This is the verdict for every line the ingest fast path cannot confirm, and for every line of
`autoretrain import`: one parser (pydantic's, which refuses lone surrogates, nesting deeper
than 201 levels, trailing commas and `NaN`) and one set of rules (`Run`), so a record that
import accepts is one that ingest stores, and one `review show` can load.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from autoretrain.runs.schema import KNOWN_SCHEMA_VERSIONS, Run

MAX_PROBLEMS = 3  # a reason names at most this many problems of one line

# pydantic error type -> the JSON kind it expected
EXPECTED = {
    "string_type": "string",
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "datetime_type": "timestamp",
    "datetime_parsing": "timestamp",
    "datetime_from_date_parsing": "timestamp",
}


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def where(loc: tuple[Any, ...]) -> str:
    """('messages', 2, 'content') -> messages[2].content"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "record"


def _problem(err: dict[str, Any]) -> str:
    kind, loc, value = err["type"], where(err["loc"]), err.get("input")
    if kind == "json_invalid":
        detail = err.get("ctx", {}).get("error", err["msg"])
        if "recursion limit" in detail:
            return f"nested too deeply: {detail} (pydantic reads at most 201 levels)"
        return f"invalid JSON: {detail}"
    if kind == "missing":
        return f"missing {loc}"
    if err["loc"] == ("schema_version",) and kind == "literal_error":
        return (
            f"unknown schema_version: {value!r} "
            f"(this version of autoretrain reads {sorted(KNOWN_SCHEMA_VERSIONS)})"
        )
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == r"\S":
        return f"invalid value: {loc} is empty or blank"
    if kind.startswith("datetime") and isinstance(value, str):
        detail = err.get("ctx", {}).get("error", "")
        return f"invalid value: {loc} {value[:60]!r} is not a timestamp" + (
            f" ({detail})" if detail else ""
        )
    if kind in EXPECTED:
        return f"wrong type: {loc} is {json_kind(value)}, expected {EXPECTED[kind]}"
    if kind == "model_type" or (kind == "dict_type" and not err["loc"]):
        return f"not an object: the line is a JSON {json_kind(value)}"
    message = err["msg"].removeprefix("Value error, ")
    return f"invalid value: {loc}: {message}"


def reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    if errors and not errors[0]["loc"] and errors[0]["type"] in ("model_type", "dict_type"):
        return f"not an object: the line is a JSON {json_kind(errors[0].get('input'))}"
    words = [_problem(e) for e in errors[:MAX_PROBLEMS]]
    more = len(errors) - MAX_PROBLEMS
    return "; ".join(words) + (f"; and {more} more" if more > 0 else "")


def judge(text: str | bytes) -> tuple[Run | None, str | None]:
    """(run, None) if the schema accepts the JSON text, else (None, reason)."""
    try:
        return Run.model_validate_json(text), None
    except ValidationError as exc:
        return None, reason(exc)
    except (ValueError, RecursionError, OverflowError) as exc:  # never lose a line to a crash
        return None, f"invalid value: {type(exc).__name__}: {exc}"
