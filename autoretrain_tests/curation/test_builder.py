from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from autoretrain.curation.builder import build_dataset
from autoretrain.curation.checks import check_dataset
from autoretrain.curation.manifest import list_versions
from autoretrain.curation.scan import scan_file
from autoretrain.curation.validate import validate_file

from .factories import make_run, recovered, solved

SECRET = "sk-proj-PLANTEDsecret0123456789abcdef"
PASSWORD = "correct-horse-battery"
REPO = Path(__file__).resolve().parents[2]


def mixed_runs() -> tuple[list, dict[str, str]]:
    """Good runs over six scenarios plus one of every kind that must not get in."""
    runs = []
    for s in range(6):
        for i in range(3):
            runs.append(make_run(f"ok-{s}-{i}", solved(10 * s + i, 7), scenario_id=f"scn_{s}"))
    runs.append(make_run("recovered", recovered(8, 9), scenario_id="scn_0"))
    runs.append(make_run("dup", solved(0, 7, call_id="other_id"), scenario_id="scn_0"))
    secret = solved(3, 4, tool_output=f"7 (debug: OPENAI_API_KEY={SECRET})")
    secret[2]["tool_calls"][0]["function"]["arguments"] = json.dumps(
        {"expression": "3 + 4", "password": PASSWORD}
    )
    runs.append(make_run("secret", secret, scenario_id="scn_1"))
    runs.append(
        make_run("huge", solved(5, 6, tool_output="11" + "z" * 20_000), scenario_id="scn_2")
    )
    surrogate = solved(6, 6)
    surrogate[3]["content"] = "12 \ud800"
    runs.append(make_run("surrogate", surrogate, scenario_id="scn_3"))
    runs.append(make_run("eval-traffic", solved(1, 1), traffic="evaluation"))
    runs.append(make_run("eval-instance", solved(1, 2), instance_hash="EVALHASH"))
    runs.append(make_run("eval-scenario", solved(1, 3), scenario_id="held_out_1"))
    runs.append(make_run("rejected", solved(1, 4)))
    runs.append(make_run("no-transcript", []))
    orphan = solved(1, 5)
    orphan.insert(2, {"role": "tool", "tool_call_id": "nope", "content": "?"})
    runs.append(make_run("orphan", orphan))
    empty = solved(1, 6)
    empty[-1] = {"role": "assistant", "content": None}
    runs.append(make_run("empty-turn", empty))
    runs.append({"run_id": "garbled", "messages": "not a list"})
    decisions = {r.run_id if not isinstance(r, dict) else r["run_id"]: "promote" for r in runs}
    decisions["rejected"] = "reject"
    return runs, decisions


def _build(settings, tmp_path, runs, decisions=None, now=None):
    return build_dataset(
        runs,
        out_root=tmp_path / "datasets",
        eval_hashes={"EVALHASH"},
        eval_scenario_ids={"held_out_1"},
        config=settings.dataset,
        gates=settings.promotion_gates(),
        manifest_extra={"catalog_hash": "cat123"},
        decisions=decisions,
        now=now,
    )


def test_mixed_runs_give_a_clean_split_valid_dataset(settings, tmp_path):
    runs, decisions = mixed_runs()
    settings.dataset.max_tool_output_chars = 500
    settings.dataset.eval_ratio = 0.34
    version = _build(settings, tmp_path, runs, decisions)
    manifest = version.manifest

    assert version.exclusions == {
        "duplicate": 1,
        "empty_assistant_turn": 1,
        "eval_scenario": 1,
        "evaluation_instance": 1,
        "evaluation_traffic": 1,
        "invalid_record": 1,
        "no_transcript": 1,
        "not_promoted": 1,
        "orphan_tool_message": 1,
    }
    assert version.counts["train"] + version.counts["eval"] == 18 + 5 - 1
    included = set(manifest["run_ids"]["train"]) | set(manifest["run_ids"]["eval"])
    # "dup" and "ok-0-0" say the same thing: exactly one of them is kept.
    assert len(included & {"dup", "ok-0-0"}) == 1
    assert included - {"dup", "ok-0-0"} == {r.run_id for r in runs[:23]} - {"dup", "ok-0-0"}

    # The split is by instance within each scenario: every scenario with three or more
    # instances (round(0.34 × 3) = 1) is trained on and evaluated on, no instance is on both.
    scenario_of = {r.run_id: r.scenario_id for r in runs[:23]}
    train_scenarios = {scenario_of[r] for r in manifest["run_ids"]["train"]}
    eval_scenarios = {scenario_of[r] for r in manifest["run_ids"]["eval"]}
    assert train_scenarios == eval_scenarios == {f"scn_{s}" for s in range(6)}
    assert manifest["split"]["by"] == "instance"
    assert not set(manifest["instance_hashes"]["train"]) & set(manifest["instance_hashes"]["eval"])
    assert manifest["leakage"]["instances_in_both_splits"] == 0
    assert manifest["leakage"]["evaluation_instances_written"] == 0

    for name in ("train.jsonl", "eval.jsonl"):
        report = validate_file(version.path / name, tools_required=True)
        assert report.ok, report.errors
        assert scan_file(version.path / name) == []
        assert (
            manifest["files"][name]["sha256"]
            == hashlib.sha256((version.path / name).read_bytes()).hexdigest()
        )

    # The planted secrets reach no written file, the manifest included.
    for path in version.path.iterdir():
        data = path.read_bytes()
        assert SECRET.encode() not in data and PASSWORD.encode() not in data, path.name
        assert b"PLANTEDsecret" not in data
    assert version.redactions == {"named_secret": 1, "openai_key": 1}
    assert manifest["cleaned"] == {"invalid_unicode": 1, "truncated_tool_output": 1}

    recovered_line = next(
        json.loads(line)
        for name in ("train.jsonl", "eval.jsonl")
        for line in (version.path / name).read_text().splitlines()
        if "Verification failed" in line
    )
    weights = [m["weight"] for m in recovered_line["messages"] if m["role"] == "assistant"]
    assert weights == [0, 0, 1, 1]

    assert manifest["catalog_hash"] == "cat123"
    assert manifest["source_models"] == ["tiny-1"]
    assert manifest["agent_versions"] == ["executor-1.0"]
    assert manifest["gates"] == settings.promotion_gates().model_dump(mode="json")
    commit = manifest["git_commit"]
    assert commit == "unknown" or len(commit) == 40
    assert manifest["tokens"]["method"] == "whitespace_estimate"
    assert manifest["tokens"]["train"] > 0
    assert sum(manifest["counts"]["by_category"]["train"].values()) == version.counts["train"]


def test_the_split_check_reads_the_files_and_fails_on_a_prompt_in_both(settings, tmp_path):
    runs, decisions = mixed_runs()
    settings.dataset.eval_ratio = 0.34
    path = _build(settings, tmp_path, runs, decisions).path

    def disjoint():
        outcomes = check_dataset(path, set(), {"held_out_1"}, min_examples_per_category=1)
        return next(o for o in outcomes if o.name == "splits_disjoint")

    assert disjoint().passed
    # A builder bug cannot vouch for itself: one train example copied into eval is caught.
    planted = (path / "train.jsonl").read_text().splitlines()[0]
    with (path / "eval.jsonl").open("a") as eval_file:
        eval_file.write(planted + "\n")
    outcome = disjoint()
    assert not outcome.passed and len(outcome.metadata["prompts_in_both"]) == 1


def test_same_runs_give_identical_files_and_a_new_version(settings, tmp_path):
    runs, decisions = mixed_runs()
    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    first = _build(settings, tmp_path, runs, decisions, now=now)
    second = _build(settings, tmp_path, list(reversed(runs)), decisions, now=now)
    assert (first.version, second.version) == ("20261127T080000Z", "20261127T080000Z-2")
    for name in ("train.jsonl", "eval.jsonl"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()
    rows = list_versions(tmp_path / "datasets")
    assert [r["version"] for r in rows] == ["20261127T080000Z-2", "20261127T080000Z"]
    assert rows[0]["train"] == second.counts["train"]


def test_runs_played_again_give_identical_files_whatever_their_ids(settings, tmp_path):
    """Self-play gives each run a random id, so playing the same seed twice gives the same
    runs under other ids. The dataset (its order, which training reads, and the category cap's
    choice) must follow from the runs' content: the order once depended on the ids, and two
    loops from one seed trained different candidates (one promoted, one rejected)."""
    settings.dataset.max_examples_per_category = 7
    settings.dataset.eval_ratio = 0.25

    def played(ids: str) -> list:
        # Several distinct runs per instance: ties the order must break by content.
        return [
            make_run(
                hashlib.sha256(f"{ids}-{i}".encode()).hexdigest()[:32],
                solved(i % 4, 1 + i % 5, call_id=f"call_{i % 3}"),
                scenario_id=f"s{i % 4}",
                instance_hash=f"inst-{i % 4}",
            )
            for i in range(24)
        ]

    first = _build(settings, tmp_path / "a", played("first"))
    second = _build(settings, tmp_path / "b", played("second"))
    assert first.exclusions["category_cap"] > 0  # the cap chose among them
    for name in ("train.jsonl", "eval.jsonl"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()


def test_azure_flavour_has_a_bom_and_still_validates(settings, tmp_path):
    settings.dataset.azure_bom = True
    runs, decisions = mixed_runs()
    version = _build(settings, tmp_path, runs, decisions)
    data = (version.path / "train.jsonl").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert validate_file(version.path / "train.jsonl").ok
    assert version.manifest["encoding"] == "utf-8-sig"


def test_too_long_examples_and_category_caps_are_counted(settings, tmp_path):
    settings.dataset.max_example_tokens = 60
    settings.dataset.max_examples_per_category = 5
    runs = [make_run(f"r{i}", solved(i, 1), scenario_id=f"s{i % 3}") for i in range(10)]
    runs.append(make_run("long", solved(1, 1, tool_output="word " * 100)))
    version = _build(settings, tmp_path, runs)
    assert version.exclusions == {"category_cap": 5, "too_long": 1}
    assert version.counts["train"] + version.counts["eval"] == 5


def test_token_counts_use_the_target_tokenizer_when_given(settings, tmp_path):
    from autoretrain.training.base_model import build_tokenizer

    corpus = [json.dumps(solved(i, i)) for i in range(50)]
    tokenizer_dir = tmp_path / "tok"
    build_tokenizer(corpus, vocab_size=300).save_pretrained(tokenizer_dir)
    settings.dataset.tokenizer_dir = tokenizer_dir
    runs = [make_run(f"r{i}", solved(i, 2), scenario_id=f"s{i}") for i in range(4)]
    version = _build(settings, tmp_path, runs)
    tokens = version.manifest["tokens"]
    assert tokens["method"] == f"tokenizer:{tokenizer_dir}"
    assert tokens["template_fallbacks"] == 0
    # Sub-word tokens of a chat-templated example outnumber its whitespace-separated words.
    assert tokens["max_example"] > 60


def test_reference_runs_of_the_real_catalog_exclude_evaluation_instances(settings, tmp_path):
    from autoretrain.runs.schema import Run
    from autoretrain.scenarios import load_catalog

    catalog = load_catalog(REPO / "scenarios")
    per_scenario = 2
    eval_hashes = catalog.evaluation_hashes(per_scenario)
    instances = catalog.demo_instances(per_scenario=2)
    instances += catalog.eval_instances("in_distribution", per_scenario)[:2]

    def as_run(i, inst):
        return Run(
            run_id=f"run-{i}",
            scenario_id=inst.scenario_id,
            instance_hash=inst.instance_hash,
            category=inst.category,
            traffic="demo",
            status="succeeded",
            messages=inst.reference_messages(),
            tools=inst.tools,
        )

    version = build_dataset(
        [as_run(i, inst) for i, inst in enumerate(instances)],
        out_root=tmp_path / "datasets",
        eval_hashes=eval_hashes,
        eval_scenario_ids={s.id for s in catalog.eval_scenarios},
        config=settings.dataset,
        gates=settings.promotion_gates(),
        manifest_extra={"catalog_hash": catalog.hash},
    )
    # Small instance spaces make some demo prompts identical to evaluation ones: the instance
    # hash catches those too, not only the runs drawn from the evaluation seed range.
    colliding = sum(inst.instance_hash in eval_hashes for inst in instances)
    assert colliding >= 2
    assert version.exclusions == {"evaluation_instance": colliding}
    written = set(version.manifest["instance_hashes"]["train"]) | set(
        version.manifest["instance_hashes"]["eval"]
    )
    assert written and not written & eval_hashes
    for name in ("train.jsonl", "eval.jsonl"):
        assert validate_file(version.path / name).ok  # some scenarios allow no tools


def test_a_bad_secret_pattern_is_a_configuration_error(settings, tmp_path):
    settings.dataset.extra_secret_patterns = ["(unclosed"]
    with pytest.raises(ValueError, match="extra_secret_patterns"):
        _build(settings, tmp_path, [make_run("r1")])
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
