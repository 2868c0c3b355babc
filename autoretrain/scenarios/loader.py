"""Loading and validating the catalog: every problem is collected and reported at once.

The loader checks each file against the schema, then each scenario (tools, generators,
placeholders, expected outcome), then the catalog as a whole (duplicate ids; held-out templates
that reappear among the train scenarios), and finally renders two seeds of every scenario and
checks its reference answer against its own expected outcome.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoretrain.agents.tools import ToolRegistry, default_registry
from autoretrain.scenarios.catalog import Catalog
from autoretrain.scenarios.expected import check_expected
from autoretrain.scenarios.generators import GENERATOR_KINDS, Generator
from autoretrain.scenarios.model import DATA_DIR, EXPECTED_KINDS, SEED_RANGES, Budgets, Scenario
from autoretrain.scenarios.render import RenderError
from autoretrain.scenarios.schema import CATALOG_SCHEMA
from autoretrain.scenarios.templates import (
    FILTERS,
    all_placeholders,
    normalized_template,
    placeholders,
)


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


_REQUIRED_AFTER_DEFAULTS = ("category", "split", "system_prompt")


def catalog_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted([*root.glob("*.yaml"), *root.glob("*.yml")])


@contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """`folder` (and the working directory, as `python -m` has it) first on sys.path."""
    added = [str(p) for p in (folder.resolve(), Path.cwd()) if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def _forget_other_copies(function: str, root: Path) -> None:
    """A module of the same name already imported from elsewhere (another copy of this
    catalog) is dropped, so this catalog's own file is the one that loads."""
    name = function.split(":", 1)[0]
    base = root if root.is_dir() else root.parent
    own = (base / (name.replace(".", "/") + ".py")).resolve()
    loaded = sys.modules.get(name)
    if own.is_file() and loaded is not None and getattr(loaded, "__file__", None) != str(own):
        del sys.modules[name]


def _source_file(function: str) -> Path | None:
    """The file that defines an imported tool's module, when it is a plain file."""
    module = sys.modules.get(function.split(":", 1)[0])
    path = getattr(module, "__file__", None)
    return Path(path).resolve() if path and Path(path).is_file() else None


def _content_hash(
    root: Path,
    files: list[Path],
    tool_refs: list[dict] | None = None,
    tool_sources: list[Path] | None = None,
) -> str:
    digest = hashlib.sha256()
    for source in sorted(tool_sources or []):
        # A catalog tool's code decides its results, which the references and the verifier
        # read: changing it changes the catalog. Catalogs without such tools hash as before.
        digest.update(source.name.encode())
        digest.update(b"\0")
        digest.update(source.read_bytes())
        digest.update(b"\0")
    if tool_refs:
        # Tools from the settings change what the agent is offered, so they are part of the
        # catalog's identity; without any, the hash is the files' alone (as it always was).
        digest.update(json.dumps(tool_refs, sort_keys=True).encode())
        digest.update(b"\0")
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


class _Loader:
    def __init__(self, root: Path, tools: list[Any] | None = None):
        self.root = root
        self.tools = list(tools or [])
        self.tool_refs: list[dict] = []  # the settings' tools, as plain data for the hash
        self.issues: list[CatalogIssue] = []
        self._tool_origin: dict[str, str] = {}  # tool name -> where it was defined
        # Source files of the catalog's own tools: their code is part of the catalog's identity.
        self.tool_sources: list[Path] = []

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
        self._tool_origin = {name: "the built-in tools" for name in registry.names}
        self._add_plugin_tools(registry)
        validator = jsonschema.Draft202012Validator(CATALOG_SCHEMA)
        # Every file is read before any scenario is built: a file's top-level `tools` serve the
        # whole catalog, so a scenario may use a tool another file defines.
        parsed = [(path, self._parse_file(path, validator)) for path in files]
        base = root if root.is_dir() else root.parent
        # A catalog's own tool modules sit beside its YAML (`shipdesk:parcel_cost`), so the
        # folder is importable while they load, from any working directory or command.
        with _importable(base):
            for path, (data, _) in parsed:
                for index, raw in enumerate((data or {}).get("tools") or []):
                    self._add_tool(registry, raw, str(path), f"tools[{index}]")
        scenarios: list[Scenario] = []
        for path, (data, bad) in parsed:
            if data is not None:
                scenarios.extend(self._build_file(path, data, bad, registry))
        self._check_catalog(scenarios)
        if self.issues:
            raise CatalogError(self.issues)
        digest = _content_hash(root, files, self.tool_refs, self.tool_sources)
        catalog = Catalog(scenarios, root, digest, registry, self.tool_refs)
        self._check_rendering(catalog)
        if self.issues:
            raise CatalogError(self.issues)
        return catalog

    def _add_plugin_tools(self, registry: ToolRegistry) -> None:
        """Installed `autoretrain.tools` entry points, then the settings' `tools`."""
        from autoretrain.plugins import entry_point_tools

        tools, problems = entry_point_tools()
        for where, problem in problems:
            self.issue(where, None, None, problem)
        for tool in tools:
            self._register(registry, tool, f"entry point {tool.name!r}", None)
        for index, raw in enumerate(self.tools):
            self._add_tool(registry, raw, "settings", f"tools[{index}]", from_settings=True)

    def _add_tool(
        self, registry: ToolRegistry, raw: Any, file: str, where: str, from_settings: bool = False
    ) -> None:
        from autoretrain.plugins import PluginError, ToolRef

        try:
            ref = ToolRef.parse(raw)
            if from_settings:
                self.tool_refs.append(ref.as_dict())
            else:
                _forget_other_copies(ref.function, self.root)
            tool = ref.build()
            if not from_settings:
                source = _source_file(ref.function)
                if source is not None and source not in self.tool_sources:
                    self.tool_sources.append(source)
        except PluginError as exc:
            function = raw if isinstance(raw, str) else getattr(raw, "function", None)
            if isinstance(raw, dict):
                function = raw.get("function")
            field_name = where if isinstance(raw, str) else f"{where}.function"
            self.issue(file, None, field_name, f"tool {function!r}: {exc}")
            return
        self._register(registry, tool, file, where)

    def _register(self, registry: ToolRegistry, tool: Any, file: str, where: str | None) -> None:
        import jsonschema

        if tool.name in self._tool_origin:
            self.issue(
                file,
                None,
                where,
                f"tool name {tool.name!r} is already taken by {self._tool_origin[tool.name]}; "
                "give this one another 'name'",
            )
            return
        try:
            registry.register(tool)
        except jsonschema.SchemaError as exc:
            self.issue(file, None, where, f"tool {tool.name!r}: bad parameters: {exc.message}")
            return
        self._tool_origin[tool.name] = f"{file} ({where})" if where else file

    def _parse_file(self, path: Path, validator: Any) -> tuple[dict | None, set[int | None]]:
        """The file's data (None when unusable) and the scenario indexes with schema errors."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            self.issue(where, None, None, f"not valid YAML: {getattr(exc, 'problem', exc)}")
            return None, set()
        except (OSError, UnicodeDecodeError) as exc:
            self.issue(path, None, None, f"cannot read: {exc}")
            return None, set()
        if not isinstance(data, dict):
            self.issue(path, None, None, "expected a mapping with a 'scenarios' list at the top")
            return None, set()
        errors = list(validator.iter_errors(data))
        for error in errors:
            self._schema_issue(path, data, error)
        # Scenarios without schema errors are still checked, so one pass reports every problem.
        bad = {_scenario_index(e) for e in errors}
        return (None if None in bad else data), bad

    def _build_file(
        self, path: Path, data: dict, bad: set[int | None], registry: ToolRegistry
    ) -> list[Scenario]:
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
            selfplay_weight_set="selfplay_weight" in raw,
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
            for name, filters in all_placeholders(template):
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
        if kind == "python" and not placeholders(expected["function"]):
            from autoretrain.plugins import PluginError, resolve_grader

            try:
                resolve_grader(expected["function"])
            except PluginError as exc:
                self.issue(path, sid, "expected.function", str(exc))
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
            normalized_template(s.prompt): s for s in scenarios if s.split == "train"
        }
        for scenario in scenarios:
            if scenario.split != "eval":
                continue
            twin = train_templates.get(normalized_template(scenario.prompt))
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
        for scenario in catalog.scenarios:
            for seed in (SEED_RANGES["demo"][0], SEED_RANGES["eval"][0]):
                try:
                    instance = catalog.instance(scenario.id, seed)
                except RenderError as exc:
                    self.issue(scenario.file, scenario.id, exc.field, f"seed {seed}: {exc}")
                    break
                if instance.expected["kind"] == "rubric":
                    continue
                outcome = check_expected(instance.expected, instance.reference_answer, instance)
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


def load_catalog(path: Path | str = "scenarios", tools: list[Any] | None = None) -> Catalog:
    """Load and validate every `*.yaml` in `path` (or one file) with the tables in `data/` beside
    them. `tools` are the settings' tools by import path (`Settings.tools`); installed
    `autoretrain.tools` entry points join too. Raises CatalogError listing every problem, each
    naming the file, scenario and field."""
    return _Loader(Path(path), tools).load()
