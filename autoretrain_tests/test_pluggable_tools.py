"""Tools from outside the package: by import path (catalog file or settings) and by entry point.

Each test writes its plugin module (and, for entry points, a tiny installed-in-place
distribution: a `*.dist-info` folder with `entry_points.txt`) under tmp_path and puts that folder
on sys.path, so nothing is installed and nothing touches the network.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from autoretrain.agents.tools import Tool
from autoretrain.plugins import PluginError, derive_parameters, tool_from_function
from autoretrain.project import Project
from autoretrain.scenarios import CatalogError, catalog_files, load_catalog
from autoretrain.settings import ToolSpec, load_settings

REPO = Path(__file__).resolve().parents[1]

TEAM_TOOLS = '''
import time
from typing import Literal, Optional

RATES = {"EUR": 1.1, "GBP": 1.25}


def fx_rate(currency: Literal["EUR", "GBP"], amount: float = 1.0, note: Optional[str] = None) -> float:
    """Convert an amount of a currency to US dollars.

    Args:
        currency: the ISO code of the currency.
        amount: how much of it.
        note: free text, ignored.
    """
    return RATES[currency] * amount


def shout(text: str, times: int) -> str:
    return " ".join([text.upper()] * times)


def pick(mode: Optional[Literal["a", "b"]]) -> str:
    return str(mode)


def tags(words: list[str], joined: bool) -> list:
    return sorted(words) if not joined else ["-".join(words)]


def untyped(value):
    return value


def takes_a_dict(options: dict) -> str:
    return "x"


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"
'''

SCENARIO = """
scenarios:
  - id: fx_eur
    category: finance
    split: train
    system_prompt: You convert currencies with tools.
    prompt: "How many dollars is {amount} EUR?"
    params:
      amount: {int: [1, 50]}
    tools: [fx_rate]
    reference:
      calls:
        - name: fx_rate
          arguments: {currency: EUR, amount: "{amount}"}
      answer: "{result_0} USD"
    expected: {kind: numeric, value: "{result_0}"}
"""


SHOUT_SCENARIO = """
scenarios:
  - id: shout_word
    category: echo
    split: train
    system_prompt: You repeat words loudly with tools.
    prompt: "Shout {word} twice."
    params:
      word: {choice: [hello, there, friend]}
    tools: [loud_ep]
    reference:
      calls:
        - name: loud_ep
          arguments: {text: "{word}", times: 2}
      answer: "{result_0}"
    expected: {kind: exact, value: "{result_0}"}
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path with a uniquely named module of team tools; returns (dir, module)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    module = f"teamtools_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(TEAM_TOOLS)
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    yield folder, module
    sys.modules.pop(module, None)


def write_catalog(tmp_path: Path, body: str, name: str = "cat") -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "scenarios.yaml").write_text(textwrap.dedent(body))
    return root


def problems(root: Path, **kw) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(root, **kw)
    return str(info.value)


# --- schema derivation ------------------------------------------------------------------------


def test_the_schema_comes_from_type_hints_and_the_docstring(plugin_dir):
    module = importlib.import_module(plugin_dir[1])
    schema = derive_parameters(module.fx_rate)
    assert schema == {
        "type": "object",
        "properties": {
            "currency": {
                "type": "string",
                "enum": ["EUR", "GBP"],
                "description": "the ISO code of the currency.",
            },
            "amount": {"type": "number", "description": "how much of it."},
            "note": {"type": ["string", "null"], "description": "free text, ignored."},
        },
        "required": ["currency"],
        "additionalProperties": False,
    }
    tool = tool_from_function(module.fx_rate)
    assert tool.description == "Convert an amount of a currency to US dollars."
    assert derive_parameters(module.shout)["required"] == ["text", "times"]
    assert derive_parameters(module.shout)["properties"]["times"] == {"type": "integer"}
    assert derive_parameters(module.pick)["properties"]["mode"] == {
        "type": ["string", "null"],
        "enum": ["a", "b", None],
    }
    listed = derive_parameters(module.tags)["properties"]
    assert listed == {
        "words": {"type": "array", "items": {"type": "string"}},
        "joined": {"type": "boolean"},
    }


@pytest.mark.parametrize(
    ("function", "says"),
    [("untyped", "has no type hint"), ("takes_a_dict", "no JSON Schema for the type")],
)
def test_a_schema_that_cannot_be_derived_says_why(plugin_dir, function, says):
    module = importlib.import_module(plugin_dir[1])
    with pytest.raises(PluginError, match=says):
        derive_parameters(getattr(module, function))


# --- tools named in a catalog file ------------------------------------------------------------


def test_a_catalog_file_names_a_tool_by_import_path(tmp_path, plugin_dir):
    module = plugin_dir[1]
    root = write_catalog(tmp_path, f"tools:\n  - {module}:fx_rate\n{SCENARIO}")
    catalog = load_catalog(root)
    assert "fx_rate" in catalog.registry
    instance = catalog.instance("fx_eur", 7)
    assert [spec["function"]["name"] for spec in instance.tools] == ["fx_rate"]
    # The reference ran through the real tool at load, and the answer passed its own check.
    amount = instance.params["amount"]
    assert instance.reference_results == [str(round(1.1 * amount, 2)).rstrip("0").rstrip(".")]
    # Same safe execution as the built-ins: JSON arguments, schema checks, errors for the model.
    result = catalog.registry.execute("fx_rate", '{"currency": "GBP", "amount": 4}')
    assert result.ok and result.content == "5"
    bad = catalog.registry.execute("fx_rate", '{"currency": "JPY"}')
    assert not bad.ok and "currency" in bad.content


def test_a_tool_with_its_own_name_description_and_schema(tmp_path, plugin_dir):
    module = plugin_dir[1]
    header = f"""
    tools:
      - function: {module}:shout
        name: loud
        description: Repeat a text in capitals.
        parameters:
          type: object
          properties:
            text: {{type: string}}
            times: {{type: integer, minimum: 1, maximum: 3}}
          required: [text, times]
          additionalProperties: false
      - function: {module}:sleepy
    """
    body = textwrap.dedent(header) + SCENARIO.replace("tools: [fx_rate]", "tools: [fx_rate, loud]")
    body = f"tools:\n  - {module}:fx_rate\n" + body.replace("tools:\n", "", 1)
    root = write_catalog(tmp_path, body)
    registry = load_catalog(root).registry
    spec = registry.specs(["loud"])[0]["function"]
    assert spec["description"] == "Repeat a text in capitals."
    assert spec["parameters"]["properties"]["times"]["maximum"] == 3
    assert registry.execute("loud", {"text": "hi", "times": 2}).content == "HI HI"
    too_many = registry.execute("loud", {"text": "hi", "times": 9})
    assert not too_many.ok and "times" in too_many.content
    # ... and the same timeout: a hung plugin costs the caller only its timeout.
    hung = registry.execute("sleepy", {"seconds": 5}, timeout_s=0.2)
    assert not hung.ok and "timed out" in hung.content


def test_an_import_that_fails_names_the_file_and_field(tmp_path, plugin_dir):
    root = write_catalog(
        tmp_path, f"tools:\n  - no_such_module_{uuid.uuid4().hex[:6]}:f\n{SCENARIO}"
    )
    message = problems(root)
    assert "scenarios.yaml: field 'tools[0]'" in message
    assert "cannot import module" in message
    # The scenario that lists the missing tool is named too, with its field.
    assert "scenario 'fx_eur': field 'tools[0]': unknown tool 'fx_rate'" in message


def test_an_underivable_schema_and_a_taken_name_are_reported(tmp_path, plugin_dir):
    module = plugin_dir[1]
    body = (
        f"tools:\n  - {module}:fx_rate\n  - function: {module}:takes_a_dict\n"
        f"  - {{function: '{module}:shout', name: calculator}}\n{SCENARIO}"
    )
    message = problems(write_catalog(tmp_path, body))
    assert "field 'tools[1].function'" in message
    assert "parameter 'options': no JSON Schema for the type" in message
    assert "field 'tools[2]': tool name 'calculator' is already taken by the built-in tools" in (
        message
    )


def test_a_bad_tool_entry_fails_the_catalog_schema(tmp_path):
    message = problems(write_catalog(tmp_path, f"tools:\n  - not-an-import-path\n{SCENARIO}"))
    assert "field 'tools[0]'" in message


# --- tools named in the settings --------------------------------------------------------------


def test_settings_tools_join_the_projects_catalog(tmp_path, plugin_dir, monkeypatch):
    module = plugin_dir[1]
    root = write_catalog(tmp_path, SCENARIO)
    config = tmp_path / "autoretrain.yaml"
    config.write_text(
        f"home: {tmp_path / 'home'}\nscenarios_dir: {root}\n"
        f"tools:\n  - {module}:fx_rate\n  - function: {module}:shout\n    name: loud\n"
    )
    monkeypatch.delenv("AUTORETRAIN_SCENARIOS", raising=False)
    settings = load_settings(config_file=config)
    assert settings.tools[0] == ToolSpec(function=f"{module}:fx_rate")
    catalog = Project(settings).catalog
    assert {"fx_rate", "loud"} <= set(catalog.registry.names)
    assert catalog.tool_refs == [
        {"function": f"{module}:fx_rate"},
        {"function": f"{module}:shout", "name": "loud"},
    ]
    # The settings' tools are part of the catalog's identity; the files alone give another hash.
    assert catalog.hash != load_catalog(root, [f"{module}:fx_rate"]).hash
    # Without them the scenario cannot find its tool, and the error names the scenario.
    assert "scenario 'fx_eur': field 'tools[0]': unknown tool 'fx_rate'" in problems(root)


def test_validate_at_a_path_uses_the_settings_tools(tmp_path, plugin_dir, monkeypatch):
    from click.testing import CliRunner

    from autoretrain.cli import cli

    root = write_catalog(tmp_path, SCENARIO)
    config = tmp_path / "autoretrain.yaml"
    config.write_text(f"tools:\n  - {plugin_dir[1]}:fx_rate\n")
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    result = CliRunner().invoke(cli, ["scenarios", "validate", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


def test_a_settings_tool_that_fails_to_import_names_the_settings_field(tmp_path):
    root = write_catalog(tmp_path, SCENARIO.replace("fx_rate", "calculator"))
    message = problems(root, tools=[ToolSpec(function="nowhere_xyz:tool")])
    assert "settings: field 'tools[0].function': tool 'nowhere_xyz:tool': cannot import" in message


def test_settings_refuse_a_tool_that_is_not_an_import_path(tmp_path):
    config = tmp_path / "autoretrain.yaml"
    config.write_text("tools:\n  - just_a_name\n")
    with pytest.raises(ValueError, match="tools.0.function"):
        load_settings(config_file=config)


# --- entry points -----------------------------------------------------------------------------


def install_in_place(folder: Path, name: str, entry_points: str) -> None:
    """A distribution as pip would leave it, minus the wheel: metadata and entry points."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    importlib.invalidate_caches()


def test_entry_point_tools_join_every_catalog(tmp_path, plugin_dir):
    folder, module = plugin_dir
    (folder / f"{module}_ep.py").write_text(
        textwrap.dedent(
            f"""
            from autoretrain.plugins import tool_from_function
            from {module} import shout, tags

            LOUD = tool_from_function(shout, name="loud_ep")

            def make_tools():
                return [tool_from_function(tags, name="tags_ep")]
            """
        )
    )
    install_in_place(
        folder,
        f"team_{module}",
        f"""
        [autoretrain.tools]
        loud = {module}_ep:LOUD
        more = {module}_ep:make_tools
        """,
    )
    try:
        root = write_catalog(tmp_path, SHOUT_SCENARIO)
        instance = load_catalog(root).instance("shout_word", 3)
        assert instance.reference_answer == f"{instance.params['word'].upper()} " * 1 + (
            instance.params["word"].upper()
        )
        registry = load_catalog(REPO / "scenarios").registry
        assert {"loud_ep", "tags_ep"} <= set(registry.names)
        assert isinstance(registry.get("loud_ep"), Tool)
        assert registry.execute("tags_ep", {"words": ["b", "a"], "joined": False}).content == (
            '["a", "b"]'
        )
    finally:
        sys.modules.pop(f"{module}_ep", None)


def test_a_broken_entry_point_is_reported_with_its_distribution(tmp_path, plugin_dir):
    folder, module = plugin_dir
    install_in_place(
        folder,
        f"broken_{module}",
        f"""
        [autoretrain.tools]
        gone = {module}_missing:nothing
        """,
    )
    message = problems(REPO / "scenarios")
    assert f"entry point autoretrain.tools:gone = {module}_missing:nothing" in message
    assert f"(distribution broken_{module})" in message
    assert "cannot load: ModuleNotFoundError" in message


# --- the shipped catalog ----------------------------------------------------------------------


def test_the_shipped_catalog_keeps_its_hash():
    """Pluggable tools change nothing for a catalog that uses none: its hash is still the digest
    of its files and tables alone, computed here the way it always was."""
    root = REPO / "scenarios"
    digest = hashlib.sha256()
    data = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    for path in [*catalog_files(root), *data]:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    assert load_catalog(root).hash == digest.hexdigest()
    assert load_catalog(root, tools=[]).hash == digest.hexdigest()


def test_a_self_play_worker_reloads_the_catalog_with_the_settings_tools(tmp_path, plugin_dir):
    """Self-play's spawned workers load the catalog again: the job carries the settings' tools,
    so the worker finds the same registry and hash (here the worker runs in this process)."""
    import multiprocessing
    import queue
    import signal
    import threading

    from autoretrain.agents.verifier import VerifierAgent
    from autoretrain.agents.workflow import WorkflowConfig
    from autoretrain.providers.scripted import ScriptedModel
    from autoretrain.selfplay import _Job, _worker_main

    root = write_catalog(tmp_path, SCENARIO)
    catalog = load_catalog(root, [f"{plugin_dir[1]}:fx_rate"])
    job = _Job(
        catalog_root=root,
        catalog_hash=catalog.hash,
        verifier=VerifierAgent(),
        landing=tmp_path / "landing",
        slot="primary",
        provider="test",
        model=lambda: ScriptedModel([], default="I do not know."),
        chunks=[catalog.selfplay_instances(2, seed=1)],
        prices=None,
        workflow=WorkflowConfig(),
        concurrency=2,
        traffic="selfplay",
        catalog_tools=catalog.tool_refs,
    )
    events: queue.Queue = queue.Queue()
    previous = signal.getsignal(signal.SIGINT)
    try:
        _worker_main(1, job, multiprocessing.Value("i", 0), events, threading.Event())
    finally:
        signal.signal(signal.SIGINT, previous)
    kinds = [events.get_nowait() for _ in range(events.qsize())]
    assert [k for k in kinds if k[0] == "error"] == []
    assert sum(k[0] == "run" for k in kinds) == 2
