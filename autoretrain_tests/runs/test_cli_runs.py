"""`autoretrain ingest`, `runs`, `import` through the real click command."""

from __future__ import annotations

import json

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain_tests.runs.test_ingest_bad_input import DAY, line


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_import_ingest_runs(settings, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(line("a") + line("b", category="units") + b"{nope\n")
    result = run("import", str(src))
    assert result.exit_code == 1
    assert f"{src}:3: invalid JSON" in result.output
    assert "imported 2 runs" in result.output

    other = settings.paths.landing_day("2026-03-05")
    other.mkdir(parents=True)
    (other / "part-x.jsonl").write_bytes(
        line("c", started_at="2026-03-05T01:00:00Z", ended_at="2026-03-05T01:00:02Z") + b"[]\n"
    )

    result = run("ingest", "--date", DAY)
    assert result.exit_code == 0, result.output
    assert f"{DAY}: 2 read, 2 new" in result.output

    result = run("ingest", "--json")
    reports = json.loads(result.output)
    assert [(r["day"], r["inserted"], r["unchanged"], r["quarantined"]) for r in reports] == [
        (DAY, 0, 2, 0),
        ("2026-03-05", 1, 0, 1),
    ]
    assert reports[1]["quarantine_rate"] == 0.5

    summary = json.loads(run("runs", "--json").output)
    assert summary["runs"] == 3
    assert summary["by_day"] == {DAY: 2, "2026-03-05": 1}
    assert summary["by_category"] == {"arithmetic": 2, "units": 1}
    assert summary["quarantined"] == 1
    assert summary["top_quarantine_reasons"] == [{"reason": "not an object", "count": 1}]
    text = run("runs").output
    assert "3 runs" in text and "not an object" in text


def test_errors_say_what_to_do(settings, tmp_path):
    assert "autoretrain ingest" in run("runs").output
    assert "no such file" in run("import", str(tmp_path / "missing.jsonl")).output
    assert "not a date" in run("ingest", "--date", "03/01/2026").output
    assert "either --date or --from/--to" in run("ingest", "--date", DAY, "--from", DAY).output
    assert "no landing files for" in run("ingest", "--date", DAY).output
    assert "nothing to ingest" in run("ingest", "--from", "2020-01-01", "--to", "2020-01-02").output
