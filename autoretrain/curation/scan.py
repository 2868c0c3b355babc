"""The independent scan for secrets and personal data in what a dataset version wrote.

It shares no detection code with the scrubber (curation/redact.py): secrets are found by
Yelp's detect-secrets plugins (AWS, Azure storage keys, JWT, private keys, GitHub, OpenAI,
Slack, Stripe, basic auth in URLs, keyword assignments, Shannon entropy of long tokens), card
numbers, SSNs and IBANs by python-stdnum's validators, phone numbers by libphonenumber's
matcher, and the few kinds none of them covers (e-mail, Azure SAS signatures) by expressions
of this module's own. A secret the scrubber misses is caught here, and the builder drops the
example; what the scan misses, the scrubber has already replaced.

Each detector runs only where a cheap test (a lower-case literal it needs, a span of digits, a
long token) says it could match, so the scan of an ordinary line costs a few substring tests
per string. The scan reports kinds and line numbers, never the secret itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import phonenumbers
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import BasePlugin
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import REGEX_BY_FILETYPE, KeywordDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.util.filetype import FileType
from stdnum import iban, luhn
from stdnum.us import ssn

from autoretrain.curation.redact import PatternError

# (kind, plugin, literals one of which any match contains, lower-case). Kinds are named as
# the scrubber names them, so a report reads the same whichever side found a secret.
_PLUGINS: tuple[tuple[str, BasePlugin, tuple[str, ...]], ...] = (
    ("private_key", PrivateKeyDetector(), ("private key", "ssh2", "putty")),
    ("connection_string", AzureStorageKeyDetector(), ("accountkey=",)),
    ("connection_string", BasicAuthDetector(), ("://",)),
    ("jwt", JwtTokenDetector(), ("eyj",)),
    ("openai_key", OpenAIDetector(), ("t3blbkfj",)),
    ("aws_access_key", AWSKeyDetector(), ("akia", "asia", "abia", "acca", "a3t", "aws")),
    ("github_token", GitHubTokenDetector(), ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("slack_token", SlackDetector(), ("xox", "hooks.slack.com")),
    ("stripe_key", StripeDetector(), ("k_live_",)),
)
_KEYWORD = KeywordDetector()
# What each of the keyword plugin's names holds (its DENYLIST: api_?key, db_?pass, password,
# secret, ...), lower-case: "key" alone would send every tool spec with a `key` to it.
_KEYWORD_WORDS = ("_key", "apikey", "authkey", "servicekey", "accountkey", "dbkey")
_KEYWORD_WORDS += ("databasekey", "privkey", "privatekey", "clientkey", "passw", "dbpass")
_KEYWORD_WORDS += (
    "db_pass",
    "databasepass",
    "database_pass",
    "keypass",
    "key_pass",
    "pwd",
    "secret",
)
_KEYWORD_WORDS += ("contrase",)
# Prose and `name: value` lines carry no quotes: YAML's rules are the ones that take those.
_UNQUOTED = REGEX_BY_FILETYPE[FileType.YAML]
_ENTROPY = Base64HighEntropyString()
_ENTROPY_LIMIT = 4.2  # bits a character; detect-secrets' default is 4.5, on quoted strings only
_TOKEN_CHARS = string.ascii_letters + string.digits + "+/="
_TOKEN = re.compile(r"[A-Za-z0-9+/=]{32,}")
_VALUE_END = re.compile(r"[\s\"'\\,;&<>(){}\[\]]")
_NOT_VALUES = frozenset({"null", "none", "true", "false", "undefined", "required", "redacted"})

_EMAIL = re.compile(r"[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
_SAS = re.compile(r"(?i)\bsig=([^&\s\"'<>]{10,})")
_DIGIT_SPAN = re.compile(r"[0-9](?:[\s().+/-]{0,3}[0-9]){6}")
_DIGIT_SPANS = re.compile(r"[0-9](?:[\s().+/-]{0,3}[0-9]){6,}")
# Digits inside a word (a hex id, a hash) are not a card.
_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9_])[0-9]+(?:[ -][0-9]+)*(?![A-Za-z0-9_])")
_SSN = re.compile(r"(?<![0-9])([0-9]{3})[- ]([0-9]{2})[- ]([0-9]{4})(?!-?[0-9])")
_SSN_NAMED = re.compile(r"(?i)(?:ssn|social security)\D{0,12}([0-9]{9})(?![0-9])")
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}")
# libphonenumber parses every number-like candidate (~0.3 ms each): a string of thousands of
# numbers is cut off there, where the scrubber's own phone rule has already looked.
_PHONE_TRIES = 2000
_PHONE_WORDS = re.compile(r"(?i)\b(?:phone|tel|call|mobile|cell|sms|fax|whatsapp|contact|dial)\b")


class _Extra:
    """`settings.dataset.extra_secret_patterns`, compiled here (not by the scrubber)."""

    def __init__(self, patterns: Iterable[str]):
        self.rules: list[tuple[str, re.Pattern[str]]] = []
        for index, pattern in enumerate(patterns):
            try:
                self.rules.append((f"custom_{index}", re.compile(pattern)))
            except re.error as exc:
                raise PatternError(
                    f"settings.dataset.extra_secret_patterns[{index}] {pattern!r} is not a "
                    f"valid regular expression ({exc}); fix or remove it in autoretrain.yaml"
                ) from exc


@lru_cache(maxsize=16)
def _extra(patterns: tuple[str, ...]) -> _Extra:
    return _Extra(patterns)


def _keyword_value(value: str) -> bool:
    """A value detect-secrets found after a keyword that is a secret by the scrubber's own
    measure (8 characters up to a separator, a letter among them): the scan flags nothing the
    scrubber would have let through as ordinary text, so no clean run is dropped."""
    value = _VALUE_END.split(value.strip("\"' "), maxsplit=1)[0]
    return (
        len(value) >= 8
        and any(c.isalpha() for c in value)
        and value.lower() not in _NOT_VALUES
        and not value.startswith("*")
    )


def _secrets(text: str, lower: str, found: set[str]) -> None:
    named = False  # a plugin named what it found: its token is not reported again as random
    for kind, plugin, literals in _PLUGINS:
        if (
            any(t in lower for t in literals)
            and next(plugin.analyze_string(text), None) is not None
        ):
            found.add(kind)
            named = True
    if any(w in lower for w in _KEYWORD_WORDS):
        values = list(_KEYWORD.analyze_string(text))
        values += _KEYWORD.analyze_string(text, denylist_regex_to_group=_UNQUOTED)
        if any(_keyword_value(v) for v in values):
            found.add("named_secret")
    if "@" in text and _EMAIL.search(text):
        found.add("email")
    if "sig=" in lower and any(not m.group(1).startswith("[REDACTED") for m in _SAS.finditer(text)):
        found.add("azure_sas")
    if not named and len(text) >= 32:
        for match in _TOKEN.finditer(text):
            token = match.group(0)
            if _random(token):
                found.add("aws_secret_key" if len(token) == 40 else "high_entropy_string")


def _random(token: str) -> bool:
    # Stricter than the scrubber's test (pii.is_random_token): what the scrubber let through
    # as ordinary text is not flagged here, and a random key is flagged by both. Words run
    # together with numbers ("table126737Manila998") have entropy but few changes of case.
    if not (
        any(c.isdigit() for c in token)
        and any(c.isupper() for c in token)
        and any(c.islower() for c in token)
    ):
        return False
    changes = sum(
        (a.isupper(), a.islower(), a.isdigit()) != (b.isupper(), b.islower(), b.isdigit())
        for a, b in zip(token, token[1:], strict=False)
    )
    return (
        changes >= 0.3 * (len(token) - 1)
        and _ENTROPY.calculate_shannon_entropy(token) > _ENTROPY_LIMIT
    )


def _longest_digits(text: str) -> int:
    return max((sum(c.isdigit() for c in m) for m in _DIGIT_SPANS.findall(text)), default=0)


def _personal(text: str, found: set[str]) -> None:
    # How many digits the longest span holds decides which detectors can match: a card has
    # 13 or more, a US phone number 10 (fewer only after a `+`), an SSN 9.
    longest = _longest_digits(text)
    if longest >= 13 and any(_has_card(m.group(0)) for m in _DIGIT_RUN.finditer(text)):
        found.add("card_number")
    for match in _SSN.finditer(text):
        if ssn.is_valid("".join(match.groups())):
            found.add("us_ssn")
            break
    if "ssn" in text.lower() or "social security" in text.lower():
        for match in _SSN_NAMED.finditer(text):
            if ssn.is_valid(match.group(1)):
                found.add("us_ssn")
    for match in _IBAN.finditer(text):
        if any(iban.is_valid(c) for c in _iban_candidates(match.group(0))):
            found.add("iban")
            break
    if longest < 10 and "+" not in text:
        return
    # STRICT_GROUPING: digits grouped as the country groups them ("8388.767605" is not).
    matcher = phonenumbers.PhoneNumberMatcher(
        text, "US", phonenumbers.Leniency.STRICT_GROUPING, max_tries=_PHONE_TRIES
    )
    for match in matcher:
        raw = match.raw_string
        formatted = raw.startswith("+") or re.search(r"[0-9][\s().-]+[0-9]", raw)
        if formatted or _PHONE_WORDS.search(text[max(0, match.start - 40) : match.start]):
            found.add("phone_number")
            break


# Issuer prefixes: Visa, Mastercard, Amex, Diners, JCB, Discover, UnionPay.
_CARD_PREFIXES = ("4", "51", "52", "53", "54", "55", "22", "23", "24", "25", "26", "27")
_CARD_PREFIXES += ("34", "37", "30", "36", "38", "35", "60", "62", "64", "65")


def _has_card(run: str) -> bool:
    """Whether consecutive groups of a run of digits (`10-4868 6752 5539 9018`), each of four
    digits or more but the last, make 13 to 19 digits that pass the Luhn check and start as
    card numbers do. A number longer than that in one piece is a number, not a card."""
    groups = re.split(r"[ -]", run)
    for first in range(len(groups)):
        digits = ""
        for group in groups[first : first + 5]:  # 19 digits are at most 5 groups of 4+
            digits += group
            if len(digits) > 19:
                break
            if (
                len(digits) >= 13
                and digits.startswith(_CARD_PREFIXES)
                and len(set(digits)) > 1
                and luhn.is_valid(digits)
            ):
                return True
            if len(group) < 4:
                break
    return False


def _iban_candidates(text: str) -> Iterator[str]:
    """The match, then shorter at each space: a grouped IBAN may run into the next word."""
    yield text
    parts = text.split(" ")
    for end in range(len(parts) - 1, 1, -1):
        yield " ".join(parts[:end])


@lru_cache(maxsize=8192)
def _scan_short(text: str) -> frozenset[str]:
    return frozenset(_scan(text))


# Letters that case-insensitive expressions match as ASCII ones ("paſſword"): folded before
# the literal tests, which would otherwise skip a detector that matches.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def _lower(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


# Every literal some detector needs: a line none of them is in, with no digit span and no
# long token, holds nothing any detector could find.
_LITERALS = tuple(
    sorted({t for _, _, literals in _PLUGINS for t in literals} | {*_KEYWORD_WORDS, "@", "sig="})
)
# The same literals grouped under a part several share ("key", "pass", "gh"): a line without
# the part skips the group, so an ordinary line costs about half the substring tests.
_SHARED_PARTS = ("key", "pass", "gh")
_LITERAL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (part, tuple(t for t in _LITERALS if part in t)) for part in _SHARED_PARTS
) + tuple((t, (t,)) for t in _LITERALS if not any(part in t for part in _SHARED_PARTS))


def _has_literal(lower: str) -> bool:
    """`any(t in lower for t in _LITERALS)`, group by group."""
    for part, literals in _LITERAL_GROUPS:
        if part in lower:
            for literal in literals:
                if literal in lower:
                    return True
    return False


# JSON escapes that stand for a character a detector's gate looks at (whitespace between
# digits, a slash in a token); `\u` escapes can stand for anything and send a line to the walk.
_UNESCAPE = (("\\n", " "), ("\\t", " "), ("\\r", " "), ("\\/", "/"))


def _line_is_plain(line: str) -> bool:
    """Whether nothing in a JSON line (its decoded strings, and the JSON held in them) can be
    found by any builtin detector: the gate that lets an ordinary line skip the walk."""
    if "\\u" in line:
        return False
    for escape, char in _UNESCAPE:
        if escape in line:
            line = line.replace(escape, char)
    lower = _lower(line)
    return not (_has_literal(lower) or _DIGIT_SPAN.search(line) or _has_long_token(line))


# The JSON a line is made of around its parts (see `parts_are_plain`), plain itself.
_GLUE = '{"messages": [], "tools": }'


@lru_cache(maxsize=8192)
def _long_part_is_plain(text: str) -> bool:
    return _line_is_plain(text)


def parts_are_plain(parts: Iterable[str]) -> bool:
    """`_line_is_plain` of a JSON line written as `{"messages": [` + its messages' JSON joined
    by ", " + `], "tools": ` + the tools' JSON + `}`, read off the parts: nothing a gate looks
    for can straddle a part's edge (a literal holds no quote, bracket, brace or comma; a digit
    span or a token no bracket or brace; an escape stays inside its string), so the line is
    plain when every part is. Long parts (system prompts, tool specs) recur run after run and
    are looked up."""
    for part in parts:
        if not (_long_part_is_plain(part) if len(part) >= 256 else _line_is_plain(part)):
            return False
    return True


# Bytes of the characters a random token is made of, as "a"; every other byte as a space.
_TOKEN_TABLE = bytes(97 if chr(i) in _TOKEN_CHARS else 32 for i in range(256))


def _has_long_token(text: str) -> bool:
    """Whether `text` holds 32 token characters in a row: a C-speed translate and substring
    test for ASCII text (a third of the regex's time on a line), the regex otherwise."""
    if text.isascii():
        return b"a" * 32 in text.encode("ascii").translate(_TOKEN_TABLE)
    return _TOKEN.search(text) is not None


def _scan(text: str) -> set[str]:
    found: set[str] = set()
    lower = _lower(text)
    _secrets(text, lower, found)
    if _DIGIT_SPAN.search(text):
        _personal(text, found)
    return found


def _builtin(text: str) -> Iterable[str]:
    # Strings repeat (system prompts, tool specs, keys): short ones are looked up.
    return _scan_short(text) if len(text) <= 4096 else _scan(text)


def _scanner(extra_patterns: Iterable[str]) -> Callable[[str], Iterable[str]]:
    rules = _extra(tuple(extra_patterns)).rules
    if not rules:
        return _builtin

    def scan(text: str) -> set[str]:
        found = set(_builtin(text))
        found.update(kind for kind, regex in rules if regex.search(text))
        return found

    return scan


def scan_text(text: str, extra_patterns: Iterable[str] = ()) -> set[str]:
    """Kinds of secret and personal data in one string (each kind once)."""
    return set(_scanner(extra_patterns)(text))


class _Walk:
    """Every string of a decoded JSON value, keys included; JSON held in a string (tool-call
    arguments) is decoded and walked too; a string under a key is also read as `"key":
    "value"`, so a `{"password": ...}` pair is seen as the assignment it was."""

    def __init__(self, scan: Callable[[str], Iterable[str]]):
        self.scan = scan
        self.found: set[str] = set()

    def value(self, value: Any, depth: int = 0) -> None:
        if depth > 200:  # deeper than any real record; what is there is scanned as text
            self.found.update(self.scan(json.dumps(value, ensure_ascii=False)[:100_000]))
            return
        if isinstance(value, str):
            self.string(value, depth)
        elif isinstance(value, list):
            for item in value:
                self.value(item, depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                key = str(key)
                self.found.update(self.scan(key))
                if isinstance(item, str) and any(w in key.lower() for w in _KEYWORD_WORDS):
                    self.found.update(self.scan(json.dumps({key: item}, ensure_ascii=False)))
                self.value(item, depth + 1)

    def string(self, value: str, depth: int) -> None:
        if value[:1] in ("{", "[") or value[:1].isspace():
            try:
                decoded = json.loads(value)
            except (ValueError, RecursionError):
                decoded = value
            if not isinstance(decoded, str):
                self.value(decoded, depth + 1)
                return
        self.found.update(self.scan(value))


def scan_value(value: Any, extra_patterns: Iterable[str] = ()) -> set[str]:
    """Kinds found anywhere in a decoded JSON value."""
    walk = _Walk(_scanner(extra_patterns))
    walk.value(value)
    return walk.found


def scan_decoded_line(
    text: str, decoded: Any, extra_patterns: Iterable[str] = (), plain: bool | None = None
) -> list[str]:
    """`scan_line` for a caller that has already decoded the line (`decoded` is
    `json.loads(text)`), so it is not decoded twice. `plain`, when the caller knows it, is
    `_line_is_plain(text)` (see `parts_are_plain`)."""
    extra = tuple(extra_patterns)
    if not extra and (_line_is_plain(text) if plain is None else plain):
        return []
    return sorted(scan_value(decoded, extra))


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def scan_line(text: str, extra_patterns: Iterable[str] = ()) -> list[str]:
    """Kinds on one line of a file: a JSONL record is decoded and walked; a line of an
    indented JSON file (the manifest) has its string literals decoded and scanned, each and
    as the `"key": "value"` pair they form; anything else is scanned as text."""
    extra = tuple(extra_patterns)
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        decoded = None
    if decoded is not None and not isinstance(decoded, int | float | bool):
        return scan_decoded_line(text, decoded, extra)
    found = scan_text(text, extra)
    literals = _STRING.findall(text)
    for literal in literals:
        try:
            string = json.loads(literal)
        except ValueError:
            continue
        found |= scan_value(string, extra)
    if len(literals) == 2 and re.match(r'\s*"(?:[^"\\]|\\.)*"\s*:', text):
        with contextlib.suppress(ValueError):
            found |= scan_value({json.loads(literals[0]): json.loads(literals[1])}, extra)
    return sorted(found)


def scan_file(path: Path, extra_patterns: Iterable[str] = ()) -> list[tuple[int, str]]:
    """(line number, kind) for every kind found on a line of a JSONL or JSON file. A
    byte-order mark is accepted; undecodable bytes are scanned as U+FFFD."""
    extra = tuple(extra_patterns)
    _extra(extra)  # fail early, naming the bad pattern
    found: list[tuple[int, str]] = []
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                found.extend((number, kind) for kind in scan_line(text, extra))
    return found


DATASET_FILES = ("train.jsonl", "eval.jsonl", "manifest.json")


def scan_dataset(
    version_dir: Path, extra_patterns: Iterable[str] = ()
) -> dict[str, list[tuple[int, str]]]:
    """The scan of each file of a dataset version that exists: train, eval and manifest."""
    extra = tuple(extra_patterns)
    return {
        name: scan_file(version_dir / name, extra)
        for name in DATASET_FILES
        if (version_dir / name).is_file()
    }


assert _line_is_plain(_GLUE)
