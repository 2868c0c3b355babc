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
        (5, "invalid record"),
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
