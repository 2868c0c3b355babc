"""`autoretrain review`: list the queue, show a transcript, record a human decision."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autoretrain.agents.promotion_guard import PromotionGuardAgent, decide_days
from autoretrain.cli import cli
from autoretrain.runs.review import promotable_run_ids
from autoretrain.runs.schema import Verification
from autoretrain.runs.scoring import score_days
from autoretrain.runs.store import RunStore
from autoretrain_tests.runs.test_scoring import DAY, ingest, make_run


def review(*args: str):
    return CliRunner().invoke(cli, ["review", *args])


@pytest.fixture
def queued(settings):
    """A run store with one needs_human run (succeeded, but its verification failed)."""
    with RunStore.from_settings(settings) as store:
        contradiction = make_run(
            "odd-run",
            verifications=[
                Verification(verifier="exact", passed=False, score=0.0, feedback="expected 7")
            ],
        )
        ingest(store, [make_run("good"), contradiction])
        gates = settings.promotion_gates()
        score_days(store.con, DAY, DAY, gates)
        decide_days(store.con, DAY, DAY, PromotionGuardAgent(gates))
    return settings


def test_list_show_decide(queued):
    listed = review("--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["run_id"], r["gate"]) for r in rows] == [("odd-run", "status_contradiction")]

    plain = review()
    assert "odd-run" in plain.output and "status_contradiction" in plain.output

    shown = review("show", "odd-run")
    assert shown.exit_code == 0, shown.output
    for text in ["[2] user:", "→ call add (id c1)", "tool result for c1", "FAIL", "expected 7"]:
        assert text in shown.output
    assert "guard: needs_human [status_contradiction]" in shown.output

    decided = review(
        "decide", "odd-run", "reject", "--note", "answer is wrong", "--reviewer", "ana"
    )
    assert decided.exit_code == 0, decided.output
    assert "odd-run: reject by ana" in decided.output
    assert review().output.strip() == "No runs need a human decision."

    as_json = json.loads(review("show", "odd-run", "--json").output)
    assert as_json["run"]["run_id"] == "odd-run"
    assert as_json["decision"]["human_decision"] == "reject"
    assert as_json["decision"]["note"] == "answer is wrong"

    review("decide", "odd-run", "promote", "--note", "verifier was wrong", "--reviewer", "ben")
    with RunStore.from_settings(queued, read_only=True) as store:
        assert promotable_run_ids(store.con) == ["good", "odd-run"]


def test_errors_say_what_to_do(settings, queued):
    missing = review("show", "nope")
    assert missing.exit_code == 1 and "not in the run store" in missing.output
    bad = review("decide", "odd-run", "maybe", "--note", "x")
    assert bad.exit_code == 2 and "promote" in bad.output
    no_note = review("decide", "odd-run", "reject")
    assert no_note.exit_code == 2 and "--note" in no_note.output


def test_no_store_yet(settings):
    result = review()
    assert result.exit_code == 1 and "autoretrain ingest" in result.output
