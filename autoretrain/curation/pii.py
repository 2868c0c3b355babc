"""The scrubber's checks for personal data and bare keys: a pattern finds a candidate, and a
validator decides whether it is one, so ordinary numbers (sums, ids, populations) are kept.

These are the scrubber's own; the independent scan (curation/scan.py) finds the same kinds
with other code (python-stdnum's validators, phonenumbers' matcher, detect-secrets' entropy),
so a slip in one is caught by the other.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import phonenumbers

# Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, JCB, Diners,
# UnionPay, Maestro): a Luhn-valid number without one is more likely an id than a card.
_CARD_PREFIX = re.compile(r"4|5[0-8]|2[2-7]|3[0-9]|6[0-9]")

# Words that make a bare 10-digit number a phone number ("call me on 4155552671") when one is
# in the 40 characters before it; without one, a run of digits is a number, not a phone.
PHONE_WORDS = re.compile(
    r"(?i)\b(?:phone|tel|call|mobile|cell|sms|fax|whatsapp|contact|dial|ring|text me|reach me)"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(text: str) -> bool:
    """13-19 digits in one consistent grouping, Luhn-valid, with a card network's prefix."""
    digits = re.sub(r"[ -]", "", text)
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    separators = set(re.findall(r"[ -]", text))
    return len(separators) <= 1 and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


def is_ssn(area: str, group: str, serial: str) -> bool:
    """The Social Security Administration's rules: no area 000, 666 or 9xx, no group 00,
    no serial 0000."""
    return (
        area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def is_iban(text: str) -> bool:
    """ISO 13616: two letters, two check digits, and the mod-97 check over the rest."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def is_phone(match: re.Match[str]) -> bool:
    """A number libphonenumber calls valid (US numbering when there is no `+`), written as a
    phone number is written (a `+`, or separators between digit groups), or right after a word
    like "phone" or "call"."""
    text = match.group(0)
    formatted = text.startswith("+") or bool(re.search(r"\d[ .()-]+\d", text))
    if not formatted:
        before = match.string[max(0, match.start() - 40) : match.start()]
        if not PHONE_WORDS.search(before):
            return False
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _kind(c: str) -> int:
    return 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3


def is_random_token(text: str) -> bool:
    """A long token that reads as random: upper and lower case letters, a digit or `+`/`/`,
    at least 4 bits of entropy a character (a random 40-character AWS secret access key has
    ~4.8, 99.9% of them over 4.3; words, CamelCase names, paths and hex digests stay below,
    or lack a case), and the kind of character changing often (a random token changes
    between upper, lower and digit at ~65% of its characters, 99.99% of 32-character ones
    at 30% or more; words run together with numbers, as a weak model writes them, at ~20%)."""
    if not (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() or c in "+/" for c in text)
        and text.count("/") <= 3
    ):
        return False
    kinds = [_kind(c) for c in text]
    changes = sum(a != b for a, b in zip(kinds, kinds[1:], strict=False))
    return changes >= 0.3 * (len(text) - 1) and entropy(text) >= 4.0
