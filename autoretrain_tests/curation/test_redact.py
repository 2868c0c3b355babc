from __future__ import annotations

import json

import pytest

from autoretrain.curation.redact import (
    PatternError,
    Redactor,
    find_secrets,
    scan_for_secrets,
    scan_line,
)

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
    ("id AKIAIOSFODNN7EXAMPLE ok", "aws_access_key", "IOSFODNN7"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token", "abcdefghijklmnopq"),
    ("AIzaSyA-1234567890abcdefghijklmnopqrstu", "google_api_key", "1234567890abcdef"),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "huggingface_token", "abcdefghijklmnop"),
]


@pytest.mark.parametrize(("text", "kind", "fragment"), PLANTED)
def test_each_kind_is_redacted_and_counted(text, kind, fragment):
    redactor = Redactor()
    cleaned = redactor.redact(text)
    assert fragment not in cleaned
    assert f"[REDACTED:{kind}]" in cleaned
    assert redactor.counts[kind] == 1


def test_ordinary_agent_text_is_left_alone():
    benign = (
        '{"max_tokens": 512, "prompt_tokens": 12345678} The password is required. '
        "Use the calculator: 822 + 463 = 1285. task-abcdefghijklmnopqrstuvwxyz"
    )
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


def test_scan_finds_secrets_by_line_with_bom_and_json_escapes(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hello"}]}),
        # \u0073 is "s": only the decoded scan sees this key.
        '{"messages": [{"role": "tool", "content": "\\u0073k-abcdefghijklmnopqrstuvwxyz"}]}',
        json.dumps({"args": json.dumps({"password": "hunter22"})}),
        json.dumps({"content": "[REDACTED:openai_key] and api_key=[REDACTED:named_secret]"}),
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    assert scan_for_secrets(path) == [(2, "openai_key"), (3, "named_secret")]
    assert find_secrets("nothing to see") == []


def test_letters_that_match_ascii_case_insensitively_do_not_skip_a_rule():
    # The rules are case-insensitive, so "ſ" (long s) matches "s": the quick trigger test
    # that precedes them must see it as one too.
    redactor = Redactor()
    assert redactor.redact("paſſword=hunter2hunter2") == "paſſword=[REDACTED:named_secret]"
    # Through a JSON escape, which only the decoded scan of a line sees.
    assert scan_line('{"k": "\\u017fecret=abcdefgh12345"}') == ["named_secret"]


def test_a_string_seen_again_is_counted_again():
    # Repeated strings come from a memo: each occurrence must still be counted.
    first, second = Redactor(), Redactor()
    text = "mail ops@example.com or OPENAI_API_KEY=abcd1234efgh5678"
    assert first.redact(text) == second.redact(text) == first.redact(text)
    assert first.counts == {"email": 2, "named_secret": 2}
    assert second.counts == {"email": 1, "named_secret": 1}
