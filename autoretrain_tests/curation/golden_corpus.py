"""A varied corpus whose build and decisions are pinned byte for byte (test_golden.py).

Speed work on curation (issue #23) must never change what is written: the golden files under
golden/ were produced by the per-run implementation as it stood before that work (commit
fb17aec), and the test holds every later implementation to them. One deliberate change since:
the order of examples sharing an instance, the copy deduplication keeps and the category cap's
choice follow from content, not from random run ids (the strict build's files were rewritten
then; the default build's stayed byte for byte). Regenerate them only from an implementation
whose output is known to be right:

    PYTHONPATH=. .venv/bin/python -m autoretrain_tests.curation.golden_corpus --write

The corpus has something of every kind the builder and the guard treat apart: planted secrets
and personal data in every place, duplicates, excluded runs of each reason, tool calls,
truncated outputs, lone surrogates, non-ASCII text, text that only looks like a secret, records
given as Run objects, dicts, JSON text and bytes (one not UTF-8), and bench-shaped runs.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from autoretrain.runs.schema import Escalation, Message, RecoveryAction, Usage, Verification

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BENCH_DAY = "2025-03-01"
DECIDE_DAY = "2026-03-02"
# Manifest fields that name the code or the machine, not the data.
UNPINNED = ("git_commit",)


def _bench_records(n: int) -> list[str]:
    from bench.common import synthetic_record

    rng = random.Random("golden")
    return [
        json.dumps(synthetic_record(i, BENCH_DAY, rng), separators=(",", ":")) for i in range(n)
    ]


def _odd_runs() -> list[Any]:
    """Edge cases the other sources lack, as raw records."""
    from .factories import make_run, recovered, solved

    out: list[Any] = []
    # Non-ASCII text, and letters that fold to ASCII in case-insensitive rules.
    accents = solved(2, 9)
    accents[1]["content"] = "Combien font 2 et 9 ? Réponds vite, s’il te plaît 中文 🙂"
    accents[3]["content"] = "11 (paſſword=hunter2hunter2)"
    out.append(make_run("accents", accents, scenario_id="scn_é"))
    # Looks like secrets but is not: hex ids, long numbers, words with digits.
    lookalike = solved(
        4, 4, tool_output="8 id 3f2a9c0e1b7d4a6f8e2c1b0a9d8e7f6c table126737Manila998"
    )
    out.append(make_run("lookalike", lookalike, scenario_id="scn_5"))
    numbers = solved(1, 9, tool_output="10; order 4111 1111 1111 1111; call 415-555-2671 now")
    out.append(make_run("pii-numbers", numbers, scenario_id="scn_4"))
    # Arguments logged as an object (stored as JSON text), with a secret inside.
    obj = solved(5, 5)
    obj[2]["tool_calls"][0]["function"]["arguments"] = {"expression": "5+5", "api_key": "abc"}
    out.append(make_run("object-args", obj, scenario_id="scn_2"))
    # Plan then answer: two assistant turns merged into one.
    merged = solved(3, 3)
    merged.insert(4, {"role": "assistant", "content": "Let me think."})
    merged[5] = {"role": "assistant", "content": "6"}
    out.append(make_run("merged", merged, scenario_id="scn_3"))
    # Attempts recorded on the messages.
    attempts = recovered(7, 2)
    for k, message in enumerate(m for m in attempts if m["role"] == "assistant"):
        message["attempt"] = 0 if k < 2 else 1
    out.append(
        make_run(
            "attempts",
            attempts,
            scenario_id="scn_1",
            verifications=[
                {"verifier": "x", "passed": False, "score": 0.0, "attempt": 0},
                {"verifier": "x", "passed": True, "score": 1.0, "attempt": 1},
            ],
        )
    )
    # No scenario: split by the opening prompt; twice, with different whitespace (a duplicate).
    out.append(make_run("prompt-a", solved(8, 1), scenario_id=None))
    spaced = solved(8, 1)
    spaced[4]["content"] = " 9 "
    out.append(make_run("prompt-b", spaced, scenario_id=None))
    # A tool output past the limit with a secret straddling the cut.
    long_out = "x" * 490 + " ghp_" + "A1b2C3d4E5" * 4 + " tail"
    out.append(make_run("cut-secret", solved(2, 2, tool_output=long_out), scenario_id="scn_0"))
    # Each remaining exclusion reason once.
    unanswered = solved(1, 1)[:3] + [{"role": "assistant", "content": "2"}]
    out.append(make_run("unanswered", unanswered, scenario_id="scn_1"))
    ends_on_tool = solved(1, 1)[:4]
    out.append(make_run("ends-on-tool", ends_on_tool, scenario_id="scn_1"))
    undeclared = solved(6, 1)
    undeclared[2]["tool_calls"][0]["function"]["name"] = "nope"
    out.append(make_run("undeclared", undeclared, scenario_id="scn_1"))
    bad_args = solved(6, 2)
    bad_args[2]["tool_calls"][0]["function"]["arguments"] = "{not json"
    out.append(make_run("bad-args", bad_args, scenario_id="scn_1"))
    list_args = solved(6, 3)
    list_args[2]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"
    out.append(make_run("list-args", list_args, scenario_id="scn_1"))
    reused = solved(6, 4)
    reused.insert(
        4, {"role": "assistant", "content": None, "tool_calls": [reused[2]["tool_calls"][0]]}
    )
    reused.insert(5, dict(reused[3]))
    out.append(make_run("reused-id", reused, scenario_id="scn_1"))
    blank_user = solved(6, 5)
    blank_user[1]["content"] = "   "
    out.append(make_run("blank-user", blank_user, scenario_id="scn_1"))
    all_failed = recovered(6, 6)[:6]
    all_failed.append({"role": "assistant", "content": "0"})
    out.append(make_run("all-failed", all_failed, scenario_id="scn_1"))
    no_assistant = solved(6, 7)[:2]
    out.append(make_run("no-assistant", no_assistant, scenario_id="scn_1"))
    twin_tools = solved(6, 8)
    out.append(make_run("twin-tools", twin_tools, scenario_id="scn_1", tools=[_calc(), _calc()]))
    bad_spec = solved(6, 9)
    out.append(make_run("bad-spec", bad_spec, scenario_id="scn_1", tools=[{"type": "function"}]))
    unmergeable = solved(7, 1)
    unmergeable.insert(5, {"role": "assistant", "content": "again", "tool_calls": None})
    unmergeable[4]["tool_calls"] = [
        {"id": "c9", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
    ]
    out.append(make_run("unmergeable", unmergeable, scenario_id="scn_1"))
    # A secret in the run id, model and category: the manifest must not copy it.
    leaky = make_run(
        "run-sk-proj-LEAKEDsecret0123456789abcdefXYZ",
        solved(9, 9),
        scenario_id="scn_9",
        category="cat password=hunter2hunter2",
    )
    out.append(leaky.model_copy(update={"model": "model-AKIAIOSFODNN7EXAMPLE"}))
    return out


def _calc() -> dict[str, Any]:
    from .factories import CALCULATOR

    return json.loads(json.dumps(CALCULATOR))


def build_inputs() -> tuple[list[Any], dict[str, str]]:
    """The runs given to build_dataset (mixed kinds of input) and the decisions given with them."""
    from .planted import PLANTED, planted_record
    from .test_builder import mixed_runs

    runs, decisions = mixed_runs()
    runs = list(runs)
    for index, kind in enumerate(sorted(PLANTED)):
        record = planted_record(kind, index)
        runs.append(json.dumps(record) if index % 2 else record)
    for k, run in enumerate(_odd_runs()):
        kind = k % 3  # as JSON text, as a Run, as a dict
        runs.append(run.model_dump_json() if kind == 0 else run if kind == 1 else run.model_dump())
    bench = _bench_records(400)
    runs += bench
    # Text that is not a record, a record that is not UTF-8, a lone surrogate escaped in JSON.
    runs.append("{not json")
    runs.append(b'{"run_id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}')
    surrogate = json.loads(bench[0])
    surrogate["run_id"] = "escaped-surrogate"
    surrogate["messages"][1]["content"] = "half \ud83d of an emoji"
    runs.append(json.dumps(surrogate))
    for run in runs:
        run_id = _run_id(run)
        if run_id is not None:
            decisions.setdefault(run_id, "promote")
    decisions["rejected"] = "reject"
    decisions["pii-numbers"] = "needs_human"
    return runs, decisions


def _run_id(run: Any) -> str | None:
    if hasattr(run, "run_id"):
        return run.run_id
    if isinstance(run, dict):
        return run.get("run_id")
    try:
        record = json.loads(run)
    except ValueError:
        return None
    return record.get("run_id") if isinstance(record, dict) else None


BUILDS = ("default", "strict")


def build(name: str, out_root: Path, build_dataset: Any = None) -> Path:
    """Build the corpus under one of two configurations; returns the version folder."""
    from autoretrain.settings import DatasetSettings, PromotionGates

    from .planted import EXTRA_PATTERN

    if build_dataset is None:
        from autoretrain.curation.builder import build_dataset
    runs, decisions = build_inputs()
    if name == "default":
        config = DatasetSettings(max_tool_output_chars=500, eval_ratio=0.25)
        given = decisions
    else:
        config = DatasetSettings(
            max_tool_output_chars=300,
            eval_ratio=0.4,
            extra_secret_patterns=[EXTRA_PATTERN, r"ops-\d+@"],
            azure_bom=True,
            max_examples_per_category=40,
            max_example_tokens=160,
        )
        given = None
    version = build_dataset(
        runs,
        out_root=out_root,
        eval_hashes={"EVALHASH"},
        eval_scenario_ids={"held_out_1", "lookup-price"},
        config=config,
        gates=PromotionGates(),
        manifest_extra={"catalog_hash": "cat123"},
        decisions=given,
        now=NOW,
    )
    return version.path


def pinned_manifest(version_dir: Path) -> str:
    manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    for key in UNPINNED:
        manifest.pop(key, None)
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


# -- decisions ------------------------------------------------------------------------------


def decide_runs() -> list[Any]:
    """Runs that exercise every gate, each explanation's formatting, and the transcript gates."""
    from autoretrain_tests.runs.test_scoring import make_run

    rng = random.Random(11)
    started = datetime.fromisoformat(f"{DECIDE_DAY}T10:00:00+00:00")
    failed = [Verification(verifier="x", passed=False, score=0.123456)]
    kinds: list[dict[str, Any]] = [
        {},
        {"traffic": "evaluation"},
        {"category": 'it\'s "quoted"\tcat'},
        {"category": "ünits"},
        {"category": None},
        {"status": "running"},
        {"verifications": []},
        {"status": "succeeded", "verifications": failed},
        {"status": "failed", "verifications": [Verification(verifier="x", passed=True, score=1)]},
        {"status": "failed", "verifications": failed},
        {"final_answer": None},
        {"final_answer": "   "},
        {"latency_s": None},
        {"verifications": [Verification(verifier="x", passed=True, score=0.5)]},
        {"verifications": [Verification(verifier="x", passed=True, score=0.97)]},
        {"escalations": [Escalation(reason="x")]},
        {"recoveries": [RecoveryAction(attempt=k, reason="w") for k in range(3)]},
        {"recoveries": [RecoveryAction(attempt=1, reason="w")]},
        {"latency_s": 1234.5678},
        {"ended_at": started + timedelta(seconds=4000)},
        {"usage": Usage(prompt_tokens=9000, completion_tokens=1)},
        {"messages": [Message(role="system", content="s"), Message(role="user", content="u")]},
        {
            "messages": [
                Message(role="user", content="u"),
                Message(role="tool", tool_call_id="zz", content="?"),
                Message(role="assistant", content="5"),
            ]
        },
        {
            "messages": [
                Message(role="user", content="u"),
                Message(
                    role="assistant",
                    tool_calls=[{"id": "c1", "function": {"name": "add", "arguments": "{}"}}],
                ),
                Message(role="assistant", content="5"),
            ]
        },
        {
            "messages": [
                Message(role="user", content="u"),
                Message(role="assistant", content="5"),
                Message(role="user", content="more?"),
            ]
        },
    ]
    runs = []
    for i in range(400):
        fields = dict(rng.choice(kinds)) if i >= len(kinds) else dict(kinds[i])
        if "latency_s" not in fields and rng.random() < 0.5:
            fields["latency_s"] = round(rng.uniform(0.1, 200.0), 4)
        runs.append(make_run(f"run-{i:04d}-{rng.getrandbits(32):08x}", **fields))
    return runs


def decide(settings: Any, reviewer: bool, workers: int = 1) -> list[tuple]:
    """Ingest, score and decide the decision corpus in a fresh store; the decisions table."""
    from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
    from autoretrain.providers.scripted import ScriptedModel
    from autoretrain.runs.scoring import score_days
    from autoretrain.runs.store import RunStore
    from autoretrain.settings import PromotionGates
    from autoretrain_tests.runs.test_scoring import ingest

    gates = PromotionGates(
        categories=["arithmetic", "ünits"],
        max_runtime_s=100.0,
        borderline_recoveries=1,
        min_quality_score=0.2,
    )
    store = RunStore.from_settings(settings)
    try:
        ingest(store, decide_runs())
        score_days(store.con, DECIDE_DAY, DECIDE_DAY, gates)
        model = None
        if reviewer:
            replies = [
                json.dumps({"decision": "reject", "rationale": "Looks shaky."}),
                "not json at all",
            ]
            model = ScriptedModel(
                replies, default=json.dumps({"decision": "promote", "rationale": "Fine."})
            )
        report = decide_days(
            store.con, DECIDE_DAY, DECIDE_DAY, PromotionGuardAgent(gates, model), workers
        )
        rows = store.con.execute(
            "SELECT run_id, day::VARCHAR, decision, gate, rationale, scorer_version "
            "FROM promotion_decisions ORDER BY run_id"
        ).fetchall()
    finally:
        store.close()
    summary = {k: v for k, v in report.to_dict().items() if k not in ("seconds", "runs_per_s")}
    return [tuple(r) for r in rows] + [("report", json.dumps(summary, sort_keys=True))]


def decisions_text(rows: list[tuple]) -> str:
    return "".join(json.dumps(list(r), ensure_ascii=False) + "\n" for r in rows)


def _settings(home: Path) -> Any:
    from autoretrain.settings import load_settings

    return load_settings(home / "no-config.yaml", home=home)


def write() -> None:
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in BUILDS:
            path = build(name, Path(tmp) / name)
            for file in ("train.jsonl", "eval.jsonl"):
                (GOLDEN / f"{name}-{file}").write_bytes((path / file).read_bytes())
            (GOLDEN / f"{name}-manifest.json").write_text(pinned_manifest(path), encoding="utf-8")
        for reviewer in (False, True):
            home = Path(tmp) / f"home-{reviewer}"
            rows = decide(_settings(home), reviewer)
            name = "decisions-reviewer.jsonl" if reviewer else "decisions.jsonl"
            (GOLDEN / name).write_text(decisions_text(rows), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the golden files")
    if parser.parse_args().write:
        write()
