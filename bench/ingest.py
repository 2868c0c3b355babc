"""Benchmark: the project's ingest against DuckDB's raw `read_json_auto`, same files, same run.

    .venv/bin/python bench/ingest.py                 # 200k runs (~520 MB)
    .venv/bin/python bench/ingest.py --n 1000000     # 1M runs (~2.6 GB)

Generates N synthetic runs (~2.6 KB each, one landing day, `--per-file` runs per part file, with
0.1% malformed lines and 0.1% re-recorded run_ids so validation, quarantine and dedup all work)
under bench/work/ (gitignored), then times, each in a fresh child process with its own DuckDB
file: raw DuckDB loading the files into a table, and `RunStore.ingest_day` (validation, typed
columns, events table, dedup, quarantine). Peak RSS is the child's ru_maxrss. Rounds alternate
so that load from other processes on the machine falls on both alike.
Writes bench/results/ingest.json and ingest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DAY = "2026-01-15"


def synthetic_run(i: int, rng: random.Random) -> dict:
    t0 = datetime(2026, 1, 15, tzinfo=UTC) + timedelta(milliseconds=i * 50)
    a, b = rng.randint(0, 9999), rng.randint(0, 9999)
    call = f"call_{i}"
    stamp = [(t0 + timedelta(milliseconds=100 * k)).isoformat() for k in range(8)]
    return {
        "schema_version": 1,
        "run_id": f"{rng.getrandbits(128):032x}",
        "scenario_id": f"calc-add-{i % 40}",
        "instance_hash": f"{rng.getrandbits(128):032x}",
        "instance_seed": i,
        "category": ("arithmetic", "units", "lookup", "text")[i % 4],
        "workflow": "executor",
        "agent_version": "1.3.0",
        "provider": "local",
        "model": ("tiny-v1", "tiny-v2")[i % 2],
        "slot": ("primary", "canary")[i % 5 == 0],
        "traffic": "selfplay",
        "status": "succeeded" if i % 7 else "failed",
        "started_at": stamp[0],
        "ended_at": stamp[7],
        "messages": [
            {
                "role": "system",
                "content": "You are a careful assistant. Use a tool when it helps, then answer "
                "with the final value only. Never guess a number you can compute. " * 2,
            },
            {"role": "user", "content": f"What is {a} plus {b}? Use the calculator tool."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call,
                        "type": "function",
                        "function": {
                            "name": "calculator",
                            "arguments": json.dumps({"expression": f"{a}+{b}"}),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call, "name": "calculator", "content": str(a + b)},
            {"role": "assistant", "content": f"The answer is {a + b}."},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "calculator",
                    "description": "Evaluate an arithmetic expression and return the result.",
                    "parameters": {
                        "type": "object",
                        "properties": {"expression": {"type": "string", "description": "e.g. 2+2"}},
                        "required": ["expression"],
                    },
                },
            }
        ],
        "events": [
            {"type": t, "agent": ag, "at": stamp[k], "duration_s": 0.05, "payload": {"step": k}}
            for k, (t, ag) in enumerate(
                [
                    ("run_started", "tracker"),
                    ("model_call", "executor"),
                    ("tool_call", "executor"),
                    ("tool_result", "tools"),
                    ("model_call", "executor"),
                    ("verification", "exact_match"),
                    ("run_finished", "tracker"),
                ]
            )
        ],
        "verifications": [
            {"verifier": "exact_match", "passed": i % 7 != 0, "score": float(i % 7 != 0)}
        ],
        "recoveries": [],
        "escalations": [],
        "final_answer": str(a + b),
        "usage": {"prompt_tokens": 180 + i % 50, "completion_tokens": 24},
        "latency_s": 0.8,
        "cost_usd": 0.0,
        "tags": {"seed": "0", "batch": str(i // 1000)},
    }


def generate(landing: Path, n: int, per_file: int) -> dict:
    """Write the landing day once per (n, per_file); reuse it when it is already there."""
    manifest = landing / "manifest.json"
    want = {"n": n, "per_file": per_file, "version": 2}
    if manifest.exists() and json.loads(manifest.read_text()).get("spec") == want:
        return json.loads(manifest.read_text())
    shutil.rmtree(landing, ignore_errors=True)
    day = landing / f"date={DAY}"
    day.mkdir(parents=True)
    rng = random.Random(0)
    bad = dup = 0
    recent: list[dict] = []
    t0 = time.perf_counter()
    for start in range(0, n, per_file):
        lines = []
        for i in range(start, min(n, start + per_file)):
            if i % 1000 == 500:  # 0.1% malformed: cut in the middle
                lines.append(json.dumps(synthetic_run(i, rng))[:700])
                bad += 1
            elif i % 1000 == 900 and recent:  # 0.1% re-recorded later, in a later file
                again = dict(recent[len(recent) // 2])
                again["ended_at"] = (
                    datetime.fromisoformat(again["ended_at"]) + timedelta(seconds=5)
                ).isoformat()
                again["final_answer"] = "revised"
                lines.append(json.dumps(again))
                dup += 1
            else:
                run = synthetic_run(i, rng)
                if i % 97 == 0:
                    recent.append(run)
                lines.append(json.dumps(run))
        recent = recent[-50:]
        (day / f"part-{start:09d}.jsonl").write_text("\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in day.glob("part-*.jsonl"))
    info = {
        "spec": want,
        "files": len(list(day.glob("part-*.jsonl"))),
        "bytes": size,
        "malformed_lines": bad,
        "rerecorded_lines": dup,
        "generate_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest.write_text(json.dumps(info))
    return info


def child(kind: str, landing: Path, db: Path) -> None:
    """Run one measured ingest and print its figures as JSON (runs in a fresh process)."""
    import duckdb

    from autoretrain.runs.store import RunStore  # imported before the clock starts

    files = sorted((landing / f"date={DAY}").glob("part-*.jsonl"))
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if kind == "raw":
        con = duckdb.connect(str(db))
        con.execute(
            "CREATE TABLE raw AS SELECT * FROM read_json_auto(?, format='newline_delimited', "
            "ignore_errors=true)",
            [[str(f) for f in files]],
        )
        rows = con.execute("SELECT count(*) FROM raw").fetchall()[0][0]
        con.close()
        extra: dict = {"rows": rows}
    else:
        with RunStore(db, landing=landing) as store:
            report = store.ingest_day(DAY, files)
        extra = {"rows": report.inserted, "report": report.to_dict()}
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_rss_bytes": rss, **extra}))


def measure(kind: str, landing: Path, db: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--landing", str(landing), "--db", str(db)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for suffix in ("", ".wal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return result


def markdown(r: dict) -> str:
    mib = 2**20
    rows = "\n".join(
        f"| {x['round']} | {x['kind']} | {x['seconds']:.1f} | {x['mb_per_s']:.1f} | "
        f"{x['peak_rss_bytes'] / mib:.0f} |"
        for x in r["rounds"]
    )
    d = r["data"]
    return f"""# Ingest benchmark

`{r["command"]}` on {r["date"]} ({r["machine"]["cores"]} cores, {r["machine"]["memory_gib"]} GiB;
load average at the end {", ".join(f"{x:.1f}" for x in r["machine"]["load_average_at_end"])}:
other jobs shared the machine, so compare the two engines within a run, not across runs).

Data: {d["spec"]["n"]:,} synthetic runs, {d["bytes"] / 1e6:.0f} MB in {d["files"]} files of one
landing day, with {d["malformed_lines"]} malformed lines and {d["rerecorded_lines"]} re-recorded run_ids.

| round | engine | seconds | MB/s | peak RSS (MiB) |
|---|---|---|---|---|
{rows}

- raw: DuckDB `read_json_auto` of the same files into a table (`ignore_errors=true`).
- project: `RunStore.ingest_day` (line split, UTF-8 and size checks, JSON validity, the type of
  every `Run` field and of messages/events/verifications, typed columns, events table, dedup on
  run_id, quarantine with file, line and reason).

**Throughput ratio project/raw (best of each): {r["ratio_project_over_raw"]:.2f}** (target
{r["target_ratio"]}); per round: {", ".join(f"{x:.2f}" for x in r["ratio_per_round"])}.
Project peak RSS: {r["project_peak_rss_bytes"] / mib:.0f} MiB.

Notes (measured on this machine while writing the store, 20k runs, CPU seconds):
- Where the project's time goes: the check-and-extract SQL per chunk ~45%, the events table
  ~10%, the runs insert ~8%, Python line splitting ~5%; raw `read_json_auto` spends ~1.5 CPU-s
  where the project spends ~2.3.
- pydantic-core `Run.model_validate_json` validates these records at ~88 MB/s on one core,
  faster than the SQL checks here: a Python-side validation path is worth measuring next.
- Memory: one transaction per chunk and DuckDB's `memory_limit` (1 GB) bound the ingest; RSS
  should not grow with the day, but 1M runs was not measured in this run.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--per-file", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--child", choices=["raw", "project"])
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.landing, args.db)
        return

    landing = args.work / f"landing-{args.n}-{args.per_file}"
    data = generate(landing, args.n, args.per_file)
    print(f"data: {data}", flush=True)
    db = args.work / "bench.duckdb"
    rounds = []
    for r in range(args.rounds):
        for kind in ("raw", "project"):
            result = measure(kind, landing, db)
            result["mb_per_s"] = data["bytes"] / 1e6 / result["seconds"]
            print(f"round {r + 1} {kind}: {result['seconds']:.2f} s, {result['mb_per_s']:.1f} MB/s, "
                  f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)  # fmt: skip
            rounds.append({"round": r + 1, **{k: v for k, v in result.items() if k != "report"}})
            if kind == "project":
                report = result["report"]
    best = {k: min(x["seconds"] for x in rounds if x["kind"] == k) for k in ("raw", "project")}
    ratio = best["raw"] / best["project"]  # throughput ratio: project MB/s over raw MB/s
    per_round = [
        raw["seconds"] / proj["seconds"]
        for raw, proj in zip(rounds[::2], rounds[1::2], strict=True)
    ]
    peak = max(x["peak_rss_bytes"] for x in rounds if x["kind"] == "project")
    result = {
        "benchmark": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["bench/ingest.py", *sys.argv[1:]]),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "data": data,
        "rounds": rounds,
        "best_seconds": best,
        "throughput_mb_per_s": {k: data["bytes"] / 1e6 / v for k, v in best.items()},
        "ratio_project_over_raw": ratio,
        "ratio_per_round": per_round,
        "target_ratio": 0.7,
        "project_peak_rss_bytes": peak,
        "last_project_report": report,
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / "ingest.md").write_text(markdown(result))
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("best_seconds", "ratio_project_over_raw", "project_peak_rss_bytes")
            }
        )
    )


if __name__ == "__main__":
    main()
