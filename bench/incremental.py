"""Does the cost of a new day follow the new data, not the history? Materializing one new day
of `raw_runs`, `scored_runs` and `promotion_decisions` with 1 day of history present against
the same with --days days of history, in the same run.

For each case a landing zone holds the history days and the new day (the new day's runs are
the same in both cases); the history is materialized as one range run (Dagster tags
`dagster/asset_partition_range_start`/`_end`), and the database file is kept as a snapshot.
Each repetition restores the snapshot, then:
- materializes the three assets for `partition_key=new_day` with `dg.materialize` (ephemeral
  instance; wall time and each step's duration from its STEP_SUCCESS event);
- restores the snapshot again and times the stages the assets call, directly
  (`Project.ingest_days`, `score_days`, `decide_days`), to see which one grows with history.
The cases alternate within each repetition, so machine load drifts over both alike.
Ratio = median time with the long history / median time with one day; target <= 1.3.

Run: .venv/bin/python bench/incremental.py [--days 180] [--n 2000] [--repeats 3]
Writes bench/results/incremental.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS,
    WORK,
    command_line,
    day_list,
    machine_facts,
    table,
    write_landing,
    write_results,
)

NAME = "incremental"
TARGET = 1.3
NEW_DAY = "2025-07-01"
STAGES = ("ingest_days", "score_days", "decide_days")
ASSETS = ("raw_runs", "scored_runs", "promotion_decisions")


class Case:
    """One history length: its home folder, settings resource and database snapshot."""

    def __init__(self, root: Path, history_days: int):
        from autoretrain.defs.resources import ProjectResource

        self.history_days = history_days
        self.home = root / f"history-{history_days}"
        # A config path that does not exist: defaults only, whatever autoretrain.yaml says.
        self.resource = ProjectResource(
            home=str(self.home), config_file=str(self.home / "no-config.yaml")
        )
        first = date.fromisoformat(NEW_DAY) - timedelta(days=history_days)
        self.days = day_list(first.isoformat(), history_days)
        self.snapshot = self.home / "history.duckdb.snapshot"

    @property
    def database(self) -> Path:
        return self.resource.settings().paths.database

    def restore(self) -> None:
        for leftover in (self.database.with_name(self.database.name + ".wal"),):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(self.snapshot, self.database)


def _materialize(case: Case, **kwargs: Any):
    import dagster as dg

    from autoretrain.defs.runs import raw_runs
    from autoretrain.defs.scoring import promotion_decisions, scored_runs

    result = dg.materialize(
        [raw_runs, scored_runs, promotion_decisions],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"autoretrain": case.resource},
        **kwargs,
    )
    if not result.success:
        raise RuntimeError(f"materialization failed for {case.home}")
    return result


def build_history(case: Case, per_day: int) -> dict[str, Any]:
    if case.home.exists():
        shutil.rmtree(case.home)
    landing = case.resource.settings().paths.landing
    t0 = time.perf_counter()
    landed = write_landing(landing, {day: per_day for day in [*case.days, NEW_DAY]})
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _materialize(
        case,
        tags={
            "dagster/asset_partition_range_start": case.days[0],
            "dagster/asset_partition_range_end": case.days[-1],
        },
    )
    history_s = time.perf_counter() - t0
    shutil.copyfile(case.database, case.snapshot)
    return {
        "history_days": case.history_days,
        "history_runs": per_day * case.history_days,
        "landing_mb": round(landed["bytes"] / 1e6, 1),
        "database_mb": round(case.snapshot.stat().st_size / 1e6, 1),
        "generate_s": round(generate_s, 1),
        "history_materialize_s": round(history_s, 1),
    }


def time_new_day_dagster(case: Case) -> dict[str, float]:
    case.restore()
    t0 = time.perf_counter()
    result = _materialize(case, partition_key=NEW_DAY)
    wall = time.perf_counter() - t0
    steps = {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in result.get_step_success_events()
    }
    return {"total": wall, **{asset: steps[asset] for asset in ASSETS}}


def time_new_day_stages(case: Case) -> dict[str, float]:
    from autoretrain.project import Project

    case.restore()
    settings = case.resource.settings()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    summary = Project(settings).ingest_days([NEW_DAY])
    times["ingest_days"] = time.perf_counter() - t0
    if summary.inserted == 0:
        raise RuntimeError("the new day was already in the snapshot: nothing was ingested")
    t = time.perf_counter()
    Project(settings).score_days(NEW_DAY, NEW_DAY)
    times["score_days"] = time.perf_counter() - t
    t = time.perf_counter()
    Project(settings).decide_days(NEW_DAY, NEW_DAY)
    times["decide_days"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return times


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(s[key] for s in samples), 3) for key in samples[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    facts = machine_facts()
    root: Path = args.home
    cases = [Case(root, 1), Case(root, args.days)]
    # The daily partitions start where the data starts, read when the definitions load: this
    # history is written after that, so its first day is named up front.
    first = min([c.days[0] for c in cases] + [os.environ.get("AUTORETRAIN_HISTORY_START", "9999")])
    os.environ["AUTORETRAIN_HISTORY_START"] = first
    setup = {}
    for case in cases:
        setup[case.history_days] = build_history(case, args.n)
        print(f"history of {case.history_days} day(s) ready: {setup[case.history_days]}")
    dagster_samples: dict[int, list[dict[str, float]]] = {c.history_days: [] for c in cases}
    stage_samples: dict[int, list[dict[str, float]]] = {c.history_days: [] for c in cases}
    for rep in range(args.repeats):
        for case in cases:
            d = time_new_day_dagster(case)
            s = time_new_day_stages(case)
            dagster_samples[case.history_days].append(d)
            stage_samples[case.history_days].append(s)
            print(
                f"repeat {rep + 1}, history {case.history_days:>3} day(s): dagster "
                f"{d['total']:.2f}s, stages {s['total']:.2f}s "
                f"({', '.join(f'{k} {s[k]:.2f}' for k in STAGES)})"
            )
    short, long = cases[0].history_days, cases[1].history_days
    dagster = {h: _medians(v) for h, v in dagster_samples.items()}
    direct = {h: _medians(v) for h, v in stage_samples.items()}
    ratio = dagster[long]["total"] / dagster[short]["total"]
    result = {
        "question": "cost of materializing one new day with 1 vs N days of history",
        "new_day": NEW_DAY,
        "runs_per_day": args.n,
        "history_days": [short, long],
        "repeats": args.repeats,
        "setup": {str(h): v for h, v in setup.items()},
        "dagster_new_day_median_s": {str(h): v for h, v in dagster.items()},
        "stages_new_day_median_s": {str(h): v for h, v in direct.items()},
        "samples": {
            "dagster": {str(h): v for h, v in dagster_samples.items()},
            "stages": {str(h): v for h, v in stage_samples.items()},
        },
        "ratio": round(ratio, 3),
        "ratio_per_asset": {a: round(dagster[long][a] / dagster[short][a], 3) for a in ASSETS},
        "ratio_per_stage": {
            s: round(direct[long][s] / direct[short][s], 3) for s in (*STAGES, "total")
        },
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        **facts,
        "command": command_line(),
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def markdown(r: dict[str, Any]) -> str:
    short, long = (str(h) for h in r["history_days"])
    d, s = r["dagster_new_day_median_s"], r["stages_new_day_median_s"]
    rows = [["Dagster: 3 assets, one run (wall)", d[short]["total"], d[long]["total"], r["ratio"]]]
    rows += [[f"  step `{a}`", d[short][a], d[long][a], r["ratio_per_asset"][a]] for a in ASSETS]
    rows += [
        [f"direct `Project.{k}`", s[short][k], s[long][k], r["ratio_per_stage"][k]] for k in STAGES
    ]
    verdict = "meets" if r["meets_target"] else "misses"
    setup = r["setup"]
    text = f"""# One new day, {short} vs {long} days of history

`{r["command"]}` on {r["cores"]} cores, {r["memory_gb"]} GB, {r["date"]} (load average at start
{r["load_average_at_start"]}; the machine is shared, so timings are noisy).
{r["runs_per_day"]:,} runs per day; the new day {r["new_day"]} holds the same runs in both cases.
History: {setup[short]["history_runs"]:,} runs ({setup[short]["database_mb"]} MB database) vs
{setup[long]["history_runs"]:,} runs ({setup[long]["database_mb"]} MB database). Medians of
{r["repeats"]} repetitions, seconds.

{table(["new day", f"{short} day history", f"{long} days history", "ratio"], rows)}

Ratio {long}/{short} days of history: **{r["ratio"]}x** (target <= {r["target"]}x: it {verdict}
the target).
"""
    if r.get("interpretation"):
        text += "\n" + r["interpretation"] + "\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=180, help="the long history, in days")
    parser.add_argument("--n", type=int, default=2000, help="runs per day")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per case")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for results")
    parser.add_argument("--home", type=Path, default=WORK / NAME, help="work folder (wiped)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--interpretation", type=Path, help="a paragraph to add to the .md")
    args = parser.parse_args()
    args.home = args.home.resolve()
    if args.days < 2:
        parser.error("--days must be at least 2 (it is compared with one day of history)")
    result = run(args)
    if args.interpretation:
        result["interpretation"] = args.interpretation.read_text().strip()
    text = markdown(result)
    write_results(NAME, result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
