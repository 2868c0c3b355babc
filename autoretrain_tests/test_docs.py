"""The user documentation cannot fall behind the code.

- Every ```yaml block in docs/ whose first line is a `# autoretrain.yaml` comment loads through
  `load_settings`, and its gates and lifts resolve for every layer it names.
- Every field of every settings section appears in docs/configuration.md.
- Every `autoretrain <command>` the docs show exists, and so do the Dagster names that
  docs/operations.md tells an operator to type.
- Relative links between the docs point at files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from autoretrain import settings as settings_module
from autoretrain.cli import COMMANDS
from autoretrain.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"
GUIDES = ("lm-studio", "vllm", "azure-openai", "own-model", "scaling-out")
FENCE = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


# The pages this test owns; links and commands are checked in these (examples in every page).
OWN_PAGES = [
    DOCS / "configuration.md",
    DOCS / "operations.md",
    *(DOCS / "guides" / f"{name}.md" for name in GUIDES),
]


def doc_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def config_examples() -> list[tuple[str, str]]:
    found = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            body = match.group(1)
            if body.lstrip().startswith("# autoretrain.yaml"):
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", body))
    return found


EXAMPLES = config_examples()


def test_the_reference_and_every_guide_carry_examples():
    where = {name.split(":")[0] for name, _ in EXAMPLES}
    assert "docs/configuration.md" in where
    for guide in GUIDES[:4]:
        assert f"docs/guides/{guide}.md" in where, f"{guide} has no autoretrain.yaml example"


@pytest.mark.parametrize(("where", "body"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_config_example_loads(where, body, tmp_path, monkeypatch):
    # The example must load as written, whatever the machine running the test exports.
    for variable in [*settings_module._ENV_OVERRIDES, "AUTORETRAIN_CONFIG"]:
        monkeypatch.delenv(variable, raising=False)
    config = tmp_path / "autoretrain.yaml"
    config.write_text(body, encoding="utf-8")
    loaded = load_settings(config_file=config)
    assert loaded.profile is not None, where
    # Layers are validated only when resolved: resolve every provider/environment named.
    for layers in (loaded.gates, loaded.lifts):
        assert set(layers) <= {"default", "providers", "environments"}, (
            f"{where}: keys outside default/providers/environments are ignored by the code"
        )
    providers = {loaded.provider, *(loaded.gates.get("providers") or {})}
    providers |= set(loaded.lifts.get("providers") or {})
    environments = {loaded.environment, *(loaded.gates.get("environments") or {})}
    environments |= set(loaded.lifts.get("environments") or {})
    for provider in providers:
        for environment in environments:
            variant = loaded.model_copy(update={"provider": provider, "environment": environment})
            variant.promotion_gates()
            variant.evaluation_lifts()


def settings_sections() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(settings_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == settings_module.__name__
        and obj.model_fields
    ]


def test_every_settings_field_is_documented():
    text = CONFIGURATION.read_text(encoding="utf-8")
    sections = settings_sections()
    assert {s.__name__ for s in sections} >= {"Settings", "ProviderProfile", "TrainingSettings"}
    missing = [
        f"{section.__name__}.{field}"
        for section in sections
        for field in section.model_fields
        if f"`{field}`" not in text
    ]
    assert not missing, f"add these to docs/configuration.md: {missing}"
    undocumented_sections = [s.__name__ for s in sections if f"`{s.__name__}`" not in text]
    assert not undocumented_sections, undocumented_sections


def test_every_environment_variable_is_documented():
    text = CONFIGURATION.read_text(encoding="utf-8")
    for variable in [*settings_module._ENV_OVERRIDES, "AUTORETRAIN_CONFIG", "DAGSTER_HOME"]:
        assert f"`{variable}`" in text, variable


CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shown_commands(text: str) -> set[str]:
    """`autoretrain X` as the docs show it: in inline code, or as a command line in a block."""
    commands = set(re.findall(r"`autoretrain ([a-z][a-z-]*)", text))
    for block in CODE_BLOCK.findall(text):
        commands |= set(re.findall(r"^\s*(?:\$ )?autoretrain ([a-z][a-z-]*)", block, re.M))
    return commands


def test_commands_in_the_docs_exist():
    unknown = {
        f"{path.name}: autoretrain {command}"
        for path in OWN_PAGES
        for command in shown_commands(path.read_text("utf-8"))
        if command not in COMMANDS
    }
    assert not unknown, f"commands the docs show that do not exist: {sorted(unknown)}"


def test_relative_links_resolve():
    broken = []
    for path in OWN_PAGES:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text("utf-8")):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_dagster_names_in_operations_exist():
    import dagster as dg

    from autoretrain.definitions import defs

    text = OPERATIONS.read_text(encoding="utf-8")
    sensors = {s.name for s in defs.sensors or []}
    schedules = {s.name for s in defs.schedules or []}
    jobs = {j.name for j in defs.jobs or []}
    for name in re.findall(r"`(\w+_sensor|autoretrain_automation)`", text):
        assert name in sensors, f"operations.md names sensor {name}; defined: {sorted(sensors)}"
    for name in re.findall(r"`(\w+_schedule)`", text):
        assert name in schedules, f"operations.md names schedule {name}; defined: {schedules}"
    for name in re.findall(r"`(\w+_job)`", text):
        assert name in jobs, f"operations.md names job {name}; defined: {sorted(jobs)}"
    # The backfill recipe relies on single-run policies for exactly these assets.
    for key in ("raw_runs", "scored_runs", "promotion_decisions"):
        spec = defs.resolve_assets_def(key)
        assert spec.backfill_policy == dg.BackfillPolicy.single_run(), key
        assert f"`{key}`" in text
