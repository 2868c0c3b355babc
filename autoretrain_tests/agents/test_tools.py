from __future__ import annotations

import json
import threading
import time

import jsonschema
import pytest

from autoretrain.agents.tools import (
    Tool,
    ToolRegistry,
    default_registry,
    evaluate_arithmetic,
    format_number,
)


@pytest.fixture
def registry(tmp_path):
    (tmp_path / "capitals.csv").write_text("key,value\nFrance,Paris\nJapan,Tokyo\n")
    return default_registry(tmp_path)


def test_specs_are_openai_tool_schemas(registry):
    specs = registry.specs(["calculator", "convert_units", "lookup_table"])
    assert [s["function"]["name"] for s in specs] == ["calculator", "convert_units", "lookup_table"]
    for spec in specs:
        assert spec["type"] == "function"
        assert spec["function"]["description"]
        jsonschema.Draft202012Validator.check_schema(spec["function"]["parameters"])
        assert spec["function"]["parameters"]["type"] == "object"
    assert specs[2]["function"]["parameters"]["properties"]["table"]["enum"] == ["capitals"]
    with pytest.raises(KeyError, match="abacus"):
        registry.specs(["abacus"])


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12 * 7", "84"),
        ("(3 + 4) * 2 - 1", "13"),
        ("10 / 4", "2.5"),
        ("100 / 7", "14.29"),
        ("-5 + 2", "-3"),
        ("2 ** 10", "1024"),
        ("17 // 5 + 17 % 5", "5"),
        ("3 × 4", "12"),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_calculator(registry, expression, expected):
    result = registry.execute("calculator", json.dumps({"expression": expression}))
    assert result.ok, result.error
    assert result.content == expected


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("__import__('os').system('echo hi')", "unsupported"),
        ("open('/etc/passwd').read()", "unsupported"),
        ("x + 1", "unsupported"),
        ("(1).real", "unsupported"),
        ("[1, 2]", "unsupported"),
        ("'a' * 3", "unsupported"),
        ("9 ** 9 ** 9", "too large"),
        ("1 / 0", "division by zero"),
        ("12 *", "cannot parse"),
        ("", "empty"),
        ("1" * 300, "longer than"),
    ],
)
def test_calculator_refuses_everything_but_arithmetic(registry, expression, complaint):
    result = registry.execute("calculator", {"expression": expression})
    assert not result.ok
    assert complaint in result.error
    assert result.content.startswith("error: ")


def test_calculator_never_evaluates_python():
    marker = []
    with pytest.raises(ValueError):
        evaluate_arithmetic("marker.append(1)")
    assert marker == []


def test_convert_units(registry):
    assert (
        registry.execute("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"}).content
        == "3.11"
    )
    assert (
        registry.execute("convert_units", {"value": 212, "from_unit": "f", "to_unit": "c"}).content
        == "100"
    )
    assert (
        registry.execute(
            "convert_units", {"value": 2.5, "from_unit": "h", "to_unit": "min"}
        ).content
        == "150"
    )
    mixed = registry.execute("convert_units", {"value": 5, "from_unit": "km", "to_unit": "kg"})
    assert not mixed.ok and "cannot convert km (length) to kg (mass)" in mixed.error
    unknown = registry.execute(
        "convert_units", {"value": 5, "from_unit": "parsec", "to_unit": "km"}
    )
    assert not unknown.ok and "from_unit" in unknown.error


def test_lookup_table(registry):
    assert (
        registry.execute("lookup_table", {"table": "capitals", "key": "france"}).content == "Paris"
    )
    missing = registry.execute("lookup_table", {"table": "capitals", "key": "Atlantis"})
    assert not missing.ok and "no key 'Atlantis'" in missing.error and "France" in missing.error
    bad_table = registry.execute("lookup_table", {"table": "rivers", "key": "Nile"})
    assert not bad_table.ok and "table" in bad_table.error


def test_malformed_json_arguments(registry):
    result = registry.execute("calculator", '{"expression": "1 + 1"')
    assert not result.ok
    assert "not valid JSON" in result.error
    not_object = registry.execute("calculator", "[1, 2]")
    assert not not_object.ok and "must be a JSON object" in not_object.error


def test_unknown_tool(registry):
    result = registry.execute("web_search", "{}")
    assert not result.ok
    assert "unknown tool 'web_search'" in result.error
    assert "calculator" in result.error  # tells the model what exists


def test_wrong_argument_types(registry):
    result = registry.execute(
        "convert_units", {"value": "five", "from_unit": "km", "to_unit": "mi"}
    )
    assert not result.ok
    assert "argument 'value'" in result.error and "number" in result.error
    missing = registry.execute("calculator", {})
    assert not missing.ok and "expression" in missing.error
    extra = registry.execute("calculator", {"expression": "1", "precision": 3})
    assert not extra.ok and "precision" in extra.error


def test_a_tool_that_raises_becomes_a_result():
    def broken(text: str) -> str:
        raise RuntimeError("disk on fire")

    registry = ToolRegistry(
        [
            Tool(
                "broken",
                "fails",
                {"type": "object", "properties": {"text": {"type": "string"}}},
                broken,
            )
        ]
    )
    result = registry.execute("broken", {"text": "x"})
    assert not result.ok
    assert "RuntimeError: disk on fire" in result.error
    assert result.content == f"error: {result.error}"


def test_a_tool_that_hangs_times_out():
    release = threading.Event()

    def hang() -> str:
        release.wait(30)
        return "late"

    registry = ToolRegistry([Tool("hang", "never returns", {"type": "object"}, hang)])
    t0 = time.perf_counter()
    result = registry.execute("hang", "{}", timeout_s=0.2)
    elapsed = time.perf_counter() - t0
    release.set()
    assert not result.ok
    assert "timed out after 0.2 s" in result.error
    assert 0.2 <= elapsed < 2.0
    assert result.duration_s >= 0.2


def test_execute_is_cheap(registry):
    t0 = time.perf_counter()
    for i in range(500):
        assert registry.execute("calculator", f'{{"expression": "{i} * 7"}}').ok
    per_call = (time.perf_counter() - t0) / 500
    assert per_call < 0.005  # thousands of calls per second, even on a busy 2-core machine


def test_format_number():
    assert format_number(84.0) == "84"
    assert format_number(3.10686) == "3.11"
    assert format_number(-0.004) == "0"
    assert format_number(2.5) == "2.5"
