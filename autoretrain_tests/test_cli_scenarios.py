from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from autoretrain.cli import cli

SHIPPED = Path(__file__).resolve().parents[1] / "scenarios"


def run(*args: str):
    return CliRunner().invoke(cli, ["scenarios", *args], catch_exceptions=False)


def test_validate_the_shipped_catalog():
    result = run("validate", str(SHIPPED), "--seeds", "2")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")
    assert "reference solutions pass" in result.output


def test_validate_json_and_default_path(monkeypatch):
    monkeypatch.setenv("AUTORETRAIN_SCENARIOS", str(SHIPPED))
    result = run("validate", "--seeds", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["failures"] == [] and report["scenarios"] >= 30 and len(report["hash"]) == 64


def test_validate_fails_clearly_on_a_broken_catalog(tmp_path):
    text = (SHIPPED / "arithmetic.yaml").read_text().replace("kind: numeric", "kind: fuzzy", 1)
    (tmp_path / "arithmetic.yaml").write_text(text)
    result = run("validate", str(tmp_path))
    assert result.exit_code == 1
    assert "arithmetic.yaml: scenario 'arith_add': field 'expected.kind'" in result.output
    assert "unknown verifier kind 'fuzzy'" in result.output


def test_list(tmp_path):
    result = run("list", "--path", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "arithmetic" in result.output and "arith_add" in result.output
    data = json.loads(run("list", "--path", str(SHIPPED), "--json").output)
    splits = {(row["category"], row["split"]) for row in data["counts"]}
    assert ("arithmetic", "train") in splits and ("arithmetic", "eval") in splits
    assert {row["id"] for row in data["scenarios"]} >= {"arith_add", "heldout_multiply"}


def test_show():
    result = run("show", "multi_price_total", "--n", "3", "--path", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert result.output.count("--- multi_price_total seed") == 3
    assert "call lookup_table" in result.output and "call calculator" in result.output
    data = json.loads(run("show", "arith_add", "--n", "2", "--json", "--path", str(SHIPPED)).output)
    assert [d["seed"] for d in data] == [0, 1]
    assert data[0]["reference_answer"] == data[0]["reference_results"][0]
    missing = run("show", "no_such", "--path", str(SHIPPED))
    assert missing.exit_code == 1 and "no scenario 'no_such'" in missing.output


def test_schema_command_prints_the_documented_schema():
    result = run("schema")
    docs = Path(__file__).resolve().parents[1] / "docs" / "scenario.schema.json"
    assert json.loads(result.output) == json.loads(docs.read_text())
