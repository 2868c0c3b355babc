"""Secret and PII scrubbing for training data, and an independent scan of written files.

A secret that reaches a training file is memorised by the model and can be sampled back out, so
the builder replaces each match with a visible marker (`[REDACTED:<kind>]`) and counts it per
kind. Patterns run in order, most specific first: a connection string is redacted whole before
the e-mail pattern could take its `password@host` tail, and a key caught by its shape is not
caught again by name. Markers contain no quote, backslash or `@`, so redacting inside a JSON
string keeps it valid JSON and no later pattern matches a marker.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "[REDACTED:{kind}]"

# What a secret value may be made of when found by its name: stops at quotes, backslashes
# (JSON escapes), separators and markup, so the redaction stays inside one JSON string.
_VALUE = r"[^\s\"'\\,;&<>(){}\[\]]"
_SECRET_NAMES = (
    r"api[_-]?key|apikey|secret[_-]?key|client[_-]?secret|access[_-]?key|access[_-]?token"
    r"|auth[_-]?token|refresh[_-]?token|id[_-]?token|bearer[_-]?token|private[_-]?key"
    r"|password|passwd|pwd|secret|token|credentials?|sas[_-]?token|account[_-]?key"
)

# (kind, pattern, triggers) in the order they are applied. Triggers are lower-case literals,
# one of which every match contains: a substring test (C speed) skips the regex, which costs
# about a microsecond per character in Python's engine, on the text most strings are.
BUILTIN_PATTERNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?"
        r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|(?=[\"'])|$)",
        ("private key",),
    ),
    # Azure Storage / Service Bus style: redact the whole string, it names the account too.
    (
        "connection_string",
        r"(?i)\b(?:DefaultEndpointsProtocol|Endpoint)=[^\s\"'\\]*?"
        r"(?:AccountKey|SharedAccessKey|SharedAccessSignature)=[^\s\"'\\;]+;?",
        ("accountkey", "sharedaccess"),
    ),
    # scheme://user:password@host — databases, brokers, HTTP basic auth in a URL.
    (
        "connection_string",
        r"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"'\\]+:[^\s@/\"'\\]+@[^\s/\"'\\?#]+",
        ("://",),
    ),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", ("eyj",)),
    ("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}", ("bearer",)),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", ("sk-ant-",)),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", ("sk-",)),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", ("akia", "asia")),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}", ("aiza",)),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", ("xox",)),
    ("stripe_key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}", ("_live_", "_test_")),
    ("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}", ("hf_",)),
    # By name: `api_key=…`, `"password": "…"`, `OPENAI_API_KEY=…`, `AccountKey=…`; also inside
    # JSON that is itself a JSON string (tool-call arguments), where quotes arrive escaped.
    (
        "named_secret",
        r"(?i)(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_.-])*(?:" + _SECRET_NAMES + r")"
        r"(?:[_.-][A-Za-z0-9]+)*\\?[\"']?\s*[:=]\s*\\?[\"']?"
        r"(?!\[REDACTED)(?=" + _VALUE + r"*[A-Za-z])(" + _VALUE + r"{8,})",
        ("key", "secret", "token", "passw", "pwd", "credential"),
    ),
    (
        "email",
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        ("@",),
    ),
)

_SECRET_KEY = re.compile(
    r"(?i)(?:[A-Za-z0-9]+[_.-])*(?:" + _SECRET_NAMES + r")(?:[_.-][A-Za-z0-9]+)*"
)

# Values that look like a named secret but are plainly not one ("token": "[PAD]" aside, which
# the 8-character floor already skips).
_NOT_SECRETS = frozenset({"null", "none", "true", "false", "undefined", "redacted", "required"})


def _names_secret(key: str, value: str) -> bool:
    stripped = value.strip()
    return (
        _SECRET_KEY.fullmatch(key) is not None
        and len(stripped) >= 4
        and stripped.lower() not in _NOT_SECRETS
        and not stripped.startswith("[REDACTED:")
    )


class PatternError(ValueError):
    """A configured extra secret pattern is not a valid regular expression."""


@dataclass(frozen=True)
class _Rule:
    kind: str
    regex: re.Pattern[str]
    value_group: int  # 0: the whole match is the secret; 1: only the value after a name
    triggers: tuple[str, ...] = ()  # none: always run (user patterns)


def _compile(patterns: Iterable[tuple[str, str, tuple[str, ...]]]) -> list[_Rule]:
    rules = []
    for kind, pattern, triggers in patterns:
        regex = re.compile(pattern)
        rules.append(_Rule(kind, regex, 1 if regex.groups else 0, triggers))
    return rules


_BUILTIN_RULES = _compile(BUILTIN_PATTERNS)


def compile_extra_patterns(patterns: Iterable[str]) -> list[_Rule]:
    """`settings.dataset.extra_secret_patterns`: each regex is its own kind, `custom_<n>`."""
    rules = []
    for index, pattern in enumerate(patterns):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise PatternError(
                f"settings.dataset.extra_secret_patterns[{index}] {pattern!r} is not a valid "
                f"regular expression ({exc}); fix or remove it in autoretrain.yaml"
            ) from exc
        # A user pattern redacts its whole match, whatever groups it uses.
        rules.append(_Rule(f"custom_{index}", regex, 0))
    return rules


@dataclass
class Redactor:
    """Replaces secrets in text with markers and counts what it replaced, per kind."""

    extra_patterns: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._extra = compile_extra_patterns(self.extra_patterns)
        self._rules = _BUILTIN_RULES + self._extra

    def redact(self, text: str) -> str:
        # A marker never matches a rule, so the lower-cased original is a safe guide for
        # the whole pass even as replacements change the text.
        lower = text.lower()
        for rule in self._rules:
            if rule.triggers and not any(t in lower for t in rule.triggers):
                continue
            text = rule.regex.sub(lambda m, rule=rule: self._replace(rule, m), text)
        return text

    def _replace(self, rule: _Rule, match: re.Match[str]) -> str:
        if rule.value_group:
            value = match.group(rule.value_group)
            if value.lower() in _NOT_SECRETS:
                return match.group(0)
            self.counts[rule.kind] += 1
            start = match.start(rule.value_group) - match.start(0)
            return match.group(0)[:start] + MARKER.format(kind=rule.kind)
        self.counts[rule.kind] += 1
        return MARKER.format(kind=rule.kind)

    def redact_field(self, key: str, value: str) -> str:
        """A string stored under a key: the whole value is a secret when the key names one
        (`{"password": "hunter2"}`, which no text pattern sees once key and value are split
        apart by JSON decoding); otherwise the value is scrubbed as text."""
        if _names_secret(key, value):
            self.counts["named_secret"] += 1
            return MARKER.format(kind="named_secret")
        return self.redact(value)

    def redact_value(self, value: Any) -> Any:
        """Redact every string in a JSON-like value, keys included, key-aware."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self.redact_value(item) for item in value]
        if isinstance(value, dict):
            return {
                self.redact(str(k)): (
                    self.redact_field(str(k), v) if isinstance(v, str) else self.redact_value(v)
                )
                for k, v in value.items()
            }
        return value


def find_secrets(text: str, extra_patterns: Iterable[str] = ()) -> list[str]:
    """Kinds of the secrets in `text` (one entry per match), without changing it."""
    probe = Redactor(list(extra_patterns))
    probe.redact(text)
    return sorted(probe.counts.elements())


def _nested_json(value: Any) -> Any:
    """Decode strings that hold JSON (tool-call arguments) so their keys count as keys."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return _nested_json(json.loads(stripped))
            except ValueError:
                return value
        return value
    if isinstance(value, list):
        return [_nested_json(item) for item in value]
    if isinstance(value, dict):
        return {k: _nested_json(v) for k, v in value.items()}
    return value


_SEPARATOR = '\n"\n'  # between scanned strings: no pattern matches across a quote and newline


def _collect(value: Any, strings: list[str], probe: Redactor) -> None:
    """Gather every string of a decoded line, and count key-named secrets on the way."""
    if isinstance(value, str):
        strings.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, strings, probe)
    elif isinstance(value, dict):
        for key, item in value.items():
            strings.append(str(key))
            if isinstance(item, str) and _names_secret(str(key), item):
                probe.counts["named_secret"] += 1
            else:
                _collect(item, strings, probe)


def scan_line(text: str, extra_patterns: Iterable[str] = ()) -> list[str]:
    """Kinds of secret on one JSONL line (each once), scanned as raw text and as decoded JSON
    (key-aware, with JSON held in strings decoded too): an escape such as `\\u0073k-` hides a
    key from the raw scan, and a `{"password": ...}` pair is only a pair once decoded."""
    probe = Redactor(list(extra_patterns))
    probe.redact(text)
    try:
        decoded = _nested_json(json.loads(text))
    except ValueError:  # not JSON: the raw scan is all there is
        return sorted(probe.counts)
    strings: list[str] = []
    _collect(decoded, strings, probe)
    probe.redact(_SEPARATOR.join(strings))
    return sorted(probe.counts)


def scan_for_secrets(path: Path, extra_patterns: Iterable[str] = ()) -> list[tuple[int, str]]:
    """Independent scan of a written JSONL file: (line number, kind) for every kind of secret
    found on a line. A byte-order mark is accepted; undecodable bytes are scanned as U+FFFD."""
    extra = list(extra_patterns)
    compile_extra_patterns(extra)  # fail early, naming the bad pattern
    found: list[tuple[int, str]] = []
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace")
            if number == 1:
                text = text.removeprefix("\ufeff")
            found.extend((number, kind) for kind in scan_line(text, extra))
    return found
