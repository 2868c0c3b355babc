"""Shared pieces of the bench scripts: synthetic landing zones, children measured one by one,
machine facts and result files.

Synthetic records are built as plain dicts in the run schema and serialised with `json.dumps`
(a pydantic round trip per record would make generating a million of them the slowest part of
a benchmark); `check_records` parses a sample back through `Run` so the shape cannot drift.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"

# (scenario_id, category, tool, system prompt topic)
SCENARIOS = [
    ("calc-add", "arithmetic", "add", "adds numbers"),
    ("calc-mul", "arithmetic", "multiply", "multiplies numbers"),
    ("calc-sub", "arithmetic", "subtract", "subtracts numbers"),
    ("unit-length", "units", "convert_length", "converts lengths"),
    ("unit-mass", "units", "convert_mass", "converts masses"),
    ("unit-temp", "units", "convert_temperature", "converts temperatures"),
    ("lookup-capital", "lookup", "capital_of", "looks up capitals"),
    ("lookup-price", "lookup", "price_of", "looks up prices"),
    ("text-upper", "text", "upper", "transforms text"),
    ("text-reverse", "text", "reverse", "transforms text"),
    ("orders-status", "support", "order_status", "answers order questions"),
    ("orders-refund", "support", "refund_policy", "answers refund questions"),
]
# Outcome mix of a realistic day: mostly verified successes.
OUTCOMES = [
    ("success", 70),
    ("failed", 11),
    ("recovered", 8),
    ("escalated", 4),
    ("evaluation", 4),
    ("error", 2),
    ("success_with_email", 1),
]
MODELS = [("tiny-v3", "primary", 85), ("tiny-v4-candidate", "canary", 15)]


def _tool_spec(name: str, topic: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"A deterministic tool that {topic}; returns the result as text. "
            "Call it with exactly the arguments it declares.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "string", "description": "first operand or the input"},
                    "b": {"type": "string", "description": "second operand, if any"},
                },
                "required": ["a"],
            },
        },
    }


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def synthetic_record(i: int, day: str, rng: random.Random) -> dict[str, Any]:
    """One run record (~2.5 KB as JSON), deterministic in (i, day, rng state)."""
    scenario_id, category, tool, topic = SCENARIOS[rng.randrange(len(SCENARIOS))]
    outcome = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    model, slot = rng.choices([(m, s) for m, s, _ in MODELS], [w for *_, w in MODELS])[0]
    a, b = rng.randrange(10_000), rng.randrange(10_000)
    answer = str(a + b)
    started = datetime.fromisoformat(f"{day}T00:00:00+00:00") + timedelta(
        seconds=rng.randrange(86_000)
    )
    latency = round(rng.uniform(0.4, 9.0), 3)
    ended = started + timedelta(seconds=latency)
    call_id = f"call_{i:x}"
    system = (
        f"You are a careful agent that {topic}. Use the tools when they help, check the "
        "tool's result before you answer, and answer with the result only. If the request "
        "is ambiguous, say what you assumed. Never invent a tool or an argument; if no tool "
        "fits, answer from what you know and say so. Keep answers short: one line, no "
        "explanation unless the user asks for one."
    )
    tool_output = f"{answer}"
    if outcome == "success_with_email":
        tool_output = f"{answer} (ticket owner: ops-{i % 97}@example.com)"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": f"Request #{i}: using {tool}, what do you get for {a} and {b}? "
            "Reply with the number only.",
        },
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"a": str(a), "b": str(b)})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "name": tool, "content": tool_output},
    ]
    verifications = []
    recoveries = []
    escalations = []
    status = "succeeded"
    final: str | None = answer
    if outcome == "failed":
        final = str(a + b + 1)
        messages.append({"role": "assistant", "content": final})
        verifications.append(
            {"verifier": "exact", "passed": False, "score": 0.0, "feedback": f"expected {answer}"}
        )
        status = "failed"
    elif outcome == "recovered":
        wrong = str(a + b - 1)
        messages += [
            {"role": "assistant", "content": wrong},
            {
                "role": "user",
                "content": f"Verification failed: expected a different value "
                f"than {wrong}. Check the tool result and answer again.",
            },  # fmt: skip
            {"role": "assistant", "content": answer},
        ]
        verifications += [
            {"verifier": "exact", "passed": False, "score": 0.0, "attempt": 0, "feedback": "no"},
            {"verifier": "exact", "passed": True, "score": 1.0, "attempt": 1},
        ]
        recoveries.append(
            {
                "attempt": 1,
                "reason": "exact: no",
                "action": "retry_with_feedback",
                "at": _iso(started + timedelta(seconds=latency / 2)),
            }  # fmt: skip
        )
    elif outcome == "escalated":
        final = None
        messages.append({"role": "assistant", "content": "I cannot do this reliably."})
        verifications.append(
            {"verifier": "exact", "passed": False, "score": 0.0, "feedback": "no answer"}
        )
        escalations.append({"reason": "two failed attempts", "at": _iso(ended)})
        status = "escalated"
    elif outcome == "error":
        final = None
        status = "error"
    else:
        messages.append({"role": "assistant", "content": answer})
        verifications.append({"verifier": "exact", "passed": True, "score": 1.0})
    events = [
        {"type": "run_started", "agent": "executor", "at": _iso(started), "payload": {}},
        {
            "type": "model_call",
            "agent": "executor",
            "at": _iso(started + timedelta(seconds=0.2)),
            "duration_s": round(latency * 0.6, 3),
            "payload": {"prompt_tokens": 180 + i % 40, "completion_tokens": 22},
        },
        {
            "type": "tool_call",
            "agent": "executor",
            "at": _iso(started + timedelta(seconds=0.3)),
            "duration_s": 0.002,
            "payload": {"tool": tool, "ok": True},
        },
        {
            "type": "tool_result",
            "agent": "executor",
            "at": _iso(started + timedelta(seconds=0.31)),
            "payload": {"tool": tool, "chars": len(tool_output), "truncated": False},
        },
        {
            "type": "run_finished",
            "agent": "executor",
            "at": _iso(ended),
            "payload": {"status": status},
        },
    ]
    record: dict[str, Any] = {
        "schema_version": 1,
        # Random hex, as the tracker's uuid4().hex: ids carry no order a zone map could use.
        "run_id": f"{rng.getrandbits(128):032x}",
        "scenario_id": scenario_id,
        "instance_hash": f"{(a * 10_007 + b) % 2**32:08x}{i % 7}",
        "instance_seed": i,
        "category": category,
        "workflow": "executor",
        "agent_version": "agent-1.4.2",
        "provider": "local",
        "model": model,
        "slot": slot,
        "traffic": "evaluation" if outcome == "evaluation" else "selfplay",
        "status": status,
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "messages": messages,
        "tools": [_tool_spec(tool, topic)],
        "events": events,
        "verifications": verifications,
        "recoveries": recoveries,
        "escalations": escalations,
        "usage": {"prompt_tokens": 180 + i % 40, "completion_tokens": 22 + i % 9},
        "latency_s": latency,
        "cost_usd": round(0.00002 * (200 + i % 40), 6),
        "tags": {"host": f"worker-{i % 8}", "bench": "synthetic"},
    }
    if final is not None:
        record["final_answer"] = final
    return record


def day_list(first: str, n: int) -> list[str]:
    start = date.fromisoformat(first)
    return [(start + timedelta(days=k)).isoformat() for k in range(n)]


def write_landing(
    landing: Path, per_day: dict[str, int], *, seed: int = 0, part_runs: int = 20_000
) -> dict[str, int]:
    """Write per_day[day] synthetic runs for each day as landing-zone part files (several per
    day, as a real writer would leave). Returns {"runs": ..., "bytes": ...}."""
    from autoretrain.runs.archive import RunArchive

    archive = RunArchive(landing)
    runs = 0
    size = 0
    for day, n in sorted(per_day.items()):
        rng = random.Random(f"{seed}:{day}")
        for first in range(0, n, part_runs):
            lines = [
                json.dumps(synthetic_record(i, day, rng), separators=(",", ":"))
                for i in range(first, min(n, first + part_runs))
            ]
            for path in archive.write_lines({day: lines}):
                size += path.stat().st_size
            runs += len(lines)
    return {"runs": runs, "bytes": size}


def check_records(landing: Path, sample: int = 200) -> int:
    """Parse up to `sample` landed lines through `Run`; raises if one is not a valid Run."""
    from autoretrain.runs.schema import Run

    checked = 0
    for path in sorted(landing.glob("date=*/part-*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                Run.model_validate_json(line)
                checked += 1
                if checked >= sample:
                    return checked
    return checked


def landing_files(landing: Path) -> Iterator[Path]:
    return iter(sorted(landing.glob("date=*/part-*.jsonl")))


def measure_child(args: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python <args> --result-file F` as a child; returns its JSON result plus wall
    seconds and the child's own peak RSS (from wait4, so one child's peak, not the max over
    every child this process ever waited for)."""
    result_file = WORK / f".child-{os.getpid()}-{time.monotonic_ns()}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, *args, "--result-file", str(result_file)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed with exit code {proc.returncode}: {cmd}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    # Linux reports ru_maxrss in KiB.
    result["child_wall_s"] = round(wall, 3)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def machine_facts() -> dict[str, Any]:
    import dagster
    import duckdb
    import polars
    import psutil

    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "polars": polars.__version__,
        "dagster": dagster.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], ROOT)
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


def write_results(name: str, result: dict[str, Any], markdown: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown.rstrip() + "\n")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table (also readable printed to a terminal)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
