"""Secret and PII scrubbing for training data.

A secret that reaches a training file is memorised by the model and can be sampled back out, so
the builder replaces each match with a visible marker (`[REDACTED:<kind>]`) and counts it per
kind. Patterns run in order, most specific first: a connection string is redacted whole before
the e-mail pattern could take its `password@host` tail, and a key caught by its shape is not
caught again by name. Markers contain no quote, backslash or `@`, so redacting inside a
JSON string keeps it valid JSON and no later pattern matches a marker.

Personal data and bare keys (card numbers, phone numbers, SSNs, IBANs, an AWS secret access key
on its own) have no literal to look for: a pattern finds candidates and a validator in
curation/pii.py keeps only real ones. The independent scan of what was written is another
module with other code (curation/scan.py), so one's miss is the other's catch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from autoretrain.curation import pii

MARKER = "[REDACTED:{kind}]"

# What a secret value may be made of when found by its name: stops at quotes, backslashes
# (JSON escapes), separators and markup, so the redaction stays inside one JSON string.
_VALUE = r"[^\s\"'\\,;&<>(){}\[\]]"
_SECRET_NAMES = (
    r"api[_-]?key|apikey|secret[_-]?key|client[_-]?secret|access[_-]?key|access[_-]?token"
    r"|auth[_-]?token|refresh[_-]?token|id[_-]?token|bearer[_-]?token|private[_-]?key"
    r"|password|passwd|pwd|secret|token|credentials?|sas[_-]?token|account[_-]?key"
)

# Spans of 7 or more digits (with separators): the only text the personal-data rules (cards,
# phone numbers, SSNs, IBANs) can match, found by one cheap search before any of them runs.
_DIGITS = re.compile(r"\d(?:[^0-9A-Za-z]{0,3}\d){6}")
DIGITS = "digits"  # the gate of a rule that needs such a span
# A token this long is the least the random-token rule looks at (below it, no string is tried).
_MIN_TOKEN = 32


@dataclass(frozen=True)
class Pattern:
    """One builtin rule. `triggers` are lower-case literals, one of which every match contains:
    a substring test (C speed) skips the regex, which costs about a microsecond per character
    in Python's engine, on the text most strings are. `group` is the part replaced (0: the
    whole match); `validate` keeps only the matches it accepts."""

    kind: str
    pattern: str
    triggers: tuple[str, ...] = ()
    group: int = 0
    validate: Callable[[re.Match[str]], bool] | None = None
    gate: str | None = None  # DIGITS: run only where a digit span is; None: by triggers


def _whole(check: Callable[[str], bool]) -> Callable[[re.Match[str]], bool]:
    return lambda m: check(m.group(0))


# In the order they are applied.
BUILTIN_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?"
        r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|(?=[\"'])|$)",
        ("private key",),
    ),
    # Azure Storage / Service Bus style: redact the whole string, it names the account too.
    Pattern(
        "connection_string",
        r"(?i)\b(?:DefaultEndpointsProtocol|Endpoint)=[^\s\"'\\]*?"
        r"(?:AccountKey|SharedAccessKey|SharedAccessSignature)=[^\s\"'\\;]+;?",
        ("accountkey", "sharedaccess"),
    ),
    # scheme://user:password@host — databases, brokers, HTTP basic auth in a URL.
    Pattern(
        "connection_string",
        r"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"'\\]+:[^\s@/\"'\\]+@[^\s/\"'\\?#]+",
        ("://",),
    ),
    # A shared access signature (Azure SAS URL or token): the signature is the secret.
    Pattern("azure_sas", r"(?i)(?:^|[?&;\s])sig=([A-Za-z0-9%+/=_-]{10,})", ("sig=",), group=1),
    Pattern("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", ("eyj",)),
    Pattern("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}", ("bearer",)),
    Pattern("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", ("sk-ant-",)),
    Pattern("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", ("sk-",)),
    Pattern("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", ("akia", "asia")),
    Pattern(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Pattern("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}", ("aiza",)),
    Pattern("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", ("xox",)),
    Pattern("stripe_key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}", ("_live_", "_test_")),
    Pattern("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}", ("hf_",)),
    # By name: `api_key=…`, `"password": "…"`, `OPENAI_API_KEY=…`, `AccountKey=…`; also inside
    # JSON that is itself a JSON string (tool-call arguments), where quotes arrive escaped.
    Pattern(
        "named_secret",
        r"(?i)(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_.-])*(?:" + _SECRET_NAMES + r")"
        r"(?:[_.-][A-Za-z0-9]+)*\\?[\"']?\s*[:=]\s*\\?[\"']?"
        r"(?!\[REDACTED)(?=" + _VALUE + r"*[A-Za-z])(" + _VALUE + r"{8,})",
        ("key", "secret", "token", "passw", "pwd", "credential"),
        group=1,
    ),
    Pattern(
        "email",
        r"[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        ("@",),
    ),
    Pattern(
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        gate=DIGITS,
        validate=_whole(pii.is_iban),
    ),
    # Written as cards are: four groups of four (a fifth of up to three), Amex's 4-6-5, or
    # 13 to 19 digits in one piece; never a window of a longer number, nor digits inside a
    # word (a hex id).
    Pattern(
        "card_number",
        r"(?<![\w.])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5}"
        r"|\d{13,19})(?!\w|[.,]\d)",
        gate=DIGITS,
        validate=_whole(pii.is_card),
    ),
    Pattern(
        "us_ssn",
        r"(?<![\d.])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d]|[.,-]\d)",
        gate=DIGITS,
        validate=lambda m: pii.is_ssn(m.group(1), m.group(3), m.group(4)),
    ),
    # Nine bare digits are an SSN only when named so.
    Pattern(
        "us_ssn",
        r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}((\d{3})(\d{2})(\d{4}))\b",
        ("ssn", "social security"),
        group=1,
        validate=lambda m: pii.is_ssn(m.group(2), m.group(3), m.group(4)),
    ),
    Pattern(
        "phone_number",
        # +international; (415) 555-2671 / 415-555-2671 / 415.555.2671; a bare 10 or 11 digits
        # (accepted only after a word like "phone", see pii.is_phone).
        r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5}"
        r"|(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}|1?\d{10})(?![\w]|[.,-]\d)",
        gate=DIGITS,
        validate=pii.is_phone,
    ),
    # Long random tokens: a bare AWS secret access key (40 characters) or another key with no
    # telling prefix. Last, so every key with a known shape already carries its own kind.
    Pattern(
        "aws_secret_key",
        r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])",
        validate=_whole(pii.is_random_token),
        gate="token",
    ),
    Pattern(
        "high_entropy_string",
        rf"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/=]{{{_MIN_TOKEN},}}(?![A-Za-z0-9+/=])",
        validate=_whole(pii.is_random_token),
        gate="token",
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
    value_group: int  # 0: the whole match is the secret; n: only group n (a value after a name)
    triggers: tuple[str, ...] = ()  # none and no gate: always run (user patterns)
    validate: Callable[[re.Match[str]], bool] | None = None
    gate: str | None = None


def _compile(patterns: Iterable[Pattern]) -> list[_Rule]:
    return [
        _Rule(p.kind, re.compile(p.pattern), p.group, p.triggers, p.validate, p.gate)
        for p in patterns
    ]


_BUILTIN_RULES = _compile(BUILTIN_PATTERNS)
_TOKEN_RULES = [rule for rule in _BUILTIN_RULES if rule.gate not in (None, DIGITS)]


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
            and rule.gate is None
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
        digits = _DIGITS.search(text) is not None
        long_enough = len(text) >= _MIN_TOKEN
        rules = self.rules
        if not self.extra and not digits:
            for gate in _GATE:
                if gate in lower:
                    break
            else:
                # No literal and no digit span: only the random-token rules can match.
                if not long_enough:
                    return text, ()
                rules = _TOKEN_RULES
        kinds: list[str] = []
        for rule in rules:
            if rule.gate == DIGITS:
                if not digits:
                    continue
            elif rule.gate is not None:
                if not long_enough:
                    continue
            elif rule.triggers and not any(t in lower for t in rule.triggers):
                continue
            text = rule.regex.sub(lambda m, rule=rule: _replace(rule, m, kinds), text)
        return text, tuple(kinds)


def _replace(rule: _Rule, match: re.Match[str], kinds: list[str]) -> str:
    if rule.validate is not None and not rule.validate(match):
        return match.group(0)
    if rule.value_group:
        value = match.group(rule.value_group)
        if value.lower() in _NOT_SECRETS:
            return match.group(0)
        kinds.append(rule.kind)
        start = match.start(rule.value_group) - match.start(0)
        end = match.end(rule.value_group) - match.start(0)
        whole = match.group(0)
        return whole[:start] + MARKER.format(kind=rule.kind) + whole[end:]
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
