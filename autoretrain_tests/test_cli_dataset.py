from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain_tests.curation.factories import make_run, solved
from autoretrain_tests.curation.test_validate import BROKEN, good

REPO = Path(__file__).resolve().parents[1]
SECRET = "ghp_PLANTEDabcdefghijklmnopqrstuvwxyz0123"


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_names_each_broken_line_and_exits_non_zero(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(good())] + [json.dumps(record) for _, record, _ in BROKEN]
    path.write_text("\n".join(lines) + "\n")
    result = _invoke("dataset", "validate", str(path))
    assert result.exit_code == 1
    for line in range(2, 2 + len(BROKEN)):
        assert f"{path}:{line}: " in result.output
    assert f"{path}:1: " not in result.output

    as_json = _invoke("dataset", "validate", str(path), "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["invalid_lines"] == list(range(2, 2 + len(BROKEN)))


def test_validate_accepts_a_good_file_with_a_bom(tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(good()) + "\n").encode() * 12)
    result = _invoke("dataset", "validate", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["bom"] and report["n_examples"] == 12


def test_build_from_files_then_list_and_scan(settings, tmp_path):
    runs = [make_run(f"r{i}", solved(i, 1), scenario_id=f"arith_{i % 4}") for i in range(8)]
    runs.append(make_run("leaky", solved(9, 9, tool_output=f"18 {SECRET}"), scenario_id="arith_1"))
    runs_file = tmp_path / "runs.jsonl"
    runs_file.write_text("".join(r.to_json() + "\n" for r in runs) + "{broken\n")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({r.run_id: "promote" for r in runs} | {"r0": "reject"}))

    result = _invoke(
        "dataset", "build", "--runs", str(runs_file), "--decisions", str(decisions),
        "--catalog", str(REPO / "scenarios"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"]["train"] + summary["counts"]["eval"] == 8
    assert summary["exclusions"] == {"not_promoted": 1}
    assert summary["redactions"] == {"github_token": 1}
    assert summary["unreadable_input_lines"] == 1
    version_dir = Path(summary["path"])
    assert version_dir.parent == settings.paths.datasets
    for name in ("train.jsonl", "eval.jsonl"):
        assert _invoke("dataset", "validate", str(version_dir / name)).exit_code == 0
        assert _invoke("dataset", "scan", str(version_dir / name)).exit_code == 0

    listed = _invoke("dataset", "list", "--json")
    rows = json.loads(listed.output)
    assert [r["version"] for r in rows] == [summary["version"]]
    assert rows[0]["redactions"] == 1

    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"content": SECRET}) + "\n")
    scanned = _invoke("dataset", "scan", str(leaky), "--json")
    assert scanned.exit_code == 1
    assert json.loads(scanned.output)["findings"] == [{"line": 1, "kind": "github_token"}]


def test_build_from_the_run_store_uses_effective_decisions(settings, tmp_path):
    from autoretrain.runs.review import record_review
    from autoretrain.runs.store import RunStore

    runs = [make_run(f"r{i}", solved(i, 2), scenario_id=f"arith_{i}") for i in range(3)]
    with RunStore.from_settings(settings) as store:
        # Rows as ingest stores them, minus the columns the builder does not read.
        for run in runs:
            store.con.execute(
                "INSERT INTO runs (run_id, day, traffic, started_at, record) VALUES (?, ?, ?, ?, ?)",
                [run.run_id, run.day, run.traffic, run.started_at, run.to_json()],
            )
        record_review(store.con, "r0", "promote", "checked by hand", "tester")
        record_review(store.con, "r1", "promote", "checked by hand", "tester")
        record_review(store.con, "r2", "reject", "wrong tool", "tester")

    result = _invoke("dataset", "build", "--catalog", str(REPO / "scenarios"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    manifest = json.loads((Path(summary["path"]) / "manifest.json").read_text())
    assert sorted(manifest["run_ids"]["train"] + manifest["run_ids"]["eval"]) == ["r0", "r1"]


def test_build_without_a_run_store_says_what_to_do(settings):
    result = CliRunner().invoke(cli, ["dataset", "build", "--catalog", str(REPO / "scenarios")])
    assert result.exit_code != 0
    assert "autoretrain ingest" in result.output
