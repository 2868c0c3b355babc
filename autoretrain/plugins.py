"""Tools and graders from outside the package: import paths, entry points, a rubric judge.

A team extends the built-in workflow without editing autoretrain:

- **Tools by import path** (`module:function`), named in a catalog file's top-level `tools:` or
  in the settings' `tools:`. The JSON Schema of the arguments is given, or derived from the
  function's type hints (str, int, float, bool, list, Literal, Optional) and its docstring.
- **Entry points**: the group `autoretrain.tools` (a `Tool`, or a callable returning Tools) joins
  every catalog's registry; the group `autoretrain.graders` names graders that
  `expected: {kind: python, function: <name>}` may use instead of an import path.
- **Python graders** (`expected.kind: python`): `function(answer, instance, **args)` returns a
  bool or `(passed, score, feedback)`.
- **The rubric judge**: `graders.rubric_profile` in the settings names the provider profile
  whose model grades `rubric` scenarios (`verifier_from_settings`).

Every problem is raised as `PluginError` with a message a loader can put beside the file,
scenario and field it came from.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoretrain.agents.tools import Tool, format_number

if TYPE_CHECKING:
    from autoretrain.agents.verifier import VerifierAgent
    from autoretrain.providers.base import ChatModel
    from autoretrain.scenarios.expected import Outcome
    from autoretrain.settings import Settings

TOOLS_GROUP = "autoretrain.tools"
GRADERS_GROUP = "autoretrain.graders"
GRADER_TIMEOUT_S = 30.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name


class PluginError(ValueError):
    """A tool or grader that cannot be used; the message says why."""


# --- import paths -----------------------------------------------------------------------------


def import_object(path: str) -> Any:
    """`package.module:attribute` (the attribute may be dotted) -> the object."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise PluginError(f"{path!r} is not an import path; write it as 'package.module:function'")
    module_name, attribute = path.split(":")
    if not module_name or not attribute:
        raise PluginError(f"{path!r} is not an import path; write it as 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a broken plugin module must be reported, not crash the loader
        raise PluginError(
            f"cannot import module {module_name!r} for {path!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj


# --- JSON Schema from type hints --------------------------------------------------------------

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(annotation: Any) -> tuple[dict[str, Any], bool]:
    """(JSON Schema, accepts None) for one annotation; PluginError for what has no schema."""
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}, False
    if annotation is list:
        return {"type": "array"}, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        items, _ = _schema_for(args[0]) if args else ({}, False)
        return ({"type": "array", "items": items} if items else {"type": "array"}), False
    if origin is typing.Literal:
        kinds = {_SCALARS.get(type(a)) for a in args}
        if None in kinds or len(kinds) != 1:
            raise PluginError(f"Literal{list(args)} mixes types or holds non-scalar values")
        return {"type": kinds.pop(), "enum": list(args)}, False
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):  # Optional[X]
            inner, _ = _schema_for(rest[0])
            return inner, True
    raise PluginError(f"no JSON Schema for the type {annotation!r}")


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """The summary (first paragraph) and per-argument descriptions, from a Google-style
    `Args:` section or reST `:param name:` lines."""
    text = inspect.cleandoc(doc or "")
    summary = " ".join(text.split("\n\n", 1)[0].split()) if text else ""
    if re.match(r"^(Args|Arguments|Parameters)\s*:", summary) or summary.startswith(":param"):
        summary = ""
    params: dict[str, str] = {}
    for match in re.finditer(r":param\s+(?:\w+\s+)?(\w+)\s*:\s*(.+)", text):
        params[match.group(1)] = match.group(2).strip()
    section = re.search(r"^(?:Args|Arguments|Parameters)\s*:\s*\n((?:[ \t]+.*\n?)+)", text, re.M)
    if section:
        current = None
        for line in section.group(1).splitlines():
            entry = re.match(r"^\s{1,8}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if entry:
                current = entry.group(1)
                params[current] = entry.group(2).strip()
            elif current and line.strip():
                params[current] = f"{params[current]} {line.strip()}".strip()
    return summary, params


def derive_parameters(function: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of a function's keyword arguments, from its type hints and docstring.
    Every parameter needs a hint; one with a default (or Optional) is not required."""
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)
    except Exception as exc:  # unresolvable forward references, builtins without a signature
        raise PluginError(f"cannot read the signature of {function!r}: {exc}") from None
    _, described = _docstring_parts(function.__doc__)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise PluginError(
                f"parameter {name!r} takes *args/**kwargs, which a JSON Schema cannot describe; "
                "give 'parameters'"
            )
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise PluginError(f"parameter {name!r} is positional-only; tools are called by name")
        if name not in hints:
            raise PluginError(
                f"parameter {name!r} has no type hint; annotate it (str, int, float, bool, "
                "list, Literal, Optional) or give 'parameters'"
            )
        try:
            schema, nullable = _schema_for(hints[name])
        except PluginError as exc:
            raise PluginError(f"parameter {name!r}: {exc}; give 'parameters'") from None
        if nullable:  # Optional[X]: null is a value the model may send, as the hint says
            schema = {**schema, "type": [schema["type"], "null"]}
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        if name in described:
            schema = {**schema, "description": described[name]}
        properties[name] = schema
        if parameter.default is parameter.empty and not nullable:
            required.append(name)
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _as_text(value: Any) -> str:
    """A tool's result as the tool message: numbers the way the built-ins print them (so a short
    final answer can copy them), containers as JSON, anything else as str."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def tool_from_function(
    function: Callable[..., Any],
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Tool:
    """A Tool around a plain Python function. Without `parameters`, the schema is derived
    (`derive_parameters`); without `description`, the docstring's first paragraph."""
    if not callable(function):
        raise PluginError(f"{function!r} is not callable")
    name = name or getattr(function, "__name__", "")
    if not _NAME.match(name or ""):
        raise PluginError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    summary, _ = _docstring_parts(function.__doc__)
    if parameters is None:
        parameters = derive_parameters(function)
    else:
        import jsonschema

        try:
            jsonschema.validators.validator_for(parameters).check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise PluginError(f"'parameters' is not a valid JSON Schema: {exc.message}") from None

    def run(**arguments: Any) -> str:
        return _as_text(function(**arguments))

    run.__name__ = name
    return Tool(
        name=name,
        description=description or summary or f"Call {name}.",
        parameters=parameters,
        function=run,
    )


@dataclass(frozen=True)
class ToolRef:
    """A tool named by import path, as written in a catalog file or the settings."""

    function: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @classmethod
    def parse(cls, raw: Any) -> ToolRef:
        if isinstance(raw, str):
            return cls(raw)
        if isinstance(raw, ToolRef):
            return raw
        if hasattr(raw, "model_dump"):  # the settings' ToolSpec
            raw = raw.model_dump()
        if not isinstance(raw, dict) or "function" not in raw:
            raise PluginError(
                f"expected 'module:function' or a mapping with 'function', got {raw!r}"
            )
        extra = sorted(set(raw) - {"function", "name", "description", "parameters"})
        if extra:
            raise PluginError(
                f"unknown fields {extra} (known: description, function, name, parameters)"
            )
        return cls(raw["function"], raw.get("name"), raw.get("description"), raw.get("parameters"))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def build(self) -> Tool:
        return tool_from_function(
            import_object(self.function), self.name, self.description, self.parameters
        )


# --- entry points -----------------------------------------------------------------------------


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    # Sorted and deduplicated by name: the same distribution found twice on sys.path (an
    # editable install beside a wheel) must not register its tools twice.
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        found.setdefault(ep.name, ep)
    return [found[name] for name in sorted(found)]


def _where(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    owner = f" (distribution {dist.name})" if dist is not None else ""
    return f"entry point {ep.group}:{ep.name} = {ep.value}{owner}"


def entry_point_tools() -> tuple[list[Tool], list[tuple[str, str]]]:
    """The tools of every installed `autoretrain.tools` entry point, and (where, problem) for
    each entry point that could not be used. An entry point is a Tool, or a callable that
    returns a Tool or a list of Tools."""
    tools: list[Tool] = []
    problems: list[tuple[str, str]] = []
    for ep in _entry_points(TOOLS_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # one broken plugin must not hide the others
            problems.append((_where(ep), f"cannot load: {type(exc).__name__}: {exc}"))
            continue
        if isinstance(obj, Tool):
            tools.append(obj)
            continue
        if not callable(obj):
            problems.append((_where(ep), f"is neither a Tool nor a callable: {obj!r}"))
            continue
        try:
            made = obj()
        except Exception as exc:
            problems.append((_where(ep), f"failed making its tools: {type(exc).__name__}: {exc}"))
            continue
        made = [made] if isinstance(made, Tool) else made
        if not isinstance(made, list | tuple) or not all(isinstance(t, Tool) for t in made):
            problems.append((_where(ep), f"returned {made!r}, not a list of Tools"))
            continue
        tools.extend(made)
    return tools, problems


# --- python graders ---------------------------------------------------------------------------

_GRADERS: dict[str, Callable[..., Any]] = {}
_GRADERS_LOCK = threading.Lock()


def resolve_grader(reference: str) -> Callable[..., Any]:
    """A grader by import path (`module:function`) or by the name of an installed
    `autoretrain.graders` entry point. Cached: self-play checks thousands of answers."""
    with _GRADERS_LOCK:
        if reference in _GRADERS:
            return _GRADERS[reference]
    if ":" in reference:
        grader = import_object(reference)
    else:
        matches = [ep for ep in _entry_points(GRADERS_GROUP) if ep.name == reference]
        if not matches:
            known = ", ".join(ep.name for ep in _entry_points(GRADERS_GROUP)) or "none installed"
            raise PluginError(
                f"no grader {reference!r}: not an import path ('module:function') and no "
                f"{GRADERS_GROUP} entry point of that name (installed: {known})"
            )
        try:
            grader = matches[0].load()
        except Exception as exc:
            raise PluginError(
                f"cannot load {_where(matches[0])}: {type(exc).__name__}: {exc}"
            ) from None
    if not callable(grader):
        raise PluginError(f"grader {reference!r} is not callable: {grader!r}")
    with _GRADERS_LOCK:
        _GRADERS[reference] = grader
    return grader


def check_python(
    expected: dict[str, Any], answer: str, instance: Any, timeout_s: float = GRADER_TIMEOUT_S
) -> Outcome:
    """Run `expected.function(answer, instance, **expected.args)`. A grader that cannot be
    found, raises, hangs past `timeout_s` or returns something else than a bool or
    (passed, score, feedback) fails the check, with the reason; it never crashes the run."""
    from autoretrain.scenarios.expected import Outcome

    reference = str(expected.get("function", ""))
    try:
        grader = resolve_grader(reference)
    except PluginError as exc:
        return Outcome(False, 0.0, f"the python grader is unavailable: {exc}")
    args = expected.get("args") or {}
    box: list[Any] = []

    def call() -> None:
        try:
            box.append(grader(answer, instance, **args))
        except Exception as exc:  # the grader's bug is a failed check, reported
            box.append(exc)

    # On a daemon thread, as tools run: a hung grader costs its timeout, not the whole loop.
    worker = threading.Thread(target=call, name="python-grader", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not box:
        return Outcome(
            False, 0.0, f"the python grader {reference!r} timed out after {timeout_s:g} s"
        )
    result = box[0]
    if isinstance(result, Exception):
        return Outcome(
            False,
            0.0,
            f"the python grader {reference!r} failed: {type(result).__name__}: {result}",
        )
    if isinstance(result, bool):
        return Outcome(
            result, 1.0 if result else 0.0, f"{reference} says {'pass' if result else 'fail'}"
        )
    if isinstance(result, tuple | list) and len(result) == 3 and isinstance(result[0], bool):
        passed, score, feedback = result
        if isinstance(score, int | float) and not isinstance(score, bool):
            return Outcome(passed, float(score), str(feedback))
    return Outcome(
        False,
        0.0,
        f"the python grader {reference!r} returned {result!r}; return a bool or "
        "(passed, score, feedback)",
    )


# --- the rubric judge -------------------------------------------------------------------------


class ProfileGrader:
    """The rubric judge: the chat model of a provider profile, built on first use.

    Built lazily and dropped when pickled, because the verifier travels to self-play's spawned
    workers, and a local model or an HTTP client does not pickle; each process builds its own."""

    def __init__(self, settings: Settings, profile: str, slot: str):
        self.settings = settings
        self.profile = profile
        self.slot = slot
        self.name = f"{profile}/{slot}"
        self._model: ChatModel | None = None
        self._lock = threading.Lock()

    def model(self) -> ChatModel:
        with self._lock:
            if self._model is None:
                self._model = build_judge(self.settings, self.profile, self.slot)
            return self._model

    def chat(self, messages: Any, tools: Any = None, sampling: Any = None) -> Any:
        model = self.model()
        return model.chat(messages, tools, sampling) if sampling else model.chat(messages, tools)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def build_judge(settings: Settings, profile: str, slot: str) -> ChatModel:
    """The chat model of `profile`'s `slot`, through the same factory the slots use."""
    from autoretrain.providers.factory import chat_model_for

    return chat_model_for(settings.model_copy(update={"provider": profile}), slot)


def verifier_from_settings(settings: Settings, grader: Any = None) -> VerifierAgent:
    """The VerifierAgent self-play, the replay and pass rates use: with the rubric judge of
    `graders.rubric_profile` when one is named (or `grader`, a ChatModel, given directly)."""
    from autoretrain.agents.verifier import VerifierAgent

    cfg = settings.graders
    if grader is None and cfg.rubric_profile:
        grader = ProfileGrader(settings, cfg.rubric_profile, cfg.rubric_slot)
    return VerifierAgent(grader, timeout_s=cfg.timeout_s)
