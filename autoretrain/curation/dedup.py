"""Deduplication by a normalised content hash.

Two runs that say the same thing are one example: the hash ignores what varies between
identical conversations — tool-call ids (renumbered by position), whitespace runs and the
formatting of JSON arguments (re-encoded with sorted keys) — but keeps roles, text, tool
names, arguments, tool specs and weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from autoretrain.curation.examples import Example
from autoretrain.curation.tool_specs import ToolSpecs

_SPACE = re.compile(r"\s+")


def _text(value: Any) -> Any:
    return _SPACE.sub(" ", value).strip() if isinstance(value, str) else value


def _arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return _text(arguments)


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    ids: dict[str, str] = {}
    messages = []
    for message in record.get("messages", []):
        out: dict[str, Any] = {
            "role": message.get("role"),
            "content": _text(message.get("content")),
        }
        if "weight" in message:
            out["weight"] = message["weight"]
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                ids.setdefault(call.get("id"), f"c{len(ids)}")
                fn = call.get("function", {})
                calls.append([ids[call.get("id")], fn.get("name"), _arguments(fn.get("arguments"))])
            out["tool_calls"] = calls
        if "tool_call_id" in message:
            out["tool_call_id"] = ids.get(message["tool_call_id"], message["tool_call_id"])
        messages.append(out)
    return {"messages": messages, "tools": record.get("tools", [])}


def content_hash(record: dict[str, Any], tool_specs: ToolSpecs | None = None) -> str:
    normalised = normalise(record)
    tools = tool_specs.encoded(normalised["tools"], sort_keys=True) if tool_specs else None
    if tools is None:
        canonical = json.dumps(normalised, sort_keys=True, ensure_ascii=False)
    else:
        # The same text as above, with the builder's once-encoded tool specs: json.dumps
        # writes {"messages": ..., "tools": ...} with those separators, keys sorted.
        messages = json.dumps(normalised["messages"], sort_keys=True, ensure_ascii=False)
        canonical = f'{{"messages": {messages}, "tools": {tools}}}'
    return hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()


def deduplicate(examples: Iterable[Example]) -> tuple[list[Example], list[tuple[Example, str]]]:
    """Keep the first example of each content hash (callers sort first, so 'first' is
    deterministic). Returns (kept, [(dropped, run_id it duplicates)])."""
    seen: dict[str, str] = {}
    kept: list[Example] = []
    dropped: list[tuple[Example, str]] = []
    for example in examples:
        digest = content_hash(example.record)
        if digest in seen:
            dropped.append((example, seen[digest]))
        else:
            seen[digest] = example.run_id
            kept.append(example)
    return kept, dropped
