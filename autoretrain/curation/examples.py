"""One run → one OpenAI chat fine-tuning example (or the reason it cannot be one).

Which assistant turns are trained on (`weight`):
  A run is a sequence of *attempts*. The transcript alone says where one ends: after a failed
  attempt the workflow appends a user message whose content starts with "Verification failed:"
  (FEEDBACK_PREFIX). Every assistant turn before the last such message belongs to an attempt
  that failed and was later recovered: it gets `weight: 0` (kept as context, not trained on).
  The turns after it get `weight: 1`. Records from other apps may instead carry an integer
  `attempt` on every assistant message; then a turn gets weight 0 when its attempt has a failed
  verification (run.verifications) and is not the last attempt. That field wins when present.

What is cleaned rather than rejected (counted in Example.cleaned):
  lone surrogates and other text that cannot be encoded as UTF-8 (replaced with U+FFFD);
  tool outputs longer than `max_tool_output_chars` (cut, with a visible marker);
  two assistant messages in a row where the first is plain text (a planner's plan followed by
  the executor's turn) are merged into one turn, since both formats reject consecutive
  assistant messages.
What excludes the run (Exclusion.reason): see the `reason` strings below; each is counted by
the builder, none raises.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from autoretrain.curation.redact import Redactor
from autoretrain.curation.tool_specs import ToolSpecs
from autoretrain.runs.schema import Message, Run

# As agents/workflow.py writes it. Stored records keep it forever, so it is a record format,
# not a setting: a changed prefix in the workflow needs the old one recognised here too.
FEEDBACK_PREFIX = "Verification failed:"
TRUNCATION_MARKER = "\n…[truncated {n} characters]"


@dataclass
class Example:
    run_id: str
    split_key: str  # the opening prompt's hash: what the train/eval split keeps together
    scenario_id: str | None
    instance_hash: str | None
    category: str
    model: str
    agent_version: str
    record: dict[str, Any]  # the JSONL object: {"messages": [...], "tools": [...]}
    cleaned: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Exclusion:
    run_id: str
    reason: str
    detail: str = ""


class _Excluded(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _utf8_safe(text: str, cleaned: Counter[str]) -> str:
    """Text that cannot be written as UTF-8 (lone surrogates from a `\\ud800` JSON escape,
    say) gets U+FFFD in their place, so a write never fails halfway through a file."""
    if text.isascii():  # a flag on the string: no copy, unlike the encode below
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        cleaned["invalid_unicode"] += 1
        return "".join(ch if not 0xD800 <= ord(ch) <= 0xDFFF else "\ufffd" for ch in text)


def truncate(text: str, limit: int, cleaned: Counter[str]) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    cleaned["truncated_tool_output"] += 1
    return text[:limit] + TRUNCATION_MARKER.format(n=len(text) - limit)


def _is_feedback(message: Message) -> bool:
    return (
        message.role == "user"
        and isinstance(message.content, str)
        and message.content.lstrip().startswith(FEEDBACK_PREFIX)
    )


def failed_turns(run: Run) -> set[int]:
    """Indices (into run.messages) of assistant turns in attempts that failed and were
    recovered. See the module docstring for the rule."""
    messages = run.messages
    attempts = {i: _attempt(m) for i, m in enumerate(messages) if m.role == "assistant"}
    if attempts and all(type(a) is int for a in attempts.values()):
        last = max(attempts.values())
        failed = {v.attempt for v in run.verifications if not v.passed}
        return {i for i, a in attempts.items() if a in failed and a < last}
    feedback = [i for i, m in enumerate(messages) if _is_feedback(m)]
    if not feedback:
        return set()
    return {i for i, m in enumerate(messages[: feedback[-1]]) if m.role == "assistant"}


def _attempt(message: Message) -> Any:
    """`getattr(message, "attempt", None)`: an unknown field lives in the model's extras, read
    directly (a missed getattr on a pydantic model raises and catches inside, ~3 µs)."""
    extra = getattr(message, "__pydantic_extra__", None)
    if extra is None:
        return getattr(message, "attempt", None)
    return extra.get("attempt")


def split_key(run: Run) -> str:
    """The unit the train/eval split keeps together (curation/split.py): the opening prompt
    (system and user), so that repeats of one request, or one instance of a scenario, never
    straddle the split, whether a run names its scenario or not. The split stratifies these
    keys by scenario, so every scenario has instances on both sides."""
    opening = [m.content or "" for m in run.messages if m.role in ("system", "user")][:2]
    digest = hashlib.sha256("\x00".join(opening).encode("utf-8", "replace")).hexdigest()
    return f"prompt:{digest[:16]}"


class _Scrubber:
    """Makes every string UTF-8-safe and, with a redactor, free of secrets."""

    def __init__(
        self,
        redactor: Redactor | None,
        cleaned: Counter[str],
        tool_specs: ToolSpecs | None = None,
    ):
        self.redactor = redactor
        self.cleaned = cleaned
        self.tool_specs = tool_specs

    def text(self, value: str) -> str:
        value = _utf8_safe(value, self.cleaned)
        return self.redactor.redact(value) if self.redactor else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {
                self.text(str(k)): self.field(str(k), v) if isinstance(v, str) else self.value(v)
                for k, v in value.items()
            }
        return value

    def field(self, key: str, value: str) -> str:
        value = _utf8_safe(value, self.cleaned)
        return self.redactor.redact_field(key, value) if self.redactor else value

    def arguments(self, arguments: str) -> str:
        """Arguments are JSON held in a string: scrub the decoded strings and re-encode only
        if something changed, so the result still parses and untouched calls keep their
        bytes. The caller has checked that they parse."""
        value = json.loads(arguments)
        scrubbed = self.value(value)
        if scrubbed == value:
            return arguments
        return json.dumps(scrubbed, ensure_ascii=False)


def run_to_example(
    run: Run,
    max_tool_output_chars: int,
    redactor: Redactor | None = None,
    tool_specs: ToolSpecs | None = None,
) -> Example | Exclusion:
    """Turn one run into an example. With a redactor, secrets are scrubbed from every string
    *before* tool outputs are cut, so a cut can never leave half a secret behind. The builder
    passes `tool_specs`, its memo of scrubbed tool specs (the same result, computed once)."""
    cleaned: Counter[str] = Counter()
    try:
        record = _record(run, max_tool_output_chars, _Scrubber(redactor, cleaned, tool_specs))
    except _Excluded as exc:
        return Exclusion(run.run_id, exc.reason, exc.detail)
    return Example(
        run_id=run.run_id,
        split_key=_utf8_safe(split_key(run), Counter()),
        scenario_id=run.scenario_id,
        instance_hash=run.instance_hash,
        category=run.category or "uncategorised",
        model=run.model,
        agent_version=run.agent_version,
        record=record,
        cleaned=cleaned,
    )


def _record(run: Run, limit: int, scrub: _Scrubber) -> dict[str, Any]:
    if not run.messages:
        raise _Excluded("no_transcript", "the run has no messages")
    if not any(m.role == "assistant" for m in run.messages):
        raise _Excluded("no_assistant_turn", "the transcript has no assistant message")

    zero = failed_turns(run)
    tools = _tools(run, scrub)
    declared = {spec["function"]["name"] for spec in tools}
    messages: list[dict[str, Any]] = []
    open_calls: set[str] = set()
    seen_calls: set[str] = set()
    for index, message in enumerate(run.messages):
        if message.role == "tool":
            call_id = message.tool_call_id
            if not call_id or call_id not in open_calls:
                what = "no tool_call_id" if not call_id else f"tool_call_id {call_id!r}"
                raise _Excluded(
                    "orphan_tool_message",
                    f"message {index}: tool message with {what} answers no earlier call",
                )
            open_calls.discard(call_id)
            content = truncate(scrub.text(message.content or ""), limit, scrub.cleaned)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
            continue
        if open_calls:
            raise _Excluded(
                "unanswered_tool_call",
                f"message {index}: call(s) {sorted(open_calls)} have no tool result before it",
            )
        if message.role in ("system", "user"):
            if message.content is None or not message.content.strip():
                raise _Excluded("empty_message", f"message {index}: {message.role} has no content")
            messages.append({"role": message.role, "content": scrub.text(message.content)})
            continue
        turn = _assistant(message, index, scrub, declared, seen_calls)
        turn["weight"] = 0 if index in zero else 1
        previous = messages[-1] if messages else None
        if previous and previous["role"] == "assistant":
            if "tool_calls" in previous or previous["weight"] != turn["weight"]:
                raise _Excluded(
                    "consecutive_assistant_turns",
                    f"message {index}: follows another assistant turn that cannot be merged",
                )
            _merge_into(turn, previous)
            messages[-1] = turn
            scrub.cleaned["merged_assistant_turns"] += 1
        else:
            messages.append(turn)
        open_calls.update(call["id"] for call in turn.get("tool_calls", []))
    if open_calls:
        raise _Excluded("unanswered_tool_call", f"call(s) {sorted(open_calls)} never answered")
    if messages[-1]["role"] != "assistant":
        raise _Excluded(
            "no_final_answer", f"the transcript ends with a {messages[-1]['role']} message"
        )
    if not any(m["role"] == "assistant" and m["weight"] == 1 for m in messages):
        raise _Excluded("no_trainable_turn", "every assistant turn belongs to a failed attempt")
    record: dict[str, Any] = {"messages": messages}
    if tools:
        record["tools"] = tools
    return record


def _merge_into(turn: dict[str, Any], previous: dict[str, Any]) -> None:
    parts = [previous.get("content"), turn.get("content")]
    calls = turn.pop("tool_calls", None)
    weight = turn.pop("weight")
    # Rebuilt in the usual key order: role, content, tool_calls, weight.
    turn["content"] = "\n\n".join(p for p in parts if p)
    if calls:
        turn["tool_calls"] = calls
    turn["weight"] = weight


def _assistant(
    message: Message, index: int, scrub: _Scrubber, declared: set[str], seen_calls: set[str]
) -> dict[str, Any]:
    content = message.content if isinstance(message.content, str) else None
    has_text = content is not None and bool(content.strip())
    calls = message.tool_calls or []
    if not calls and not has_text:
        raise _Excluded(
            "empty_assistant_turn", f"message {index}: assistant turn has neither content nor calls"
        )
    turn: dict[str, Any] = {"role": "assistant"}
    if has_text:
        turn["content"] = scrub.text(content or "")
    out_calls = []
    for call in calls:
        name = call.function.name
        if name not in declared:
            raise _Excluded(
                "undeclared_tool",
                f"message {index}: calls {name!r}, which is not among the run's tools",
            )
        if not call.id or call.id in seen_calls:
            raise _Excluded("duplicate_call_id", f"message {index}: call id {call.id!r} reused")
        seen_calls.add(call.id)
        try:
            parsed = json.loads(call.function.arguments)
        except ValueError as exc:
            raise _Excluded(
                "invalid_tool_arguments",
                f"message {index}: arguments of {name!r} are not JSON ({exc})",
            ) from None
        if not isinstance(parsed, dict):
            raise _Excluded(
                "invalid_tool_arguments",
                f"message {index}: arguments of {name!r} are not a JSON object",
            )
        out_calls.append(
            {
                "id": call.id,
                "type": "function",
                "function": {"name": name, "arguments": scrub.arguments(call.function.arguments)},
            }
        )
    if out_calls:
        turn["tool_calls"] = out_calls
    return turn


def _tools(run: Run, scrub: _Scrubber) -> list[dict[str, Any]]:
    """The run's tool specs in OpenAI shape, sorted by name so equal tool sets hash equal.
    Names are kept verbatim (calls must match them); descriptions and schemas are scrubbed."""
    memo, redactor = scrub.tool_specs, scrub.redactor
    if memo is None:
        return _scrub_tools(run.tools, scrub)

    def fresh(redactions: Counter[str], cleaned: Counter[str]) -> list[dict[str, Any]]:
        alone = Redactor(redactor.extra_patterns, redactions) if redactor else None
        return _scrub_tools(run.tools, _Scrubber(alone, cleaned))

    return memo.scrubbed(run.tools, fresh, redactor.counts if redactor else None, scrub.cleaned)


def _scrub_tools(tools: list[Any], scrub: _Scrubber) -> list[dict[str, Any]]:
    specs = []
    for index, spec in enumerate(tools):
        function = spec.get("function") if isinstance(spec, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _Excluded("malformed_tool_spec", f"tools[{index}] has no function name")
        body = {k: scrub.value(v) for k, v in function.items() if k != "name"}
        specs.append({"type": "function", "function": {"name": function["name"], **body}})
    names = [s["function"]["name"] for s in specs]
    if len(set(names)) != len(names):
        raise _Excluded("malformed_tool_spec", "two tools share a name")
    return sorted(specs, key=lambda s: s["function"]["name"])
