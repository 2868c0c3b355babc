"""Saving a comparison (DuckDB row + report folder) and `autoretrain eval show`."""

from __future__ import annotations

import json

import duckdb
from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.evaluation.compare import compare
from autoretrain.evaluation.report import load_comparison, save_comparison
from autoretrain_tests.evaluation.synthetic import evaluation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_saved_comparison_has_row_files_and_shows_in_the_cli(settings, tmp_path, monkeypatch):
    first = compare(
        evaluation(ind=(100, 100)), candidate="v1", incumbent="v0", bootstrap_samples=200
    )
    second = compare(evaluation(), candidate="v2", incumbent="v0", bootstrap_samples=200)
    with duckdb.connect(str(settings.paths.database)) as con:
        first_id = save_comparison(con, first, settings.paths.reports)
        second_id = save_comparison(con, second, settings.paths.reports)
        rows = con.execute(
            "SELECT id, candidate, decision FROM evaluations ORDER BY created_at"
        ).fetchall()
        assert rows == [(first_id, "v1", "reject"), (second_id, "v2", "promote")]
        assert load_comparison(con).evaluation_id == second_id
        assert load_comparison(con, first_id).to_dict() == first.to_dict()
        assert load_comparison(con, "eval-unknown") is None

    folder = settings.paths.reports / second_id
    assert json.loads((folder / "comparison.json").read_text())["decision"] == "promote"
    png = (folder / "pass_rate.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    report = (folder / "report.md").read_text()
    assert "PROMOTE" in report and "| in_distribution_lift | pass |" in report
    assert (
        "| in_distribution | calc | 200 |" in report
        and "![pass rate per category](pass_rate.png)" in report
    )

    runner = CliRunner()
    shown = runner.invoke(cli, ["eval", "show"])
    assert shown.exit_code == 0, shown.output
    assert second_id in shown.output and "PROMOTE" in shown.output
    as_json = runner.invoke(cli, ["eval", "show", first_id, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["decision"] == "reject"
    missing = runner.invoke(cli, ["eval", "show", "eval-nope"])
    assert missing.exit_code != 0 and "no record of evaluation 'eval-nope'" in missing.output


def test_eval_show_without_a_database_says_what_to_do(settings, tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["eval", "show"])
    assert result.exit_code == 1 and "no record of any evaluation" in result.output


def test_rejected_empty_evaluation_is_saved_without_a_chart(settings):
    empty = compare([], candidate="v1", incumbent="v0")
    with duckdb.connect(str(settings.paths.database)) as con:
        evaluation_id = save_comparison(con, empty, settings.paths.reports)
    folder = settings.paths.reports / evaluation_id
    assert not (folder / "pass_rate.png").exists()
    assert "REJECT" in (folder / "report.md").read_text()
