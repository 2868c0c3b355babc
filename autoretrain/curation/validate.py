"""Validator for OpenAI / Azure OpenAI chat fine-tuning JSONL, tool-aware.

It applies the checks the public validators apply (one JSON object per line, `messages`, known
roles and keys, content present, an assistant turn) and the ones they miss, which users only
learn about from a failed job: two assistant messages in a row, a `tool_call_id` that answers
no earlier call, a call left unanswered, `arguments` that is not a JSON *string*, a call to a
tool the example does not declare in `tools`, `weight` other than 0 or 1, no trainable
assistant turn, and an example longer than the target context. Every error names its line.
A UTF-8 byte-order mark (Azure wants one) is accepted at the start of the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoretrain.curation.tokens import TokenCounter

ROLES = {"system", "user", "assistant", "tool"}
TOP_LEVEL_KEYS = {"messages", "tools", "parallel_tool_calls"}
MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
}
MIN_EXAMPLES = 10  # OpenAI and Azure refuse smaller training files
MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass
class ValidationReport:
    path: str
    n_examples: int = 0
    n_lines: int = 0
    bom: bool = False
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    token_method: str = ""
    max_example_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def invalid_lines(self) -> list[int]:
        return sorted({line for line, _ in self.errors})

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "n_examples": self.n_examples,
            "n_lines": self.n_lines,
            "invalid_lines": self.invalid_lines,
            "bom": self.bom,
            "errors": [{"line": line, "message": message} for line, message in self.errors],
            "warnings": self.warnings,
            "tokens": {"method": self.token_method, "max_example": self.max_example_tokens},
        }


def validate_file(
    path: Path,
    tools_required: bool = False,
    max_tokens: int | None = None,
    tokenizer_dir: Path | str | None = None,
) -> ValidationReport:
    """Check every line of a fine-tuning file. Never raises on bad content: each problem is
    an error with its 1-based line number."""
    path = Path(path)
    report = ValidationReport(path=str(path))
    counter = TokenCounter.load(tokenizer_dir)
    report.token_method = counter.method
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        report.bom = True
        data = data[3:]
    if len(data) > MAX_FILE_BYTES:
        report.warnings.append(f"file is {len(data)} bytes; the hosted limit is {MAX_FILE_BYTES}")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    report.n_lines = len(lines)
    for number, raw in enumerate(lines, start=1):
        problems = _check_line(raw, tools_required, max_tokens, counter, report)
        report.errors.extend((number, problem) for problem in problems)
    if report.n_examples < MIN_EXAMPLES:
        report.warnings.append(
            f"{report.n_examples} example(s); hosted fine-tuning needs at least {MIN_EXAMPLES}"
        )
    return report


def _check_line(
    raw: bytes,
    tools_required: bool,
    max_tokens: int | None,
    counter: TokenCounter,
    report: ValidationReport,
) -> list[str]:
    raw = raw.removesuffix(b"\r")
    if not raw.strip():
        return ["blank line (every line must be one JSON object)"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"not valid UTF-8 at byte {exc.start}: {raw[exc.start : exc.start + 4]!r}"]
    if text.startswith("\ufeff"):
        return ["byte-order mark inside the file (only the first line may start with one)"]
    try:
        record = json.loads(text)
    except ValueError as exc:
        return [f"not valid JSON: {exc}"]
    report.n_examples += 1
    problems = validate_record(record, tools_required=tools_required)
    if not problems:
        _check_encodable(record, problems)
    if not problems and max_tokens is not None:
        tokens = counter.count(record)
        report.max_example_tokens = max(report.max_example_tokens, tokens)
        if tokens > max_tokens:
            problems.append(
                f"example is {tokens} tokens ({counter.method}); the target context is {max_tokens}"
            )
    return problems


def _check_encodable(record: Any, problems: list[str]) -> None:
    # json.loads turns a "\ud800" escape into a lone surrogate, which no trainer can encode.
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        problems.append("contains a lone surrogate (\\ud800-\\udfff escape): not valid Unicode")


def validate_record(record: Any, tools_required: bool = False) -> list[str]:
    """Problems with one example (empty when it is valid)."""
    if not isinstance(record, dict):
        return [f"each line must be a JSON object, got {type(record).__name__}"]
    problems = [f"unknown top-level key {key!r}" for key in sorted(set(record) - TOP_LEVEL_KEYS)]
    declared = _check_tools(record, tools_required, problems)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("'messages' must be a non-empty list")
        return problems
    _check_messages(messages, declared, problems)
    if "parallel_tool_calls" in record and not isinstance(record["parallel_tool_calls"], bool):
        problems.append("'parallel_tool_calls' must be true or false")
    return problems


def _check_tools(record: dict[str, Any], required: bool, problems: list[str]) -> set[str] | None:
    """Names declared in `tools`, or None when the example declares none."""
    if "tools" not in record:
        if required:
            problems.append("no top-level 'tools' (required here)")
        return None
    tools = record["tools"]
    if not isinstance(tools, list):
        problems.append("'tools' must be a list")
        return set()
    names: set[str] = set()
    for index, spec in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(spec, dict) or spec.get("type") != "function":
            problems.append(f"{where}: must be an object with type 'function'")
            continue
        fn = spec.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"{where}: 'function.name' must be a non-empty string")
            continue
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            problems.append(f"{where} ({fn['name']}): 'parameters' must be a JSON Schema object")
        if fn["name"] in names:
            problems.append(f"{where}: tool {fn['name']!r} is declared twice")
        names.add(fn["name"])
    if required and not names:
        problems.append("'tools' is empty (required here)")
    return names


def _check_messages(messages: list[Any], declared: set[str] | None, problems: list[str]) -> None:
    open_calls: dict[str, str] = {}  # id -> tool name, called and not yet answered
    all_calls: set[str] = set()
    previous: str | None = None
    trainable = 0
    seen_non_system = False
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: must be an object")
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(f"{where}: unknown role {role!r} (expected one of {sorted(ROLES)})")
            previous = None
            continue
        where = f"{where} ({role})"
        for key in sorted(set(message) - MESSAGE_KEYS[role]):
            problems.append(f"{where}: unknown key {key!r}")
        if role != "tool" and open_calls:
            problems.append(
                f"{where}: tool call(s) {sorted(open_calls)} have no tool message before this one"
            )
            open_calls.clear()
        if role == "system":
            if seen_non_system:
                problems.append(f"{where}: system message after the conversation started")
            _check_content(message, where, problems, allow_empty=False)
        elif role == "user":
            _check_content(message, where, problems, allow_empty=False)
        elif role == "assistant":
            if previous == "assistant":
                problems.append(f"{where}: two assistant messages in a row")
            if not seen_non_system:
                problems.append(f"{where}: the conversation must start with a user message")
            calls = _check_calls(message, where, declared, all_calls, problems)
            open_calls.update(calls)
            if message.get("tool_calls") is None or message.get("content") is not None:
                _check_content(message, where, problems, allow_empty=bool(calls))
            weight = message.get("weight", 1)
            if type(weight) is not int or weight not in (0, 1):
                problems.append(f"{where}: 'weight' must be 0 or 1, got {weight!r}")
            elif weight == 1:
                trainable += 1
        else:  # tool
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                problems.append(f"{where}: 'tool_call_id' must be a non-empty string")
            elif call_id not in open_calls:
                earlier = "was already answered" if call_id in all_calls else "was never called"
                problems.append(
                    f"{where}: tool_call_id {call_id!r} answers no open call (it {earlier})"
                )
            else:
                del open_calls[call_id]
            if not isinstance(message.get("content"), str):
                problems.append(f"{where}: 'content' must be a string")
        if role != "system":
            seen_non_system = True
        previous = role
    if open_calls:
        problems.append(f"tool call(s) {sorted(open_calls)} are never answered")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("no assistant message")
    elif not trainable:
        problems.append("no trainable assistant turn (every assistant message has weight 0)")
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") != "assistant":
        problems.append(f"the last message is {last.get('role')!r}; it must be the assistant's")


def _check_content(
    message: dict[str, Any], where: str, problems: list[str], allow_empty: bool
) -> None:
    if "content" not in message:
        problems.append(f"{where}: missing 'content'")
        return
    content = message["content"]
    if content is None:
        if not allow_empty:
            problems.append(f"{where}: 'content' is null")
    elif isinstance(content, list):
        texts = [
            part.get("text")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            problems.append(f"{where}: content parts must be {{'type': 'text', 'text': str}}")
        elif not allow_empty and not "".join(texts).strip():
            problems.append(f"{where}: 'content' is empty")
    elif not isinstance(content, str):
        problems.append(f"{where}: 'content' must be a string, got {type(content).__name__}")
    elif not allow_empty and not content.strip():
        problems.append(f"{where}: 'content' is empty")


def _check_calls(
    message: dict[str, Any],
    where: str,
    declared: set[str] | None,
    all_calls: set[str],
    problems: list[str],
) -> dict[str, str]:
    if "tool_calls" not in message:
        return {}
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        problems.append(f"{where}: 'tool_calls' must be a non-empty list")
        return {}
    opened: dict[str, str] = {}
    for index, call in enumerate(calls):
        at = f"{where} tool_calls[{index}]"
        if not isinstance(call, dict):
            problems.append(f"{at}: must be an object")
            continue
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            problems.append(f"{at}: 'id' must be a non-empty string")
        elif call_id in all_calls:
            problems.append(f"{at}: id {call_id!r} is used twice")
        if call.get("type") != "function":
            problems.append(f"{at}: 'type' must be 'function'")
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"{at}: 'function.name' must be a non-empty string")
            continue
        name = fn["name"]
        at = f"{at} ({name})"
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            kind = type(arguments).__name__ if arguments is not None else "missing"
            problems.append(f"{at}: 'arguments' must be a JSON string, got {kind}")
        else:
            try:
                parsed = json.loads(arguments)
            except ValueError as exc:
                problems.append(f"{at}: 'arguments' is not valid JSON ({exc})")
            else:
                if not isinstance(parsed, dict):
                    problems.append(f"{at}: 'arguments' must encode a JSON object")
        if declared is None:
            problems.append(f"{at}: calls a tool but the example has no top-level 'tools'")
        elif name not in declared:
            problems.append(f"{at}: tool {name!r} is not declared in 'tools'")
        if isinstance(call_id, str) and call_id and call_id not in all_calls:
            all_calls.add(call_id)
            opened[call_id] = name
    return opened
