"""The independent scan (curation/scan.py): what it finds, what it leaves, and that it catches
what the scrubber misses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoretrain.curation import scan
from autoretrain.curation.builder import build_dataset
from autoretrain.curation.redact import PatternError, Redactor
from autoretrain.curation.scan import scan_dataset, scan_file, scan_text
from autoretrain.settings import load_settings
from autoretrain_tests.curation.factories import make_run, solved
from autoretrain_tests.curation.planted import EXTRA_PATTERN, PLANTED
from autoretrain_tests.curation.test_redact import BENIGN

# The kind the scan reports for each planted value.
SCAN_KIND = {
    "openai_key": "openai_key",
    "azure_account_key": "connection_string",
    "azure_sas_url": "azure_sas",
    "jwt": "jwt",
    "aws_access_key_id": "aws_access_key",
    "aws_secret_access_key": "aws_secret_key",
    "github_token": "github_token",
    "private_key": "private_key",
    "email": "email",
    "db_url_password": "connection_string",
    "card_number": "card_number",
    "phone_number": "phone_number",
    "us_ssn": "us_ssn",
    "iban": "iban",
    "named_password": "named_secret",
    "extra_pattern": "custom_0",
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_each_planted_kind_is_found_in_prose(kind):
    text = f"Here you go: {PLANTED[kind]} (as requested)."
    assert SCAN_KIND[kind] in scan_text(text, [EXTRA_PATTERN])


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("call me on 4155552671", "phone_number"),
        ("+44 20 7946 0958", "phone_number"),
        ("SSN: 536904399", "us_ssn"),
        ("card 5500-0000-0000-0004 exp 12/27", "card_number"),
        ("ref 10-4868 6752 5539 9018", "card_number"),
        ("GB82WEST12345698765432", "iban"),
        (
            "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/abcdefghijklmnopqrstuvwx",
            "slack_token",
        ),
        ("xoxb-1234567890-abcdefghijkl", "slack_token"),
        ("sk_live_" + "a1B2c3D4e5F6g7H8i9J0k1L2", "stripe_key"),
    ],
)
def test_other_shapes_are_found(text, kind):
    assert kind in scan_text(text)


@pytest.mark.parametrize("benign", BENIGN)
def test_ordinary_text_is_not_flagged(benign):
    assert scan_text(benign) == set()


def test_markers_are_not_flagged():
    text = "sig=[REDACTED:azure_sas] password: [REDACTED:named_secret] [REDACTED:card_number]"
    assert scan_text(text) == set()


def test_file_lines_bom_json_escapes_and_nested_arguments(tmp_path):
    path = tmp_path / "data.jsonl"
    token = PLANTED["github_token"]
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hello"}]}),
        # \u0040 is "@": only the decoded string holds an e-mail address.
        '{"content": "write to dana\\u0040contoso.com"}',
        # JSON held in a string (tool-call arguments), its key naming the secret.
        json.dumps({"arguments": json.dumps({"password": "Zx8-correct-horse"})}),
        # Split from its prefix, a token is no GitHub token, but still a random one.
        json.dumps({"content": f"token {token[:4]}\n{token[4:]}"}),
        json.dumps({"content": f"token {token}"}),
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    assert scan_file(path) == [
        (2, "email"),
        (3, "named_secret"),
        (4, "high_entropy_string"),
        (5, "github_token"),
    ]


def test_an_indented_manifest_is_scanned_line_by_line(tmp_path):
    path = tmp_path / "manifest.json"
    manifest = {
        "source_models": ["tiny-1", f"ft:{PLANTED['openai_key']}"],
        "run_ids": {"train": ["r1", f"run-{PLANTED['us_ssn']}"]},
        "files": {
            "train.jsonl": {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d"}
        },
        "password": "Zx8-correct-horse",
    }
    path.write_text(json.dumps(manifest, indent=2))
    found = scan_file(path)
    text = path.read_text().splitlines()
    assert {kind for _, kind in found} == {"openai_key", "us_ssn", "named_secret"}
    for line, kind in found:
        assert {"openai_key": "ft:", "us_ssn": "run-", "named_secret": "password"}[kind] in text[
            line - 1
        ]


def test_extra_patterns_and_a_bad_one(tmp_path):
    assert scan_text("ticket EMP-4451-7781", [EXTRA_PATTERN]) == {"custom_0"}
    assert scan_text("ticket EMP-4451-7781") == set()
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    with pytest.raises(PatternError, match=r"extra_secret_patterns\[0\]"):
        scan_file(path, ["(unclosed"])


def test_the_scan_shares_no_detector_with_the_scrubber():
    # Independence is structural: the scan module does not use the scrubber's rules.
    source = Path(scan.__file__).read_text(encoding="utf-8")
    assert "BUILTIN_PATTERNS" not in source and "Redactor" not in source
    assert "import detect_secrets" in source or "from detect_secrets" in source


def test_what_the_scrubber_misses_the_scan_catches_and_the_builder_drops(settings, tmp_path):
    # A Slack webhook has no rule in the scrubber; detect-secrets knows it.
    hook = "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/abcdefghijklmnopqrstuvwx"
    assert Redactor().redact(hook) == hook
    runs = [make_run(f"ok{i}", solved(i, 1), scenario_id=f"s{i}") for i in range(3)]
    runs.append(make_run("hooked", solved(5, 5, tool_output=f"10, posted to {hook}")))
    version = build_dataset(
        runs,
        out_root=tmp_path / "datasets",
        eval_hashes=set(),
        eval_scenario_ids=set(),
        config=settings.dataset,
        gates=settings.promotion_gates(),
    )
    assert version.exclusions == {"residual_secret": 1}
    excluded = version.manifest["excluded_runs"]
    assert excluded == [{"run_id": "hooked", "reason": "residual_secret", "detail": "slack_token"}]
    assert scan_dataset(version.path) == {"train.jsonl": [], "eval.jsonl": [], "manifest.json": []}
    for name in ("train.jsonl", "eval.jsonl"):
        assert "hooks.slack.com" not in (version.path / name).read_text()


def test_a_pattern_that_matches_itself_does_not_flag_the_manifest(settings, tmp_path):
    # The manifest records the dataset settings; a literal pattern would match its own text.
    config = tmp_path / "autoretrain.yaml"
    config.write_text("dataset:\n  extra_secret_patterns: ['contoso-internal-only']\n")
    configured = load_settings(config_file=config)
    runs = [make_run(f"ok{i}", solved(i, 1), scenario_id=f"s{i}") for i in range(3)]
    version = build_dataset(
        runs,
        out_root=tmp_path / "datasets",
        eval_hashes=set(),
        eval_scenario_ids=set(),
        config=configured.dataset,
        gates=configured.promotion_gates(),
    )
    patterns = version.manifest["dataset_settings"]["extra_secret_patterns"]
    assert len(patterns) == 1 and patterns[0].startswith("sha256:")
    assert scan_dataset(version.path, ["contoso-internal-only"])["manifest.json"] == []


def test_lowercase_hex_ids_hold_nothing_either_side_finds():
    # The manifest lets such ids (uuid4().hex, digests) skip both scrubbing and scan: prove
    # neither side finds anything in them, digits of a card or phone number inside included.
    import random

    from autoretrain.curation.builder import _HEX_ID

    rng = random.Random(4)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(2000)]
    ids += [
        "a4111111111111111",
        "4111111111111111f",
        "e4155552671",
        "b536904399c",
        "deadbeef" + "4111111111111111" + "cafe",
    ]
    for hex_id in ids:
        assert _HEX_ID.fullmatch(hex_id)
        assert Redactor().redact(hex_id) == hex_id, hex_id
        assert scan_text(hex_id) == set(), hex_id


def test_a_line_the_gate_calls_plain_holds_nothing_the_walk_would_find():
    # The gate lets ordinary lines skip the walk over their strings: it must never skip one
    # that holds something. Every planted kind in every place, and clean lines.
    from autoretrain.curation.scan import _line_is_plain, scan_value
    from autoretrain_tests.curation.planted import PLACES, planted_in

    lines = [json.dumps(planted_in(kind, place)) for kind in PLANTED for place in PLACES]
    lines += [json.dumps(planted_in(kind, "user"), ensure_ascii=False) for kind in PLANTED]
    lines += [json.dumps({"content": text}) for text in BENIGN]
    ordinary = [json.dumps({"messages": solved(i, 7)}) for i in range(20)]
    for line in lines + ordinary:
        if _line_is_plain(line):
            assert scan_value(json.loads(line)) == set(), line[:200]
    assert all(_line_is_plain(line) for line in ordinary)  # which do skip the walk


def test_every_name_the_keyword_plugin_knows_opens_its_gate():
    # The keyword plugin runs only on strings holding one of _KEYWORD_WORDS: each name in its
    # DENYLIST (with and without the optional underscore) must hold one.
    from detect_secrets.plugins.keyword import DENYLIST

    from autoretrain.curation.scan import _KEYWORD_WORDS

    for name in DENYLIST:
        for variant in {name.replace("_?", "_"), name.replace("_?", "")}:
            assert any(word in variant for word in _KEYWORD_WORDS), variant


def test_dataset_scan_cli_reads_a_version_folder_and_names_file_line_and_kind(settings, tmp_path):
    from click.testing import CliRunner

    from autoretrain.cli import cli

    version = tmp_path / "20261203T000000Z"
    version.mkdir()
    (version / "train.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    (version / "eval.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    manifest = {"source_models": [f"ft:{PLANTED['github_token']}"], "counts": {"train": 1}}
    (version / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = CliRunner().invoke(cli, ["dataset", "scan", str(version), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["findings"] == [
        {"file": str(version / "manifest.json"), "line": 3, "kind": "github_token"}
    ]
    assert PLANTED["github_token"] not in result.output  # never the secret itself
    plain = CliRunner().invoke(cli, ["dataset", "scan", str(version)])
    assert f"{version / 'manifest.json'}:3: github_token" in plain.output
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = CliRunner().invoke(cli, ["dataset", "scan", str(empty)])
    assert refused.exit_code == 1 and "without train.jsonl" in refused.output


def test_a_line_read_by_its_parts_gates_as_the_whole_line():
    """The builder asks whether a line is plain part by part (scan.parts_are_plain): on random
    lines made of what the gates look for (literals, digits, separators, escapes, folded and
    context-dependent letters), the answer is the whole line's."""
    import random

    from autoretrain.curation.scan import _line_is_plain, parts_are_plain

    rng = random.Random(1)
    pieces = ["a", "k", "e", "y", "p", "s", "w", "1", "2", "3", "4", "5", "6", " ", "-", "(", ")"]
    pieces += [".", "+", "/", "=", "\n", "\\", '"', "@", ":", "g", "h", "_", "A", "Z", "é"]
    pieces += ["\u0130", "\u017f", "Σ", "\t", "\\u", "x", "sig", "key", "pass", "aws", "ghp_"]
    outcomes = set()
    for _ in range(20_000):
        messages = [
            {"role": "user", "content": "".join(rng.choices(pieces, k=rng.randrange(40)))}
            for _ in range(rng.randrange(1, 4))
        ]
        tools = [{"d": "".join(rng.choices(pieces, k=rng.randrange(40)))}]
        parts = [json.dumps(m, ensure_ascii=False) for m in messages]
        parts.append(json.dumps(tools, ensure_ascii=False))
        line = json.dumps({"messages": messages, "tools": tools}, ensure_ascii=False)
        assert parts_are_plain(parts) == _line_is_plain(line), line
        outcomes.add(_line_is_plain(line))
    assert outcomes == {True, False}
