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
from functools import lru_cache
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


@lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.fullmatch(key) is not None


def _names_secret(key: str, value: str) -> bool:
    stripped = value.strip()
    return (
        _is_secret_key(key)
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


# Every trigger contains one of these: a string holding none of them cannot match any builtin
# rule, so the whole rule loop is skipped for it (most strings of a run).
_GATE = tuple(
    sorted(
        {
            t
            for rule in _BUILTIN_RULES
            for t in rule.triggers
            if not any(o != t and o in t for r in _BUILTIN_RULES for o in r.triggers)
        }
    )
)
# The non-ASCII letters that case-insensitive rules match as ASCII ones ("paſſword"): folded
# before the trigger tests, which would otherwise skip a rule that matches.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_FOLDED = ("\u0130", "\u0131", "\u017f", "\u212a")

# Strings seen again (tool specs, system prompts, JSON keys repeat across thousands of runs) are
# looked up instead of scanned; the memo is emptied when it holds _MEMO_CHARS characters, so
# its memory stays bounded (a few tens of MB) however many runs pass through.
_MEMO_CHARS = 16_000_000
_MEMO_MAX_CHARS = 16_384


class _Engine:
    """The rules for one list of extra patterns, and what they did to each string seen."""

    def __init__(self, extra_patterns: tuple[str, ...]):
        self.extra = compile_extra_patterns(extra_patterns)
        self.rules = _BUILTIN_RULES + self.extra
        self._memo: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._memo_chars = 0

    def redact(self, text: str, memo: bool = True) -> tuple[str, tuple[str, ...]]:
        """The redacted text and the kind of each replacement made (one entry per match).
        `memo=False` for text that will not recur (a whole line), so it takes no memo room."""
        found = self._memo.get(text)
        if found is not None:
            return found
        found = self._redact(text)
        if memo and len(text) <= _MEMO_MAX_CHARS:
            if self._memo_chars >= _MEMO_CHARS:
                self._memo.clear()
                self._memo_chars = 0
            self._memo[text] = found
            self._memo_chars += len(text) + len(found[0])
        return found

    def _redact(self, text: str) -> tuple[str, tuple[str, ...]]:
        # A marker never matches a rule, so the lower-cased original is a safe guide for
        # the whole pass even as replacements change the text.
        lower = text.lower()
        if not text.isascii() and any(c in text for c in _FOLDED):
            lower = text.translate(_FOLD).lower()
        if not self.extra:
            for gate in _GATE:
                if gate in lower:
                    break
            else:
                return text, ()
        kinds: list[str] = []
        for rule in self.rules:
            if rule.triggers and not any(t in lower for t in rule.triggers):
                continue
            text = rule.regex.sub(lambda m, rule=rule: _replace(rule, m, kinds), text)
        return text, tuple(kinds)


def _replace(rule: _Rule, match: re.Match[str], kinds: list[str]) -> str:
    if rule.value_group:
        value = match.group(rule.value_group)
        if value.lower() in _NOT_SECRETS:
            return match.group(0)
        kinds.append(rule.kind)
        start = match.start(rule.value_group) - match.start(0)
        return match.group(0)[:start] + MARKER.format(kind=rule.kind)
    kinds.append(rule.kind)
    return MARKER.format(kind=rule.kind)


@lru_cache(maxsize=16)
def _engine(extra_patterns: tuple[str, ...]) -> _Engine:
    return _Engine(extra_patterns)


@dataclass
class Redactor:
    """Replaces secrets in text with markers and counts what it replaced, per kind."""

    extra_patterns: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._engine = _engine(tuple(self.extra_patterns))

    def redact(self, text: str) -> str:
        text, kinds = self._engine.redact(text)
        for kind in kinds:
            self.counts[kind] += 1
        return text

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


_SEPARATOR = '\n"\n'  # between scanned strings: no pattern matches across a quote and newline


def _nested(value: str) -> Any:
    """A string that holds JSON (tool-call arguments), decoded so its keys count as keys;
    otherwise the string itself."""
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return value


class _Walk:
    """Scans every string of a decoded line, keys included, and the key-named pairs.

    Builtin rules cannot match across the separator that joins the strings for a scan (each
    stops at quotes or whitespace), so each string is scanned on its own, through the memo:
    the same kinds are found as in one scan of the joined strings. User patterns can match
    anything, so they still scan the joined (builtin-redacted) strings."""

    def __init__(self, extra_patterns: tuple[str, ...], kinds: set[str]):
        self.builtin = _engine(())
        self.extra = _engine(extra_patterns).extra
        self.kinds = kinds
        self.strings: list[str] | None = [] if self.extra else None

    def text(self, value: str) -> None:
        redacted, kinds = self.builtin.redact(value)
        if kinds:
            self.kinds.update(kinds)
        if self.strings is not None:
            self.strings.append(redacted)

    def string(self, value: str) -> None:
        """A string value: scanned, or walked when it holds JSON."""
        first = value[:1]
        if first and (first in "{[" or first.isspace()):
            decoded = _nested(value)
            if not isinstance(decoded, str):
                self.value(decoded)
                return
        self.text(value)

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            self.string(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    self.string(item)
                elif isinstance(item, list | dict):
                    self.value(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.text(key if isinstance(key, str) else str(key))
                if isinstance(item, str):
                    first = item[:1]
                    if first and (first in "{[" or first.isspace()):
                        decoded = _nested(item)
                        if not isinstance(decoded, str):
                            self.value(decoded)
                            continue
                    if _names_secret(str(key), item):
                        self.kinds.add("named_secret")
                    else:
                        self.text(item)
                elif isinstance(item, list | dict):
                    self.value(item)

    def finish(self) -> None:
        if self.strings:
            kinds: list[str] = []
            joined = _SEPARATOR.join(self.strings)
            for rule in self.extra:
                joined = rule.regex.sub(lambda m, rule=rule: _replace(rule, m, kinds), joined)
            self.kinds.update(kinds)


def scan_line(text: str, extra_patterns: Iterable[str] = ()) -> list[str]:
    """Kinds of secret on one JSONL line (each once), scanned as raw text and as decoded JSON
    (key-aware, with JSON held in strings decoded too): an escape such as `\\u0073k-` hides a
    key from the raw scan, and a `{"password": ...}` pair is only a pair once decoded."""
    try:
        decoded = json.loads(text)
    except ValueError:  # not JSON: the raw scan is all there is
        extra = tuple(extra_patterns)
        return sorted(set(_engine(extra).redact(text, memo=False)[1]))
    return scan_decoded_line(text, decoded, extra_patterns)


def scan_decoded_line(text: str, decoded: Any, extra_patterns: Iterable[str] = ()) -> list[str]:
    """`scan_line` for a caller that has already decoded the line (`decoded` is
    `json.loads(text)`), so it is not decoded twice."""
    extra = tuple(extra_patterns)
    kinds = set(_engine(extra).redact(text, memo=False)[1])
    walk = _Walk(extra, kinds)
    walk.value(decoded)
    walk.finish()
    return sorted(kinds)


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
