from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoretrain.curation.validate import validate_file, validate_record

from .factories import CALCULATOR, call


def good(a: int = 2, b: int = 3) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "tool_calls": [call("call_0", f"{a} + {b}")], "weight": 0},
            {"role": "tool", "tool_call_id": "call_0", "content": str(a + b)},
            {"role": "assistant", "content": str(a + b), "weight": 1},
        ],
        "tools": [CALCULATOR],
    }


def broken(mutate) -> dict:
    record = good()
    mutate(record)
    return record


def _set(path: list, value):
    def mutate(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


# (what is wrong, the record, a fragment of the expected error)
BROKEN = [
    (
        "two assistant messages in a row",
        broken(lambda r: r["messages"].insert(4, {"role": "assistant", "content": "hm"})),
        "two assistant messages in a row",
    ),
    (
        "tool_call_id answers nothing",
        broken(_set(["messages", 3, "tool_call_id"], "call_7")),
        "answers no open call",
    ),
    (
        "arguments given as an object",
        broken(_set(["messages", 2, "tool_calls", 0, "function", "arguments"], {"x": 1})),
        "must be a JSON string, got dict",
    ),
    (
        "arguments that do not parse",
        broken(_set(["messages", 2, "tool_calls", 0, "function", "arguments"], "{oops")),
        "is not valid JSON",
    ),
    (
        "call to an undeclared tool",
        broken(_set(["messages", 2, "tool_calls", 0, "function", "name"], "shell")),
        "not declared in 'tools'",
    ),
    ("tools dropped", broken(lambda r: r.pop("tools")), "no top-level 'tools'"),
    ("weight 0.5", broken(_set(["messages", 4, "weight"], 0.5)), "'weight' must be 0 or 1"),
    ("nothing to train on", broken(_set(["messages", 4, "weight"], 0)), "no trainable"),
    ("unknown role", broken(_set(["messages", 1, "role"], "human")), "unknown role"),
    ("empty user content", broken(_set(["messages", 1, "content"], "")), "'content' is empty"),
    ("unknown key", broken(_set(["messages", 3, "weight"], 1)), "unknown key 'weight'"),
    (
        "call never answered",
        broken(lambda r: r["messages"].pop(3)),
        "have no tool message before this one",
    ),
    ("ends with a tool message", broken(lambda r: r["messages"].pop()), "the last message"),
]


def test_a_good_record_passes():
    assert validate_record(good()) == []


@pytest.mark.parametrize(("what", "record", "fragment"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_broken_record_is_reported(what, record, fragment):
    problems = validate_record(record)
    assert any(fragment in p for p in problems), problems


def _write(path: Path, lines: list[bytes], bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n")
    return path


def test_file_errors_carry_line_numbers(tmp_path):
    lines = [json.dumps(good()).encode()]
    lines += [json.dumps(record).encode() for _, record, _ in BROKEN]
    lines += [
        b"{not json",
        b"",
        b'"a string"',
        b'{"messages": [{"role": "user", "content": "\xff"}]}',
    ]
    lines += [json.dumps(good(4, 5)).encode()]
    report = validate_file(_write(tmp_path / "f.jsonl", lines))
    assert not report.ok
    n_broken = len(BROKEN)
    expected_bad = list(range(2, 2 + n_broken + 4))
    assert report.invalid_lines == expected_bad
    messages = dict(report.errors)
    assert "not valid JSON" in messages[2 + n_broken]
    assert "blank line" in messages[3 + n_broken]
    assert "must be a JSON object" in messages[4 + n_broken]
    assert "not valid UTF-8" in messages[5 + n_broken]
    assert report.to_dict()["invalid_lines"] == expected_bad


def test_bom_is_accepted_and_length_is_checked(tmp_path):
    path = _write(tmp_path / "bom.jsonl", [json.dumps(good()).encode()] * 3, bom=True)
    report = validate_file(path)
    assert report.ok and report.bom and report.n_examples == 3
    assert any("at least 10" in w for w in report.warnings)
    too_long = validate_file(path, max_tokens=5)
    assert too_long.invalid_lines == [1, 2, 3]
    assert "whitespace_estimate" in too_long.errors[0][1]


def test_tools_required_and_lone_surrogates(tmp_path):
    record = good()
    record["messages"] = [
        record["messages"][0],
        record["messages"][1],
        {"role": "assistant", "content": "5"},
    ]
    del record["tools"]
    surrogate = b'{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "ok"}]}'
    path = _write(tmp_path / "t.jsonl", [json.dumps(record).encode(), surrogate])
    assert validate_file(path).invalid_lines == [2]
    assert validate_file(path, tools_required=True).invalid_lines == [1, 2]
