"""A corpus of planted secrets and personal data, one of each kind the issue names, each planted
in every place a run can hold text. Values are shaped like real ones (right prefixes, lengths,
checksums) but generated from a fixed seed, so none is a live credential.

`PLANTED` maps a kind to its value; `FRAGMENTS` to the pieces that must not appear in any
written file (the value itself, and its parts where a secret has parts); `planted_run` builds a
run holding one kind everywhere.
"""

from __future__ import annotations

import base64
import json
import random
import string
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from autoretrain.runs.schema import Run

# The configured extra pattern the corpus plants a match of (an internal employee id).
EXTRA_PATTERN = r"EMP-\d{4}-\d{4}"
DAY = "2026-03-02"

_rng = random.Random(20261203)


def _chars(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _luhn_complete(prefix: str, length: int) -> str:
    body = prefix + _chars(string.digits, length - len(prefix) - 1)
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


_ALNUM = string.ascii_letters + string.digits
_AWS_SECRET = _chars(_ALNUM + "+/", 40)
_ACCOUNT_KEY = base64.b64encode(_rng.randbytes(64)).decode()  # 88 characters, as Azure's
_SAS_SIG = base64.b64encode(_rng.randbytes(32)).decode()
_JWT = ".".join(
    [
        _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64url(json.dumps({"sub": "user-8812", "name": "Dana Reyes", "iat": 1764720000}).encode()),
        _b64url(_rng.randbytes(32)),
    ]
)
_PEM_BODY = [base64.b64encode(_rng.randbytes(48)).decode() for _ in range(4)]
_CARD = _luhn_complete("4", 16)

PLANTED: dict[str, str] = {
    "openai_key": "sk-proj-" + _chars(_ALNUM, 20) + "T3BlbkFJ" + _chars(_ALNUM, 20),
    "azure_account_key": (
        "DefaultEndpointsProtocol=https;AccountName=contosoprod;AccountKey="
        + _ACCOUNT_KEY
        + ";EndpointSuffix=core.windows.net"
    ),
    "azure_sas_url": (
        "https://contosoprod.blob.core.windows.net/exports/q3.csv?sv=2022-11-02&ss=b&srt=o"
        "&sp=r&se=2026-12-31T00:00:00Z&spr=https&sig=" + quote(_SAS_SIG, safe="")
    ),
    "jwt": _JWT,
    "aws_access_key_id": "AKIA" + _chars(string.ascii_uppercase + string.digits, 16),
    "aws_secret_access_key": _AWS_SECRET,
    "github_token": "ghp_" + _chars(_ALNUM, 36),
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(_PEM_BODY)
    + "\n-----END RSA PRIVATE KEY-----",
    "email": "dana.reyes@contoso-mail.com",
    "db_url_password": "postgresql://orders_app:Vq7rTz2mKw9p@db-prod.internal:5432/orders",
    "card_number": " ".join(_CARD[i : i + 4] for i in range(0, 16, 4)),
    "phone_number": "(415) 555-2671",
    "us_ssn": "536-90-4399",
    "iban": "DE89 3704 0044 0532 0130 00",
    "named_password": "DB_PASSWORD=Zx8-correct-horse-battery",
    "extra_pattern": "EMP-4451-7781",
}

# What must not survive: the value, and the secret part of values that have a harmless part
# (the SAS URL's host, a connection string's account name, a PEM key's armour).
FRAGMENTS: dict[str, list[str]] = {
    "openai_key": [PLANTED["openai_key"], PLANTED["openai_key"][8:28]],
    "azure_account_key": [_ACCOUNT_KEY, _ACCOUNT_KEY[:24]],
    "azure_sas_url": [quote(_SAS_SIG, safe=""), quote(_SAS_SIG, safe="")[:16]],
    "jwt": [_JWT, _JWT.split(".")[2][:20]],
    "aws_access_key_id": [PLANTED["aws_access_key_id"]],
    "aws_secret_access_key": [_AWS_SECRET, _AWS_SECRET[:20]],
    "github_token": [PLANTED["github_token"], PLANTED["github_token"][4:24]],
    "private_key": [line[:32] for line in _PEM_BODY],
    "email": ["dana.reyes@contoso-mail.com", "dana.reyes@"],
    "db_url_password": ["Vq7rTz2mKw9p"],
    "card_number": [PLANTED["card_number"], _CARD],
    "phone_number": ["555-2671", "4155552671"],
    "us_ssn": ["536-90-4399", "536904399"],
    "iban": ["3704 0044 0532", "DE89370400440532013000"],
    "named_password": ["Zx8-correct-horse-battery"],
    "extra_pattern": ["EMP-4451-7781"],
}

# Where a run holds text, and so where each kind is planted.
PLACES = (
    "system",
    "user",
    "assistant",
    "tool",
    "tool_call_arguments",
    "tool_spec",
    "event_payload",
    "final_answer",
    "model",
    "run_id",
    "agent_version",
    "category",
    "scenario_id",
    "verification_feedback",
    "recovery_reason",
    "escalation_reason",
    "tags",
    "metadata",
)


def _one_line(value: str) -> str:
    """Ids and names are one line: a PEM key goes in with its newlines as spaces."""
    return value.replace("\n", " ")


def planted_record(kind: str, index: int = 0) -> dict[str, Any]:
    """A run record (schema shape, as JSON would carry it) with `kind` in every place."""
    value = PLANTED[kind]
    line = _one_line(value)
    lookup = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": f"Look a record up. Example credential: {value}",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": f"e.g. {line}"}},
            },
        },
    }
    arguments = json.dumps({"query": f"customer {value}", "auth": value, "note": line})
    messages = [
        {"role": "system", "content": f"You are a support agent. Internal note: {value}"},
        {"role": "user", "content": f"My details are {value} — please update the account."},
        {
            "role": "assistant",
            "content": f"Looking up {value} now.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"record found: {value}; ok"},
        {"role": "assistant", "content": f"Done: I have updated the account with {value}."},
    ]
    started = datetime(2026, 3, 2, 9, index % 60, tzinfo=UTC).isoformat()
    return {
        "schema_version": 1,
        "run_id": f"run-{index}-{line}",
        "scenario_id": f"support-{index}-{line}",
        "instance_hash": f"inst-{index}",
        "category": f"support {line}",
        "agent_version": f"agent-2.1 {line}",
        "provider": "openai",
        "model": f"ft:gpt-4o-mini:{line}",
        "traffic": "production",
        "status": "succeeded",
        "started_at": started,
        "ended_at": started,
        "messages": messages,
        "tools": [lookup],
        "events": [
            {
                "type": "tool_call",
                "agent": "executor",
                "at": started,
                "payload": {"tool": "lookup", "arguments": arguments, "echo": value},
            }
        ],
        "verifications": [
            {"verifier": "human", "passed": True, "score": 1.0, "feedback": f"saw {value}"}
        ],
        "recoveries": [{"attempt": 1, "reason": f"retried after {value}"}],
        "escalations": [{"reason": f"customer gave {value}"}],
        "final_answer": f"Done: I have updated the account with {value}.",
        "usage": {"prompt_tokens": 120, "completion_tokens": 30},
        "latency_s": 1.5,
        "cost_usd": 0.001,
        "tags": {"customer": line, "source": "crm"},
        # A field of another app's own: kept by the schema (extra="allow").
        "metadata": {"ticket": {"opened_by": value, "lines": [value]}},
    }


def planted_in(kind: str, place: str) -> dict[str, Any]:
    """A record with `kind` planted in one place only, clean everywhere else."""
    clean = planted_record("email")
    clean_value = PLANTED["email"]
    text = json.dumps(clean, ensure_ascii=False).replace(clean_value, "someone")
    record = json.loads(text.replace("@", " at "))
    dirty = planted_record(kind)
    value = PLANTED[kind]
    where = {
        "system": lambda r: r["messages"][0],
        "user": lambda r: r["messages"][1],
        "assistant": lambda r: r["messages"][4],
        "tool": lambda r: r["messages"][3],
    }
    if place in where:
        where[place](record)["content"] = where[place](dirty)["content"]
    elif place == "tool_call_arguments":
        record["messages"][2]["tool_calls"] = dirty["messages"][2]["tool_calls"]
    elif place == "tool_spec":
        record["tools"] = dirty["tools"]
    elif place == "event_payload":
        record["events"] = dirty["events"]
    elif place == "verification_feedback":
        record["verifications"] = dirty["verifications"]
    elif place == "recovery_reason":
        record["recoveries"] = dirty["recoveries"]
    elif place == "escalation_reason":
        record["escalations"] = dirty["escalations"]
    else:  # final_answer, model, run_id, agent_version, category, scenario_id, tags, metadata
        record[place] = dirty[place]
    assert value.split("\n")[0][:12] in json.dumps(record, ensure_ascii=False).replace("\\n", "\n")
    return record


def planted_run(kind: str, index: int = 0) -> Run:
    return Run.model_validate(planted_record(kind, index))


def leaks(text: str) -> dict[str, list[str]]:
    """kind -> the planted fragments of that kind found in `text`."""
    found = {kind: [f for f in fragments if f in text] for kind, fragments in FRAGMENTS.items()}
    return {kind: hits for kind, hits in found.items() if hits}
