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
    result = _run("curation.py", tmp_path, "--n", "150", "--days", "2", "--compare-in-process")
    typed, lines = result["baseline_polars_typed"], result["baseline_polars_lines"]
    project = result["project"]
    assert result["runs"] == 150 and result["ingest"]["inserted"] == 150
    # Both baselines keep the same runs, and the guard promotes exactly those (the synthetic
    # mix has no run that passes verification yet fails another gate).
    assert typed["kept"] == lines["kept"] == project["promotable"] > 0
    assert project["train"] + project["eval"] > 0
    assert project["peak_rss_mb"] > 0 and result["ratio_project_vs_baseline"] > 0
    assert result["target"] == 0.3 and result["command"].startswith(".venv/bin/python bench/")
    # Run again in one process: the same decisions and bytes (150 runs never reach the workers;
    # the golden tests hold the worker path to the same output).
    assert result["same_output_as_one_process"] is True
    assert result["project_in_one_process"]["files_sha256"] == project["files_sha256"]


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


def _arm(lift: float, held: float, gate: str, **extra) -> dict:
    tier = {
        "incumbent_pass_rate": 0.4,
        "candidate_pass_rate": 0.4 + lift / 100,
        "diff_points": lift,
        "mcnemar_p": 1e-6,
    }
    return {
        "incumbent": "v0",
        "gate": gate,
        "failed_gates": [],
        "tiers": {
            "in_distribution": {**tier, "diff_ci_points": [lift - 1, lift + 1]},
            "held_out": {
                **tier,
                "candidate_pass_rate": 0.4 + held / 100,
                "diff_points": held,
                "diff_ci_points": [held - 1, held + 1],
            },
        },
        **extra,
    }


def test_loop_refresh_judges_each_catalog_by_its_own_target(tmp_path):
    """bench/loop.py --refresh: the shipped catalog needs +10 points, any other +5, from a
    promoted round that beats both controls; loop.md puts every catalog side by side."""
    out = tmp_path / "results"
    out.mkdir()
    controls = {"compute_matched": _arm(2.0, 0, "reject"), "no_filter": _arm(3.0, 0, "reject")}
    shipped = {
        "command": "bench/loop.py",
        "machine": {"cores": 2, "memory_gb": 24, "load_average_at_start": 1, "date": "today"},
        "catalog": "shipped",
        "parameters": {"settings": {}, "selfplay_runs": 10, "instances_per_scenario": 70},
        "target": {"in_distribution_lift_points": 0},
        "arms": {"it1": _arm(7.0, 1.0, "promote", promoted=True), **controls},
        "not_measured": [],
        "notes": [],
    }
    new = {
        **shipped,
        "catalog": "new",
        "parameters": {**shipped["parameters"], "settings": {"selfplay": {"allocation": "x"}}},
        "arms": {
            "it1": _arm(7.0, 1.0, "promote", promoted=True),
            "it2": _arm(9.0, -5.0, "reject", promoted=False),
            "poisoned": _arm(-1.0, -9.0, "reject"),
            **controls,
        },
    }
    shipped["catalogs"] = {"new": {"file": "loop-new.json", "command": "x"}}
    (out / "loop.json").write_text(json.dumps(shipped))
    (out / "loop-new.json").write_text(json.dumps(new))
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loop.py"), "--refresh", "--out", str(out)],
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    index = json.loads((out / "loop.json").read_text())
    got = {name: entry["verdict"] for name, entry in index["catalogs"].items()}
    assert got["shipped"]["best_promoted_lift_points"] == 7.0
    assert got["shipped"]["promoted_lift_meets_target"] is False  # 7 < 10
    assert got["new"]["best_promoted_lift_points"] == 7.0  # it2 lifted more, but was rejected
    assert got["new"]["promoted_lift_meets_target"] is True  # 7 >= 5 and beats 2 and 3
    assert index["catalogs"]["new"]["planted_regressions_promoted"] == 0
    page = (out / "loop.md").read_text()
    assert "## Every catalog side by side" in page
    assert "+7.00 (target +5: met)" in page and "+7.00 (target +10: not met)" in page


def test_a_full_loop_run_keeps_the_quiet_machine_timing(tmp_path):
    """bench/loop.py's full run rewrites loop.json with its arms, and keeps `iteration_wall_s`
    and `iteration_timing`, which `--timing-only` measured in a run of their own."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_loop", ROOT / "bench" / "loop.py")
    assert spec is not None and spec.loader is not None
    loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop)
    out = tmp_path / "results"
    out.mkdir()
    timing = {
        "stages_s": {"selfplay": 90.0, "training": 100.0},
        "target_s": 300.0,
        "met": True,
        "selfplay_runs": 10,
        "command": "bench/loop.py --timing-only",
        "machine": {"load_average_at_start": [0.1, 0.1, 0.1]},
        "gate": "promote",
    }
    (out / "loop.json").write_text(
        json.dumps({"iteration_wall_s": 190.0, "iteration_timing": timing, "catalogs": {}})
    )
    bench = loop.Bench.__new__(loop.Bench)
    bench.args = argparse.Namespace(out=out)
    bench.result = {
        "command": "bench/loop.py",
        "machine": {"cores": 2, "memory_gb": 24, "load_average_at_start": 1, "date": "today"},
        "catalog": "shipped",
        "parameters": {"settings": {}, "selfplay_runs": 10, "instances_per_scenario": 70},
        "target": {"in_distribution_lift_points": 10},
        "arms": {
            "it1": _arm(
                7.0, 1.0, "promote", promoted=True, seconds={"selfplay": 95.0, "total": 231.0}
            ),
            "compute_matched": _arm(2.0, 0, "reject"),
            "no_filter": _arm(3.0, 0, "reject"),
        },
        "not_measured": [],
        "notes": [],
    }
    bench.save(measured=False)
    written = json.loads((out / "loop.json").read_text())
    assert written["iteration_wall_s"] == 190.0 and written["iteration_timing"] == timing
    assert "iteration_wall_s 190.0 s" in (out / "loop.md").read_text()


def test_validation_slice_reads_the_committed_loop_results(tmp_path):
    """bench/validation_slice.py runs no model: it must keep reading the committed results."""
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "validation_slice.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    result = json.loads((out / "validation_slice.json").read_text())
    rows = result["rows"]
    assert result["held_out_regressions"] == len(rows) > 0
    assert all(r["held_out_points"] < 0 for r in rows)
    assert result["flagged_in_distribution"] <= result["same_category_down_in_distribution"]
    assert result["flagged_in_distribution"] == sum(
        r["in_distribution_points"] <= -result["flag_points"] for r in rows
    )


def test_holdout_probe_drops_the_held_scenarios_and_tabulates_the_slice(tmp_path):
    """bench/holdout_probe.py's data side: a round's dataset without the held scenarios (runs by
    the store's scenario id, reference solutions by their id), and the slice's pass rates."""
    import duckdb

    sys.path.insert(0, str(ROOT / "bench"))
    import holdout_probe as probe

    store = tmp_path / "store.duckdb"
    con = duckdb.connect(str(store))
    con.execute("CREATE TABLE runs (run_id VARCHAR, scenario_id VARCHAR)")
    con.executemany("INSERT INTO runs VALUES (?, ?)", [["r1", "a_1"], ["r2", "a_2"], ["r3", "b_1"]])
    con.close()
    source = tmp_path / "source"
    source.mkdir()
    ids = {"train": ["r1", "r2", "reference-a_1-50000"], "eval": ["r3"]}
    (source / "manifest.json").write_text(json.dumps({"run_ids": ids}))
    for split, run_ids in ids.items():
        lines = "".join(json.dumps({"id": r}) + "\n" for r in run_ids)
        (source / f"{split}.jsonl").write_text(lines)

    facts = probe.filtered_dataset(source, tmp_path / "out", store, {"a_1"})
    kept = [json.loads(x)["id"] for x in (tmp_path / "out" / "train.jsonl").open()]
    assert kept == ["r2"] and facts["dropped"] == {"train/a_1": 2}
    assert facts["kept"] == {"train": 1, "eval": 1} and facts["unknown_scenario"] == 0

    rows = [
        {"tier": tier, "scenario_id": s, "category": "a", "role": role, "passed": passed}
        for tier, s, role, passed in [
            ("in_distribution", "a_1", "incumbent", True),
            ("in_distribution", "a_1", "candidate", False),
            ("in_distribution", "a_2", "incumbent", True),
            ("in_distribution", "a_2", "candidate", True),
            ("held_out", "h_1", "incumbent", True),
            ("held_out", "h_1", "candidate", False),
        ]
    ]
    rates = probe.pass_rates(rows, {"a_1"})
    assert rates["validation/a"]["diff_points"] == -100.0
    assert rates["trained/a"]["diff_points"] == 0.0
    reading = probe.reading({"epsilon_points": 5.0, "pass_rates": rates})
    assert reading["a"]["validation_flags"] and reading["a"]["held_out_fails"]
