from __future__ import annotations

import json

import pytest

from autoretrain.curation.dedup import content_hash, deduplicate
from autoretrain.curation.examples import run_to_example
from autoretrain.curation.split import assign_splits

from .factories import make_run, solved


def test_split_is_by_key_deterministic_and_follows_the_ratio():
    keys = [f"scenario_{i}" for i in range(40)]
    split = assign_splits(keys * 3, 0.25)
    assert set(split) == set(keys)
    assert sum(s == "eval" for s in split.values()) == 10
    assert assign_splits(list(reversed(keys)), 0.25) == split


def test_small_catalogs_still_get_both_sides_and_bad_ratios_are_refused():
    assert sorted(assign_splits(["a", "b"], 0.1).values()) == ["eval", "train"]
    assert assign_splits(["only"], 0.5) == {"only": "train"}
    assert set(assign_splits(["a", "b", "c"], 0.0).values()) == {"train"}
    with pytest.raises(ValueError, match="eval_ratio"):
        assign_splits(["a"], 1.0)


def test_every_scenario_gives_its_share_of_instances_to_eval_and_keeps_some_to_train():
    # Splitting whole scenarios held the same ones out of every training set: the shipped
    # catalog never trained `decline_password`. Stratified by scenario, each is on both sides.
    groups = {f"{s}/i{i}": s for s in ("add", "decline", "lookup") for i in range(20)}
    groups |= {"tiny/i0": "tiny", "pair/i0": "pair", "pair/i1": "pair"}
    split = assign_splits(groups, 0.1, groups=groups)
    evals = {
        s: sum(split[k] == "eval" for k in groups if groups[k] == s) for s in set(groups.values())
    }
    assert evals == {"add": 2, "decline": 2, "lookup": 2, "tiny": 0, "pair": 0}
    assert split["tiny/i0"] == "train"
    assert assign_splits(reversed(list(groups)), 0.1, groups=groups) == split
    # Too few keys in every stratum for the ratio: eval still gets one, from a stratum that
    # keeps another for train.
    small = {"a/0": "a", "b/0": "b", "b/1": "b"}
    split = assign_splits(small, 0.1, groups=small)
    assert split["a/0"] == "train" and sorted(split[k] for k in ("b/0", "b/1")) == ["eval", "train"]


def test_content_hash_ignores_call_ids_whitespace_and_argument_formatting():
    first = run_to_example(make_run("r1", solved(2, 3, call_id="call_abc")), 4000)
    messages = solved(2, 3, call_id="call_xyz")
    messages[1]["content"] = "What   is 2 plus 3?  "
    messages[2]["tool_calls"][0]["function"]["arguments"] = json.dumps(
        {"expression": "2 + 3"}, indent=2
    )
    second = run_to_example(make_run("r2", messages), 4000)
    different = run_to_example(make_run("r3", solved(2, 4)), 4000)
    assert content_hash(first.record) == content_hash(second.record)
    assert content_hash(first.record) != content_hash(different.record)
    kept, dropped = deduplicate([first, second, different])
    assert [e.run_id for e in kept] == ["r1", "r3"]
    assert [(e.run_id, original) for e, original in dropped] == [("r2", "r1")]
