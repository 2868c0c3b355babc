"""Importing another app's JSONL: run records and OpenAI chat transcripts, bad lines reported."""

from __future__ import annotations

import json

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.importer import import_file
from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.test_ingest_bad_input import DAY, line

TRANSCRIPT = {
    "messages": [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "calc", "arguments": {"x": "2+2"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "4", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
    "model": "gpt-4o-mini",
    "created": 1772359200,  # 2026-03-01T10:00:00Z
    "metadata": {"app": "support-bot"},
}


def test_import_records_and_transcripts_with_line_errors(settings, tmp_path):
    src = tmp_path / "export.jsonl"
    src.write_bytes(
        line("native", app_field=7)
        + json.dumps(TRANSCRIPT).encode()
        + b"\n\n"
        + b"{broken\n"
        + json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode()
        + b"\n"
        + b'{"hello": 1}\n'
        + line("future", schema_version=9)
    )
    archive = RunArchive(settings.paths.landing)
    report = import_file(src, archive)
    assert (report.imported, report.from_transcripts) == (2, 1)
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (4, "invalid JSON"),
        (5, "invalid value"),
        (6, "neither a run record (no run_id) nor a chat transcript (no messages list)"),
        (7, "unknown schema_version"),
    ]
    assert all(e.file == str(src) for e in report.errors)
    assert archive.days() == [DAY]

    with RunStore.from_settings(settings) as store:
        ingest = store.ingest_day(DAY, archive.files(DAY))
        assert (ingest.inserted, ingest.quarantined) == (2, 0)
        runs = {r.run_id: r for r in store.records()}
    native = runs["native"]
    assert native.model_extra["app_field"] == 7
    (imported,) = [r for r in runs.values() if r.run_id.startswith("imp-")]
    assert imported.traffic == "import" and imported.model == "gpt-4o-mini"
    assert imported.status == "succeeded" and imported.final_answer == "4"
    assert imported.messages[2].tool_calls[0].function.arguments == '{"x": "2+2"}'
    assert imported.tools[0]["function"]["name"] == "calc"
    assert imported.model_extra["import_metadata"] == {
        "created": 1772359200,
        "metadata": {"app": "support-bot"},
    }
    assert imported.started_at.isoformat() == "2026-03-01T10:00:00+00:00"


def test_importing_twice_does_not_duplicate(settings, tmp_path):
    src = tmp_path / "export.jsonl"
    src.write_text(json.dumps(TRANSCRIPT) + "\n")
    archive = RunArchive(settings.paths.landing)
    import_file(src, archive)
    import_file(src, archive)
    with RunStore.from_settings(settings) as store:
        report = store.ingest_day(DAY, archive.files(DAY))
        assert report.read == 2 and report.inserted == 1 and report.superseded == 1
        assert store.runs().height == 1


def test_the_bad_input_corpus_never_stops_an_import(settings, tmp_path):
    """Every corpus line, and transcripts that crashed the importer, between good lines: the
    bad ones are reported with file, line and reason, every good one lands, and ingest then
    stores all of them and quarantines none (what import accepts, ingest accepts)."""
    from autoretrain_tests.runs.bad_input_corpus import CORPUS, nested

    deep = {"messages": [{"role": "user", "content": "x", "meta": json.loads(nested(150))}]}
    transcripts = [
        (
            "transcript with a lone surrogate",
            json.dumps(TRANSCRIPT).replace("2+2?", "\\ud800"),
            False,
        ),
        (
            "transcript 10,000 deep",
            json.dumps(TRANSCRIPT)[:-1] + f', "deep": {nested(10_000)}}}',
            False,
        ),
        ("transcript created 1e20", json.dumps({**TRANSCRIPT, "created": 1e20}), False),
        ("transcript created before 1970", json.dumps({**TRANSCRIPT, "created": -5}), False),
        ("transcript created NaN", json.dumps(TRANSCRIPT).replace("1772359200", "NaN"), False),
        ("transcript with a message that is a string", json.dumps({"messages": ["hi"]}), False),
        (
            "transcript with NaN cost",
            json.dumps({**TRANSCRIPT, "cost": 1}).replace('"cost": 1', '"cost": NaN'),
            True,
        ),
        ("transcript 150 deep", json.dumps(deep), True),
    ]
    # A record without a run_id but with messages is, to import, a chat transcript.
    cases = [(c.kind, c.text, c.good or c.kind == "run_id missing") for c in CORPUS]
    cases += [(k, t.encode(), g) for k, t, g in transcripts]
    lines: list[bytes] = []
    expected_bad: dict[int, str] = {}
    for i, (kind, text, good) in enumerate(cases):
        lines.append(line(f"good-{i}").rstrip(b"\n"))
        lines.append(text)
        if not good:
            expected_bad[len(lines)] = kind
    src = tmp_path / "export.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    archive = RunArchive(settings.paths.landing)
    report = import_file(src, archive)
    got = {e.line: e.reason for e in report.errors}
    assert set(got) == set(expected_bad), {
        expected_bad.get(n, f"good line {n}"): got.get(n) for n in set(got) ^ set(expected_bad)
    }
    assert all(e.file == str(src) and e.reason for e in report.errors)
    assert report.imported == len(lines) - len(expected_bad)
    assert report.lines == report.imported + len(report.errors) + report.blank_lines
    with RunStore.from_settings(settings) as store:
        ingested = [store.ingest_day(d, archive.files(d)) for d in archive.days()]
        assert sum(r.quarantined for r in ingested) == 0
        assert sum(r.inserted for r in ingested) == report.imported
        assert len(list(store.records())) == report.imported


def test_import_cli_reports_what_it_stored_and_refused(settings, tmp_path):
    from click.testing import CliRunner

    from autoretrain.cli import cli

    src = tmp_path / "export.jsonl"
    src.write_bytes(line("a") + b'{"run_id": "x", "started_at": "infinity"}\n' + b"\n")
    out = CliRunner().invoke(cli, ["import", str(src), "--json"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    payload = json.loads(out.output[: out.output.rindex("}") + 1])
    assert (payload["lines"], payload["imported"], payload["not_imported"]) == (3, 1, 1)
    assert payload["blank_lines"] == 1
    (error,) = payload["errors"]
    assert (error["file"], error["line"]) == (str(src), 2)
    assert error["reason"].startswith("invalid value: started_at 'infinity' is not a timestamp")
