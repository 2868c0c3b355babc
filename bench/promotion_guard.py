"""How fast are scoring and promotion decisions over many runs? 20k synthetic runs, ingested
through the run store, then in the same run:

- raw engine: DuckDB reading every record's verifications and roles (`from_json` over `record`),
  the JSON work scoring cannot avoid — the floor for score_days;
- score_days: every metric, written to scored_runs;
- decide_days: fact gates as one SQL CASE, transcripts parsed only for runs that cleared them;
- naive: every record parsed into a Run and PromotionGuardAgent.decide called run by run
  (what decide_days would cost without the SQL prefilter), without writing.

Run: .venv/bin/python bench/promotion_guard.py
Writes bench/results/promotion_guard.json and .md.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_RUNS = 20_000
DAY = "2026-03-02"


def synthetic_runs(n: int, seed: int = 0) -> list:
    from autoretrain.runs.schema import Escalation, Message, RecoveryAction, Verification
    from autoretrain_tests.runs.test_scoring import make_run

    rng = random.Random(seed)
    system = "You are a careful agent. Use the tools when they help. " * 20  # ~1.1 KB
    failed = [Verification(verifier="exact", passed=False, score=0.0, feedback="expected 5")]
    recovered = [
        Verification(verifier="exact", passed=False, score=0.0, attempt=0, feedback="no"),
        Verification(verifier="exact", passed=True, score=1.0, attempt=1),
    ]
    kinds = [
        ({}, 50),
        ({"status": "failed", "verifications": failed}, 20),
        ({"traffic": "evaluation"}, 10),
        ({"escalations": [Escalation(reason="stuck")], "status": "escalated"}, 5),
        ({"verifications": recovered, "recoveries": [RecoveryAction(attempt=1, reason="no")]}, 10),
        ({"final_answer": None}, 5),
    ]
    choices = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    runs = []
    for i in range(n):
        run = make_run(f"run-{i:06d}", **rng.choices(choices, weights)[0])
        run.messages[0] = Message(role="system", content=system)
        runs.append(run)
    return runs


def main() -> None:
    import psutil

    from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
    from autoretrain.runs.archive import RunArchive
    from autoretrain.runs.schema import Run
    from autoretrain.runs.scoring import SCORER_VERSION, score_days
    from autoretrain.runs.store import RunStore
    from autoretrain.settings import PromotionGates

    gates = PromotionGates()
    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp) / "landing"
        archive = RunArchive(landing)
        archive.write(synthetic_runs(N_RUNS))
        record_bytes = sum(p.stat().st_size for p in archive.files(DAY))
        with RunStore(Path(tmp) / "bench.duckdb", landing=landing) as store:
            ingest = store.ingest_day(DAY, archive.files(DAY))
            assert ingest.inserted == N_RUNS, ingest
            con = store.con

            t0 = time.perf_counter()
            con.execute(
                """SELECT count(*), sum(len(from_json(json_extract(record, '$.verifications'),
                                              '[{"score": "DOUBLE", "attempt": "BIGINT"}]'))),
                          sum(len(json_extract_string(record, '$.messages[*].role')))
                   FROM runs"""
            ).fetchall()
            raw_s = time.perf_counter() - t0

            score = score_days(con, DAY, DAY, gates)
            decide = decide_days(con, DAY, DAY, PromotionGuardAgent(gates))

            guard = PromotionGuardAgent(gates)
            t0 = time.perf_counter()
            cur = con.execute(
                "SELECT s.*, r.record FROM scored_runs s JOIN runs r USING (run_id) "
                "WHERE s.scorer_version = ?",
                [SCORER_VERSION],
            )
            names = [d[0] for d in cur.description]
            naive = {}
            while batch := cur.fetchmany(2000):
                for values in batch:
                    metrics = dict(zip(names, values, strict=True))
                    run = Run.model_validate_json(metrics.pop("record"))
                    naive[run.run_id] = guard.decide(run, metrics).decision
            naive_s = time.perf_counter() - t0
            stored = dict(
                con.execute("SELECT run_id, decision FROM promotion_decisions").fetchall()
            )
            assert stored == naive, "bulk and run-by-run decisions differ"

    result = {
        "question": "score_days and decide_days throughput over 20k runs",
        "runs": N_RUNS,
        "record_bytes_mean": round(record_bytes / N_RUNS),
        "raw_duckdb_json_scan": {"seconds": round(raw_s, 3), "runs_per_s": round(N_RUNS / raw_s)},
        "score_days": {"seconds": score.seconds, "runs_per_s": round(N_RUNS / score.seconds)},
        "decide_days": {
            "seconds": decide.seconds,
            "runs_per_s": round(decide.runs_per_s),
            "transcripts_read": decide.n_transcripts_read,
            "by_decision": decide.by_decision,
            "by_gate": decide.by_gate,
        },
        "naive_parse_every_record": {
            "seconds": round(naive_s, 3),
            "runs_per_s": round(N_RUNS / naive_s),
        },
        "ratio_score_days_vs_raw_scan": round(score.seconds / raw_s, 2),
        "speedup_decide_days_vs_naive": round(naive_s / decide.seconds, 2),
        "decisions_identical": True,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ".venv/bin/python bench/promotion_guard.py",
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "promotion_guard.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "promotion_guard.md").write_text(
        f"""# Scoring and promotion decisions, {N_RUNS:,} runs

`{result["command"]}` on {result["cores"]} cores, {result["memory_gb"]} GB, {result["date"]}.
Records average {result["record_bytes_mean"]} bytes; ingested through RunStore first (not timed).

| step | seconds | runs/s |
|---|---|---|
| raw DuckDB JSON scan (verifications + roles of every record) | {result["raw_duckdb_json_scan"]["seconds"]} | {result["raw_duckdb_json_scan"]["runs_per_s"]:,} |
| `score_days` (all metrics, written) | {score.seconds} | {result["score_days"]["runs_per_s"]:,} |
| `decide_days` (SQL gates, {decide.n_transcripts_read:,} transcripts parsed, written) | {decide.seconds} | {result["decide_days"]["runs_per_s"]:,} |
| naive: parse every record, `decide` run by run (not written) | {result["naive_parse_every_record"]["seconds"]} | {result["naive_parse_every_record"]["runs_per_s"]:,} |

score_days costs {result["ratio_score_days_vs_raw_scan"]}x the raw JSON scan it stands on;
decide_days is {result["speedup_decide_days_vs_naive"]}x faster than parsing every record, and
both give the same decision for every run. Decisions: {decide.by_decision}.
The machine is shared with other jobs: timings are noisy, the ratios less so.
"""
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
