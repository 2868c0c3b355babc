"""The example catalogs in examples/catalogs/ (issue #20 item 6) stay usable: each loads and
validates, every reference solution passes its own verifier through the real tools, every
category is in both tiers, nothing sets a hand weight, and the shipping catalog's own tool (by
import path, shipdesk:parcel_cost beside the YAML) is loaded and used.

The tool's module is importable because the repository root is on sys.path, as it is for
Python started there (pytest puts it there too; the fixture only makes sure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoretrain.agents.verifier import VerifierAgent
from autoretrain.cli import cli
from autoretrain.scenarios import SEED_RANGES, load_catalog
from autoretrain.scenarios.templates import normalized_template

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "catalogs"
SHIPPED = REPO / "scenarios"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and list(p.glob("*.yaml")))
CUSTOM_TOOL = "parcel_cost"
BUILT_INS = {"calculator", "convert_units", "lookup_table"}


@pytest.fixture(scope="module", autouse=True)
def repo_on_path():
    with pytest.MonkeyPatch.context() as mp:
        if str(REPO) not in sys.path:  # e.g. under --import-mode=importlib
            mp.syspath_prepend(str(REPO))
        yield


@pytest.fixture(scope="module")
def catalogs():
    return {name: load_catalog(EXAMPLES / name) for name in NAMES}


def test_both_example_catalogs_are_there():
    assert {"kitchen", "shipping"} <= set(NAMES)
    for name in NAMES:
        assert (EXAMPLES / name / "README.md").is_file()
        assert list((EXAMPLES / name / "data").glob("*.csv"))


@pytest.mark.parametrize("name", NAMES)
def test_validate_passes(name, settings):
    result = CliRunner().invoke(
        cli,
        ["scenarios", "validate", str(EXAMPLES / name), "--seeds", "3", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["failures"] == []
    assert report["train"] >= 18 and report["eval"] >= 6


@pytest.mark.parametrize("name", NAMES)
def test_shape_both_tiers_and_no_hand_weights(name, catalogs):
    catalog = catalogs[name]
    train = Counter(s.category for s in catalog.train_scenarios)
    held_out = Counter(s.category for s in catalog.eval_scenarios)
    assert set(train) == set(held_out), "every category needs both tiers"
    assert len(train) >= 6
    assert all(n >= 3 for n in train.values()), train
    # The mix the loop must adapt to: tools, no tools, refusals, questions, two-call chains.
    assert any(not s.tools for s in catalog.scenarios)
    assert any(len(s.reference_calls) >= 2 for s in catalog.train_scenarios)
    assert any(len(s.reference_calls) >= 2 for s in catalog.eval_scenarios)
    used = {c["name"] for s in catalog.scenarios for c in s.reference_calls}
    assert used >= BUILT_INS
    # Measured allocation decides: no selfplay_weight anywhere, not even in defaults.
    assert not any(s.selfplay_weight_set for s in catalog.scenarios)
    for path in (EXAMPLES / name).glob("*.yaml"):
        assert "selfplay_weight" not in path.read_text(), path


@pytest.mark.parametrize("name", NAMES)
def test_different_from_the_shipped_catalog(name, catalogs):
    catalog, shipped = catalogs[name], load_catalog(SHIPPED)
    assert not {s.system_prompt for s in catalog.scenarios} & {
        s.system_prompt for s in shipped.scenarios
    }
    ours = {normalized_template(s.prompt) for s in catalog.scenarios}
    assert not ours & {normalized_template(s.prompt) for s in shipped.scenarios}
    assert not set(catalog.registry.tables.keys) & set(shipped.registry.tables.keys)
    assert not {s.id for s in catalog.scenarios} & {s.id for s in shipped.scenarios}


@pytest.mark.parametrize("name", NAMES)
def test_every_reference_solution_passes_through_the_real_tools(name, catalogs):
    """Each reference, replayed as a model would (JSON-string arguments through
    ToolRegistry.execute), reproduces the instance's tool results and passes its verifier."""
    catalog = catalogs[name]
    verifier = VerifierAgent()
    for scenario in catalog.scenarios:
        ranges = ("demo", "selfplay", "eval") if scenario.split == "train" else ("eval",)
        for seed_range in ranges:
            for offset in range(4):
                instance = catalog.instance(scenario.id, SEED_RANGES[seed_range][0] + offset * 7919)
                messages = instance.reference_messages()
                assert messages[-1] == {"role": "assistant", "content": instance.reference_answer}
                calls = [m["tool_calls"][0] for m in messages if m.get("tool_calls")]
                results = [m["content"] for m in messages if m["role"] == "tool"]
                assert len(calls) == len(results) == len(scenario.reference_calls)
                for call, result in zip(calls, results, strict=True):
                    assert call["function"]["name"] in scenario.tools
                    executed = catalog.registry.execute(
                        call["function"]["name"], call["function"]["arguments"]
                    )
                    assert executed.ok, (scenario.id, executed.error)
                    assert executed.content == result
                verdict = verifier.verify(instance, instance.reference_answer)
                assert verdict.passed, (scenario.id, instance.seed, verdict.feedback)
                assert verdict.score == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_wrong_answers_fail_every_scenario(name, catalogs):
    catalog = catalogs[name]
    verifier = VerifierAgent()
    for scenario in catalog.scenarios:
        instance = catalog.instance(scenario.id, 11)
        for wrong in ("", None, "banana 123456789 qq"):
            assert not verifier.verify(instance, wrong).passed, (scenario.id, wrong)


def test_the_shipping_catalog_loads_and_uses_its_own_tool(catalogs):
    catalog = catalogs["shipping"]
    assert CUSTOM_TOOL in catalog.registry
    (spec,) = catalog.registry.specs([CUSTOM_TOOL])
    parameters = spec["function"]["parameters"]
    assert parameters["properties"]["weight_kg"]["type"] == "number"
    assert parameters["properties"]["service"]["enum"] == ["economy", "standard", "express"]
    assert set(parameters["required"]) == {"weight_kg", "service"}
    assert spec["function"]["description"].startswith("Price in USD")
    # Called by references, alone and as the second step of a chain, in both tiers.
    callers = [
        s for s in catalog.scenarios if CUSTOM_TOOL in [c["name"] for c in s.reference_calls]
    ]
    assert {s.split for s in callers} == {"train", "eval"}
    assert any(
        s.reference_calls[-1]["name"] == CUSTOM_TOOL for s in callers if len(s.reference_calls) == 2
    )
    # Run as a model would call it, with its errors returned, never raised.
    ok = catalog.registry.execute(CUSTOM_TOOL, '{"weight_kg": 2, "service": "express"}')
    assert ok.ok and ok.content == "15.8"
    bad = catalog.registry.execute(CUSTOM_TOOL, '{"weight_kg": 2, "service": "overnight"}')
    assert not bad.ok and bad.content.startswith("error:")
    zero = catalog.registry.execute(CUSTOM_TOOL, '{"weight_kg": 0, "service": "economy"}')
    assert not zero.ok and "above 0" in zero.content


def test_the_cli_validates_shipping_from_any_directory_without_pythonpath(tmp_path):
    """The README's command: the console script has no working directory on sys.path and no
    PYTHONPATH, yet the catalog's own tool module beside its YAML loads (the loader puts the
    catalog folder on sys.path while it imports the catalog's tools)."""
    config = tmp_path / "autoretrain.yaml"
    config.write_text("")
    env = {**os.environ, "AUTORETRAIN_CONFIG": str(config), "AUTORETRAIN_HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    # The console script's sys.path has no working directory on it; `python -P` neither.
    command = [
        sys.executable,
        "-P",
        "-c",
        "import sys; from autoretrain.cli import main; sys.argv[0] = 'autoretrain'; main()",
        *("scenarios", "validate", str(REPO / "examples/catalogs/shipping"), "--seeds", "1"),
    ]
    found = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("ok: ")


def test_a_catalog_tools_source_is_part_of_the_catalog_hash(tmp_path):
    import shutil

    copy = tmp_path / "shipping"
    shutil.copytree(REPO / "examples/catalogs/shipping", copy)
    before = load_catalog(copy).hash
    source = copy / "shipdesk.py"
    source.write_text(source.read_text() + "\n# a change to the tool's code\n")
    assert load_catalog(copy).hash != before
