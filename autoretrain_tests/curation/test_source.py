"""Promoted runs copied out of the run store and streamed through a build."""

from __future__ import annotations

import json

from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
from autoretrain.curation.builder import build_dataset
from autoretrain.curation.source import promoted_records
from autoretrain.runs.schema import Escalation, Run
from autoretrain.runs.scoring import score_days
from autoretrain.runs.store import RunStore
from autoretrain.settings import PromotionGates
from autoretrain_tests.runs.test_scoring import DAY, ingest, make_run

NEXT_DAY = "2026-03-03"
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def _decided_store(settings) -> None:
    with RunStore.from_settings(settings) as store:
        ingest(
            store,
            [
                make_run("good", tools=[ADD]),
                make_run("escalated", escalations=[Escalation(reason="stuck")]),
                make_run("eval", traffic="evaluation"),
                make_run("good-later", day=NEXT_DAY, tools=[ADD], scenario_id="calc-sub"),
            ],
        )
        gates = PromotionGates()
        score_days(store.con, DAY, NEXT_DAY, gates)
        decide_days(store.con, DAY, NEXT_DAY, PromotionGuardAgent(gates))


def _reading(settings):
    """promoted_records' arguments: the run store, opened read-only, and the spool folder."""
    return lambda: RunStore.from_settings(settings, read_only=True), settings.paths.datasets


def test_promoted_records_stream_after_the_store_is_closed(settings):
    _decided_store(settings)
    with promoted_records(*_reading(settings)) as (n, records):
        # The read-only connection is gone: a writer can open the store while the build reads.
        RunStore.from_settings(settings).close()
        texts = list(records)
    assert n == 2
    runs = sorted((Run.model_validate_json(t) for t in texts), key=lambda r: r.run_id)
    assert [r.run_id for r in runs] == ["good", "good-later"]
    with promoted_records(*_reading(settings), NEXT_DAY, NEXT_DAY) as (n, records):
        assert n == 1 and [json.loads(t)["run_id"] for t in records] == ["good-later"]
    assert not any(settings.paths.datasets.iterdir())  # the temporary copy is gone


def test_records_as_json_text_build_the_same_files_as_runs(settings, tmp_path):
    _decided_store(settings)
    with promoted_records(*_reading(settings)) as (_, records):
        texts = list(records)
    runs = [Run.model_validate_json(t) for t in texts]
    common = dict(
        eval_hashes=set(),
        eval_scenario_ids=set(),
        config=settings.dataset,
        gates=settings.promotion_gates(),
    )
    from_text = build_dataset(
        [*texts, b'{"run_id": "broken", "messages": 3}', "not json"],
        out_root=tmp_path / "a",
        **common,
    )
    from_runs = build_dataset(runs, out_root=tmp_path / "b", **common)
    # The two promoted runs say the same thing: one example, one duplicate.
    assert from_runs.counts["train"] + from_runs.counts["eval"] == 1
    assert from_runs.exclusions == {"duplicate": 1}
    for name in ("train.jsonl", "eval.jsonl"):
        assert (from_text.path / name).read_bytes() == (from_runs.path / name).read_bytes()
    assert from_text.exclusions == {"duplicate": 1, "invalid_record": 2}
    invalid = {
        x["run_id"] for x in from_text.manifest["excluded_runs"] if x["reason"] == "invalid_record"
    }
    assert invalid == {"broken", "<input #4>"}
