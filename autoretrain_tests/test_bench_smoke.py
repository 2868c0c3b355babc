"""The curation and incremental benchmarks run end to end at a tiny size, so they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "results"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / script),
            "--out",
            str(out),
            "--home",
            str(tmp_path / "work"),
            *args,
        ],  # fmt: skip
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    name = script.removesuffix(".py")
    assert (out / f"{name}.md").read_text().startswith("# ")
    assert not (tmp_path / "work").exists(), "the work folder is wiped unless --keep"
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.integration
def test_curation_bench(tmp_path):
    result = _run("curation.py", tmp_path, "--n", "150", "--days", "2")
    typed, lines = result["baseline_polars_typed"], result["baseline_polars_lines"]
    project = result["project"]
    assert result["runs"] == 150 and result["ingest"]["inserted"] == 150
    # Both baselines keep the same runs, and the guard promotes exactly those (the synthetic
    # mix has no run that passes verification yet fails another gate).
    assert typed["kept"] == lines["kept"] == project["promotable"] > 0
    assert project["train"] + project["eval"] > 0
    assert project["peak_rss_mb"] > 0 and result["ratio_project_vs_baseline"] > 0
    assert result["target"] == 0.3 and result["command"].startswith(".venv/bin/python bench/")


@pytest.mark.integration
def test_incremental_bench(tmp_path):
    result = _run("incremental.py", tmp_path, "--days", "2", "--n", "40", "--repeats", "1")
    assert result["history_days"] == [1, 2]
    assert result["setup"]["2"]["history_runs"] == 80
    for history in ("1", "2"):
        timings = result["dagster_new_day_median_s"][history]
        assert set(timings) == {"total", "raw_runs", "scored_runs", "promotion_decisions"}
        assert all(v > 0 for v in timings.values())
    assert result["ratio"] > 0 and result["target"] == 1.3


@pytest.mark.integration
def test_bootstrap_trials_bench(tmp_path):
    """A tiny base model through the trial script: it builds, trains and reports pass rates."""
    spec = {
        "demos": 1,
        "config": {"epochs": 0.5},
        "size": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2},
        "per": 1,
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bootstrap_trials.py"), str(tmp_path / "m")]
        + [json.dumps(spec), "--single-digits"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["grouped_digits"] and result["steps"] >= 1
    assert set(result) >= {"in_distribution", "held_out"}
    assert all(0 <= result[t][0] <= 1 for t in ("in_distribution", "held_out"))
