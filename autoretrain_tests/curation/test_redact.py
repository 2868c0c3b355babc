from __future__ import annotations

import json

import pytest

from autoretrain.curation.redact import PatternError, Redactor

# Each planted secret, the kind it must be counted as, and a fragment that must not survive.
PLANTED = [
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz0123 here", "openai_key", "abcdefghijklmnop"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwx", "anthropic_key", "api03-abcdefgh"),
    ("OPENAI_API_KEY=abcd1234efgh5678", "named_secret", "abcd1234efgh"),
    ('{"client_secret": "Zq9!long-value"}', "named_secret", "Zq9!long"),
    ("Authorization: Bearer abcdefghijklmnop1234567890", "bearer_token", "abcdefghijklmnop"),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0T",
        "jwt",
        "dozjgNryP4J3",
    ),
    ("postgres://admin:s3cretpass@db.example.com:5432/prod", "connection_string", "s3cretpass"),
    (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFl/K1SZ==;",
        "connection_string",
        "Eby8vdM02",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "private_key",
        "MIIEpAIBAAKCAQEA",
    ),
    ("mail alice.smith@example.org now", "email", "alice.smith"),
    ("écrire à josé.núñez@example.org", "email", "núñez"),
    ("id AKIAIOSFODNN7EXAMPLE ok", "aws_access_key", "IOSFODNN7"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token", "abcdefghijklmnopq"),
    ("AIzaSyA-1234567890abcdefghijklmnopqrstu", "google_api_key", "1234567890abcdef"),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "huggingface_token", "abcdefghijklmnop"),
    (
        "https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig=Zm9vYmFy%2BcXV4%3D",
        "azure_sas",
        "Zm9vYmFy",
    ),
    ("aws_secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key", "wJalrXUtn"),
    ("token Q2hhcmxpZTpyYW5kb20K9xT4mZ7pL0vB3nR8sWkYa1Zq", "high_entropy_string", "Q2hhcmxp"),
    ("pay with 4111 1111 1111 1111 today", "card_number", "1111 1111"),
    ("card 5500-0000-0000-0004", "card_number", "0000-0004"),
    ("ring (415) 555-2671 after six", "phone_number", "555-2671"),
    ("or +44 20 7946 0958 in London", "phone_number", "7946 0958"),
    ("call me on 4155552671", "phone_number", "4155552671"),
    ("her SSN is 536-90-4399", "us_ssn", "536-90-4399"),
    ("ssn: 536904399", "us_ssn", "536904399"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "iban", "3704 0044"),
    ("GB82WEST12345698765432", "iban", "WEST1234"),
]


@pytest.mark.parametrize(("text", "kind", "fragment"), PLANTED)
def test_each_kind_is_redacted_and_counted(text, kind, fragment):
    redactor = Redactor()
    cleaned = redactor.redact(text)
    assert fragment not in cleaned
    assert f"[REDACTED:{kind}]" in cleaned
    assert redactor.counts[kind] == 1


BENIGN = [
    '{"max_tokens": 512, "prompt_tokens": 12345678} The password is required. '
    "Use the calculator: 822 + 463 = 1285. task-abcdefghijklmnopqrstuvwxyz",
    # Numbers that are not personal data: a sum, a population, a date, an order id, a
    # Luhn-invalid 16 digits, a 9-digit count, an invalid SSN area, ids and hashes.
    "6502530000 + 1 = 6502530001; Tokyo has 37400068 people; due 2024-01-15 12:30",
    "order 12345678901, 1234 5678 9012 3456 units, 123456789 rows, 900-12-3456",
    "run 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 in /usr/lib/python3",
    "ThisIsAVeryLongCamelCaseIdentifierName and internationalization_of_everything",
    # Prose with a secret's name in it, and a value no longer than a word.
    "The secret: to happiness is patience. Password: see the vault.",
    # What the embedded model writes when it fails: words and numbers run together, digits
    # after a tool-call tag ("tool_call" is no phone word), a number grouped 4.6.
    "wordooAnkara407126074135table126737 with097640B241assistant847ran657table",
    '<tool_call>\n"}}\n2359925955 and {"arguments": 6789480529 named',
    '"to_unit": "c", "8388.767605 assistantchair CAT train',
    # Luhn-valid card digits inside hex ids (random run ids hold such runs now and then).
    "run_id 3f4111111111111111e0c2 and a45391488034364676b",
]


@pytest.mark.parametrize("benign", BENIGN)
def test_ordinary_agent_text_is_left_alone(benign):
    redactor = Redactor()
    assert redactor.redact(benign) == benign
    assert not redactor.counts


def test_extra_patterns_from_settings_are_their_own_kind():
    redactor = Redactor(["ACME-[0-9]{6}"])
    assert redactor.redact("ticket ACME-123456") == "ticket [REDACTED:custom_0]"
    with pytest.raises(PatternError, match=r"extra_secret_patterns\[1\]"):
        Redactor(["ok", "(unclosed"])


def test_redaction_inside_escaped_json_keeps_it_valid():
    inner = json.dumps({"api_key": "abcdefgh12345", "x": 1})
    outer = json.dumps({"arguments": inner})
    cleaned = Redactor().redact(outer)
    assert "abcdefgh12345" not in cleaned
    assert json.loads(json.loads(cleaned)["arguments"])["x"] == 1


def test_letters_that_match_ascii_case_insensitively_do_not_skip_a_rule():
    # The rules are case-insensitive, so "ſ" (long s) matches "s": the quick trigger test
    # that precedes them must see it as one too.
    redactor = Redactor()
    assert redactor.redact("paſſword=hunter2hunter2") == "paſſword=[REDACTED:named_secret]"


def test_a_string_seen_again_is_counted_again():
    # Repeated strings come from a memo: each occurrence must still be counted.
    first, second = Redactor(), Redactor()
    text = "mail ops@example.com or OPENAI_API_KEY=abcd1234efgh5678"
    assert first.redact(text) == second.redact(text) == first.redact(text)
    assert first.counts == {"email": 2, "named_secret": 2}
    assert second.counts == {"email": 1, "named_secret": 1}
