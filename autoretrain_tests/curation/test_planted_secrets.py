"""Planted secrets and personal data never reach a dataset (issue 21, item 1).

Every kind in planted.py, planted in every place a run can hold text, goes the whole way a run
goes: `autoretrain import` → `autoretrain ingest` → scoring and the promotion guard → a human's
promote decision (`autoretrain review decide`) → `autoretrain dataset build`. Nothing planted
may appear in train.jsonl, eval.jsonl or manifest.json. With scrubbing switched off, the
independent scan must catch every kind, in every place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
from autoretrain.cli import cli
from autoretrain.curation.checks import check_dataset
from autoretrain.curation.examples import run_to_example
from autoretrain.curation.scan import scan_file, scan_line
from autoretrain.runs.scoring import score_days
from autoretrain.runs.store import RunStore
from autoretrain.settings import load_settings
from autoretrain_tests.curation.planted import (
    DAY,
    EXTRA_PATTERN,
    PLACES,
    PLANTED,
    leaks,
    planted_in,
    planted_record,
    planted_run,
)

REPO = Path(__file__).resolve().parents[2]


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def configured(settings, tmp_path):
    """The test's settings with the corpus's extra pattern configured (`autoretrain.yaml`)."""
    config = tmp_path / "autoretrain.yaml"
    config.write_text(f"dataset:\n  extra_secret_patterns: ['{EXTRA_PATTERN}']\n")
    return load_settings(config_file=config)


def test_nothing_planted_reaches_the_dataset_the_whole_way(configured, tmp_path):
    records = [planted_record(kind, index) for index, kind in enumerate(PLANTED)]
    source = tmp_path / "agent-runs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))

    imported = json.loads(_invoke("import", str(source), "--json").output)
    assert imported["imported"] == len(records), imported
    _invoke("ingest", "--date", DAY)
    with RunStore.from_settings(configured) as store:
        stored = {r[0] for r in store.con.execute("SELECT run_id FROM runs").fetchall()}
        assert stored == {r["run_id"] for r in records}
        gates = configured.promotion_gates()
        score_days(store.con, DAY, DAY, gates)
        decide_days(store.con, DAY, DAY, PromotionGuardAgent(gates))
    for record in records:  # a human promotes every one of them
        _invoke(
            "review", "decide", record["run_id"], "promote", "--note", "ok", "--reviewer", "ana"
        )

    built = _invoke("dataset", "build", "--catalog", str(REPO / "scenarios"), "--json")
    summary = json.loads(built.output)
    version = Path(summary["path"])
    # Every planted run became an example, scrubbed, rather than being dropped.
    assert summary["counts"]["train"] + summary["counts"]["eval"] == len(records), summary
    for name in ("train.jsonl", "eval.jsonl", "manifest.json"):
        text = (version / name).read_text(encoding="utf-8-sig")
        assert leaks(text) == {}, name
    manifest = json.loads((version / "manifest.json").read_text())
    assert all("[REDACTED:" in model for model in manifest["source_models"])
    assert manifest["secret_scan"] == {"train.jsonl": 0, "eval.jsonl": 0}

    # The independent scan agrees, on all three files, and the blocking check passes.
    _invoke("dataset", "scan", str(version))
    outcomes = check_dataset(
        version,
        set(),
        set(),
        min_examples_per_category=1,
        extra_secret_patterns=[EXTRA_PATTERN],
    )
    assert next(o for o in outcomes if o.name == "no_secrets").passed


def _unscrubbed_manifest(run) -> str:
    """What the manifest would say of a run if nothing were scrubbed."""
    fields = {
        "source_models": [run.model],
        "agent_versions": [run.agent_version],
        "run_ids": {"train": [run.run_id]},
        "split": {"train_scenarios": [run.scenario_id]},
        "counts": {"by_category": {"train": {run.category: 1}}},
    }
    return json.dumps(fields, indent=2, ensure_ascii=False)


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_with_scrubbing_off_the_scan_catches_every_kind(kind, tmp_path):
    run = planted_run(kind)
    example = run_to_example(run, 10_000, redactor=None)  # scrubbing switched off
    assert not isinstance(example, type(None))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(example.record, ensure_ascii=False) + "\n")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(_unscrubbed_manifest(run))
    assert leaks(data.read_text()), "the corpus must plant the kind in the example"
    assert scan_file(data, [EXTRA_PATTERN]), f"{kind} in train.jsonl not caught"
    assert scan_file(manifest, [EXTRA_PATTERN]), f"{kind} in manifest.json not caught"


@pytest.mark.parametrize("place", PLACES)
def test_the_scan_catches_every_kind_in_every_place_of_a_record(place):
    # The raw record, as a landing-zone or import line: the scan reads every field of it.
    for kind in PLANTED:
        line = json.dumps(planted_in(kind, place), ensure_ascii=False)
        assert scan_line(line, [EXTRA_PATTERN]), f"{kind} in {place} not caught"
    clean = json.dumps(planted_in("email", "tags") | {"tags": {}}, ensure_ascii=False)
    assert scan_line(clean, [EXTRA_PATTERN]) == []
