"""Tools an agent may call, with OpenAI `tools` specs, safe execution and a timeout.

`ToolRegistry.execute` never raises: an unknown tool, malformed JSON arguments, arguments of the
wrong type, a tool that raises and a tool that hangs all come back as `ToolResult(ok=False, ...)`
whose `content` the workflow hands to the model as the tool message, so the model can correct
itself. Each call runs on a daemon thread so a hung tool costs the caller only its timeout.

The built-in tools are pure and bounded (the calculator refuses huge powers, because one big
integer power holds the GIL and no thread timeout could interrupt it). Numbers in results are
rounded to two decimals and printed without trailing zeros, so a short final answer can copy them.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

DEFAULT_TIMEOUT_S = 5.0
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15


@dataclass
class ToolResult:
    ok: bool
    content: str  # what the model sees as the tool message
    error: str | None = None
    duration_s: float = 0.0


class ToolError(ValueError):
    """A tool's own, expected refusal (bad expression, unknown key): its message goes to the model."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    function: Callable[..., str]

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None, tables: Tables | None = None):
        self.tables = tables  # the lookup tables behind `lookup_table`, if any
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        cls = jsonschema.validators.validator_for(tool.parameters)
        cls.check_schema(tool.parameters)
        self._tools[tool.name] = tool
        self._validators[tool.name] = cls(tool.parameters)

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> Tool:
        return self._tools[name]

    def specs(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI tool specs for `names` (in that order), or for every tool."""
        chosen = self.names if names is None else names
        unknown = [n for n in chosen if n not in self._tools]
        if unknown:
            raise KeyError(f"unknown tools {unknown}; known: {self.names}")
        return [self._tools[n].spec() for n in chosen]

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run a tool in the caller's thread, without a timeout: for the bounded built-ins when
        rendering reference solutions, thousands of times per second. Still never raises."""
        t0 = time.perf_counter()
        problem = self._check(name, arguments)
        if problem:
            return _failure(problem, t0)
        try:
            return ToolResult(True, self._tools[name].function(**arguments), None, _since(t0))
        except ToolError as exc:
            return _failure(str(exc), t0)
        except Exception as exc:  # a tool bug must reach the model as a result, not crash the run
            return _failure(f"tool {name!r} failed: {type(exc).__name__}: {exc}", t0)

    def execute(
        self, name: str, arguments: str | dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> ToolResult:
        """Run a tool call as a model made it: arguments as a JSON string (or a dict)."""
        t0 = time.perf_counter()
        if name not in self._tools:
            return _failure(f"unknown tool {name!r}; available tools: {', '.join(self.names)}", t0)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                return _failure(
                    f"arguments for {name!r} are not valid JSON ({exc.msg} at position {exc.pos}): "
                    f"{arguments[:200]!r}",
                    t0,
                )
        if not isinstance(arguments, dict):
            return _failure(
                f"arguments for {name!r} must be a JSON object, got {type(arguments).__name__}", t0
            )
        box: list[ToolResult] = []
        worker = threading.Thread(
            target=lambda: box.append(self.call(name, arguments)),
            name=f"tool-{name}",
            daemon=True,  # a hung tool must not keep the process alive
        )
        worker.start()
        worker.join(timeout_s)
        if not box:
            return _failure(f"tool {name!r} timed out after {timeout_s:g} s", t0)
        result = box[0]
        result.duration_s = _since(t0)
        return result

    def _check(self, name: str, arguments: dict[str, Any]) -> str | None:
        if name not in self._tools:
            return f"unknown tool {name!r}; available tools: {', '.join(self.names)}"
        errors = sorted(self._validators[name].iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        parts = []
        for err in errors[:3]:
            where = ".".join(str(p) for p in err.path)
            parts.append(f"argument {where!r}: {err.message}" if where else err.message)
        return f"bad arguments for {name!r}: " + "; ".join(parts)


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _failure(message: str, t0: float) -> ToolResult:
    return ToolResult(False, f"error: {message}", message, _since(t0))


def format_number(value: float) -> str:
    """Round to two decimals and drop trailing zeros: 84, 3.11, -0.5."""
    if isinstance(value, bool) or not math.isfinite(value):
        raise ToolError(f"result is not a finite number: {value}")
    rounded = round(float(value), 2)
    if rounded == 0:
        return "0"
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.2f}".rstrip("0").rstrip(".")


# --- calculator -------------------------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def evaluate_arithmetic(expression: str) -> float:
    """Evaluate + - * / // % ** and parentheses over numbers. Parsed with `ast`; nothing
    else (names, calls, attributes) is accepted, so no Python is ever evaluated."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text:
        raise ToolError("empty expression; send arithmetic such as '12 * 7'")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(
            f"cannot parse {expression!r}; use numbers and + - * / ( ), e.g. '12 * 7'"
        ) from None
    return _eval_node(tree.body, expression)


def _eval_node(node: ast.AST, source: str) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand, source))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left, source), _eval_node(node.right, source)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > 1e6):
            raise ToolError(f"power too large in {source!r} (exponent at most {MAX_EXPONENT})")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ToolError(f"division by zero in {source!r}")
        value = _BINARY[type(node.op)](left, right)
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
            raise ToolError(f"result of {source!r} is out of range")
        return value
    raise ToolError(
        f"unsupported element {ast.unparse(node)!r} in {source!r}; only numbers, + - * / // % ** "
        "and parentheses are allowed"
    )


def calculator(expression: str) -> str:
    return format_number(evaluate_arithmetic(expression))


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression with + - * / and parentheses.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. 12 * 7"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    function=calculator,
)


# --- unit conversion --------------------------------------------------------------------------

# unit -> (dimension, factor to the dimension's base unit)
_LINEAR_UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001),
    "cm": ("length", 0.01),
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "yd": ("length", 0.9144),
    "mi": ("length", 1609.344),
    "g": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "oz": ("mass", 0.028349523125),
    "lb": ("mass", 0.45359237),
    "ml": ("volume", 0.001),
    "l": ("volume", 1.0),
    "gal": ("volume", 3.785411784),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
}
_TEMPERATURE_TO_C: dict[str, Callable[[float], float]] = {
    "c": lambda v: v,
    "f": lambda v: (v - 32.0) * 5.0 / 9.0,
    "k": lambda v: v - 273.15,
}
_TEMPERATURE_FROM_C: dict[str, Callable[[float], float]] = {
    "c": lambda v: v,
    "f": lambda v: v * 9.0 / 5.0 + 32.0,
    "k": lambda v: v + 273.15,
}
UNITS: list[str] = [*_LINEAR_UNITS, *_TEMPERATURE_TO_C]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    source, target = from_unit.strip().lower(), to_unit.strip().lower()
    for unit in (source, target):
        if unit not in _LINEAR_UNITS and unit not in _TEMPERATURE_TO_C:
            raise ToolError(f"unknown unit {unit!r}; known units: {', '.join(UNITS)}")
    if source in _TEMPERATURE_TO_C or target in _TEMPERATURE_TO_C:
        if not (source in _TEMPERATURE_TO_C and target in _TEMPERATURE_TO_C):
            raise ToolError(f"cannot convert {source} to {target}: different kinds of quantity")
        return _TEMPERATURE_FROM_C[target](_TEMPERATURE_TO_C[source](value))
    (dim_a, factor_a), (dim_b, factor_b) = _LINEAR_UNITS[source], _LINEAR_UNITS[target]
    if dim_a != dim_b:
        raise ToolError(f"cannot convert {source} ({dim_a}) to {target} ({dim_b})")
    return value * factor_a / factor_b


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    return format_number(convert(value, from_unit, to_unit))


CONVERT_UNITS = Tool(
    name="convert_units",
    description="Convert a value between units of length, mass, volume, time or temperature.",
    parameters={
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "from_unit": {"type": "string", "enum": UNITS},
            "to_unit": {"type": "string", "enum": UNITS},
        },
        "required": ["value", "from_unit", "to_unit"],
        "additionalProperties": False,
    },
    function=convert_units,
)


# --- lookup tables ----------------------------------------------------------------------------


class Tables:
    """Two-column CSV tables (`key,value` header) from a data folder, keys matched ignoring case."""

    def __init__(self, data_dir: Path | None):
        self.rows: dict[str, dict[str, str]] = {}
        self.keys: dict[str, list[str]] = {}
        if data_dir is None or not data_dir.is_dir():
            return
        for path in sorted(data_dir.glob("*.csv")):
            self.load(path)

    def load(self, path: Path) -> None:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != ["key", "value"]:
                raise ValueError(f"{path}: a table needs the header 'key,value', got {header}")
            rows: dict[str, str] = {}
            keys: list[str] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != 2 or not row[0].strip():
                    raise ValueError(f"{path}:{line}: expected 'key,value', got {row}")
                key = row[0].strip()
                if key.lower() in rows:
                    raise ValueError(f"{path}:{line}: duplicate key {key!r}")
                rows[key.lower()] = row[1].strip()
                keys.append(key)
        self.rows[path.stem] = rows
        self.keys[path.stem] = keys

    def lookup(self, table: str, key: str) -> str:
        if table not in self.rows:
            raise ToolError(f"unknown table {table!r}; tables: {', '.join(sorted(self.rows))}")
        value = self.rows[table].get(key.strip().lower())
        if value is None:
            sample = ", ".join(self.keys[table][:5])
            raise ToolError(f"no key {key!r} in table {table!r} (keys look like: {sample})")
        return value


def lookup_tool(tables: Tables) -> Tool:
    return Tool(
        name="lookup_table",
        description="Look up the value stored under a key in a named table.",
        parameters={
            "type": "object",
            "properties": {
                "table": {
                    "type": "string",
                    **({"enum": sorted(tables.rows)} if tables.rows else {}),
                },
                "key": {"type": "string"},
            },
            "required": ["table", "key"],
            "additionalProperties": False,
        },
        function=tables.lookup,
    )


def default_registry(data_dir: Path | None = None) -> ToolRegistry:
    """calculator, convert_units and lookup_table over the CSV tables in `data_dir`."""
    tables = Tables(Path(data_dir) if data_dir is not None else None)
    return ToolRegistry([CALCULATOR, CONVERT_UNITS, lookup_tool(tables)], tables=tables)
