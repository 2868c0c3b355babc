"""Tool calls written as text, parsed into the OpenAI shape.

Models that follow the Hermes/Qwen convention write each call as

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2 + 3"}}
    </tool_call>

possibly several in one reply; text outside the tags is the message content. A parsed call gets
the id `call_<n>` (unique within the conversation: numbering continues after the ids already in
it) and its `arguments` as a JSON *string*, as OpenAI sends them.

Bad output is kept and reported, never dropped: a call whose inner text is not JSON keeps the raw
text as its arguments string, with a note, so the workflow can tell the model "arguments are not
JSON". Text with no tags is plain content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

_CALL_ID = re.compile(r"^call_(\d+)$")
_NAME_IN_BROKEN_JSON = re.compile(r'"name"\s*:\s*"([^"\\]*)"')


@dataclass
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI chat shape."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def next_call_index(messages: list[dict[str, Any]]) -> int:
    """The first n such that `call_<n>` is not yet used in the conversation."""
    used = -1
    count = 0
    for message in messages:
        for call in message.get("tool_calls") or []:
            count += 1
            match = _CALL_ID.match(str(call.get("id", "")))
            if match:
                used = max(used, int(match.group(1)))
    # Ids that do not follow our pattern still count, so ours stay clear of a mixed history.
    return max(used + 1, count)


def parse_tool_calls(text: str, first_index: int = 0) -> ParsedReply:
    """Split a model's raw reply into content and OpenAI-shaped tool calls."""
    calls: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    outside: list[str] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        inner_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, inner_start)
        if end < 0:
            inner = text[inner_start:]
            pos = len(text)
            if _parse_json(inner.strip()) is None:
                # Cut off (token cap) or abandoned: nothing callable, so it stays visible content.
                outside.append(text[start:])
                notes.append(
                    {"type": "tool_call_unterminated", "raw": inner.strip()[:500]},
                )
                break
            notes.append({"type": "tool_call_unterminated", "index": len(calls)})
        else:
            inner = text[inner_start:end]
            pos = end + len(CLOSE_TAG)
        call, note = _call_from_text(inner.strip(), f"call_{first_index + len(calls)}")
        calls.append(call)
        if note:
            note["index"] = len(calls) - 1
            notes.append(note)
    content = "".join(outside).strip()
    if calls:
        return ParsedReply(content or None, calls, notes)
    return ParsedReply("".join(outside), [], notes)


def _call_from_text(raw: str, call_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    data = _parse_json(raw)
    note: dict[str, Any] | None = None
    if not isinstance(data, dict):
        name_match = _NAME_IN_BROKEN_JSON.search(raw)
        name = name_match.group(1) if name_match else ""
        arguments = raw
        note = {
            "type": "tool_call_arguments_not_json",
            "raw": raw[:500],
            "detail": "tool call body is not a JSON object",
        }
    else:
        name = data.get("name")
        if not isinstance(name, str):
            name = ""
            note = {"type": "tool_call_missing_name", "raw": raw[:500]}
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):
            arguments = args
            if _parse_json(args) is None:
                note = {
                    "type": "tool_call_arguments_not_json",
                    "raw": args[:500],
                    "detail": "arguments string is not JSON",
                }
        else:
            arguments = json.dumps(args, ensure_ascii=False)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return call, note


def _parse_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def arguments_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages ready for a chat template: each tool call's JSON-string arguments decoded to an
    object, and content given as a list of parts (OpenAI's multi-part form) joined into text.

    Chat templates (Hermes, Qwen) render `arguments` with `tojson`: a string would come out
    double-quoted, unlike the training data. Arguments that are not JSON stay a string, so the
    model sees exactly what it wrote.
    """
    out = []
    for message in messages:
        if isinstance(message.get("content"), list):
            message = {**message, "content": text_of(message["content"])}
        calls = message.get("tool_calls")
        if not calls:
            out.append(message)
            continue
        converted = []
        for call in calls:
            fn = dict(call.get("function") or {})
            if isinstance(fn.get("arguments"), str):
                decoded = _parse_json(fn["arguments"])
                if isinstance(decoded, dict):
                    fn["arguments"] = decoded
            converted.append({**call, "function": fn})
        out.append({**message, "tool_calls": converted})
    return out


def text_of(parts: list[Any]) -> str:
    """The text of OpenAI content parts (`[{"type": "text", "text": ...}, ...]`); a part that is
    not text (an image) is left out, since these models read text only."""
    return "".join(
        str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else ""
        for p in parts
    )


class ContentStream:
    """Which streamed text may go out as content before the reply is complete.

    Everything before a tool call or an end marker (`markers`, e.g. `<|im_end|>`) is content;
    a tail that could be the start of a marker waits, and so does trailing whitespace (the
    parser strips it around tool calls). What `feed` returns is always a prefix of the final
    content; `rest` gives what the finished reply adds after it.
    """

    def __init__(self, markers: list[str]):
        self.markers = [OPEN_TAG, *(m for m in markers if m)]
        self.longest = max(len(m) for m in self.markers)
        self.buffer = ""
        self.sent = ""
        self.closed = False

    def feed(self, piece: str) -> str:
        if self.closed:
            return ""
        self.buffer += piece
        hits = [i for i in (self.buffer.find(m) for m in self.markers) if i >= 0]
        if hits:
            self.closed = True
            safe = self.buffer[: min(hits)]
        else:
            safe = self.buffer
            for k in range(min(len(safe), self.longest - 1), 0, -1):
                if any(m.startswith(safe[-k:]) for m in self.markers):
                    safe = safe[:-k]
                    break
        safe = safe.rstrip()
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        new, self.sent = safe[len(self.sent) :], safe
        return new

    def rest(self, final_content: str | None) -> str:
        final = final_content or ""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""
