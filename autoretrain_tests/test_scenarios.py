from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from autoretrain.agents.tools import default_registry
from autoretrain.agents.verifier import VerifierAgent
from autoretrain.scenarios import (
    CATALOG_SCHEMA,
    EXPECTED_KINDS,
    SEED_RANGES,
    CatalogError,
    load_catalog,
    prompt_hash,
    render_text,
    render_value,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "scenarios"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(SHIPPED)


# --- the shipped catalog ------------------------------------------------------------------------


def test_shipped_catalog_shape(catalog):
    assert len(catalog.train_scenarios) >= 24
    assert len(catalog.eval_scenarios) >= 8
    assert len(catalog.scenarios) >= 30
    assert {
        "arithmetic",
        "conversion",
        "lookup",
        "multi_step",
        "text",
        "decline",
        "clarify",
    } <= set(catalog.categories())
    # Every category is represented in both tiers.
    assert {s.category for s in catalog.eval_scenarios} == {
        s.category for s in catalog.train_scenarios
    }
    multi = [s for s in catalog.scenarios if s.category == "multi_step"]
    assert all(len(s.reference_calls) >= 2 for s in multi)
    assert all(not s.tools for s in catalog.scenarios if s.category == "text")
    assert len(catalog.hash) == 64


def test_every_reference_solution_passes_its_verifier_through_real_tools(catalog):
    """Each reference, replayed as a model would (JSON-string arguments through
    ToolRegistry.execute), reproduces the instance's tool results and passes its verifier."""
    registry = catalog.registry
    verifier = VerifierAgent()
    checked = 0
    for scenario in catalog.scenarios:
        ranges = ("demo", "selfplay", "eval") if scenario.split == "train" else ("eval",)
        for name in ranges:
            for offset in range(4):
                instance = catalog.instance(scenario.id, SEED_RANGES[name][0] + offset * 7919)
                messages = instance.reference_messages()
                assert messages[0] == {"role": "system", "content": instance.system_prompt}
                assert messages[-1] == {"role": "assistant", "content": instance.reference_answer}
                calls = [m for m in messages if m.get("tool_calls")]
                results = [m for m in messages if m["role"] == "tool"]
                assert len(calls) == len(results) == len(scenario.reference_calls)
                for call_msg, result_msg in zip(calls, results, strict=True):
                    (call,) = call_msg["tool_calls"]
                    assert call["function"]["name"] in scenario.tools
                    assert result_msg["tool_call_id"] == call["id"]
                    executed = registry.execute(
                        call["function"]["name"], call["function"]["arguments"]
                    )
                    assert executed.ok, executed.error
                    assert executed.content == result_msg["content"]
                verdict = verifier.verify(instance, instance.reference_answer)
                assert verdict.passed, (scenario.id, instance.seed, verdict.feedback)
                assert verdict.score == 1.0
                checked += 1
    assert checked >= 4 * (3 * len(catalog.train_scenarios) + len(catalog.eval_scenarios))


def test_wrong_answers_fail_every_shipped_scenario(catalog):
    verifier = VerifierAgent()
    for scenario in catalog.scenarios:
        instance = catalog.instance(scenario.id, 11)
        for wrong in ("", None, "banana 123456789 qq"):
            verdict = verifier.verify(instance, wrong)
            assert not verdict.passed, (scenario.id, wrong)
            assert verdict.feedback


def test_instances_are_deterministic_and_hashed(catalog):
    for scenario in catalog.scenarios:
        a = catalog.instance(scenario.id, 123)
        b = catalog.instance(scenario.id, 123)
        assert a == b
        assert a.instance_hash == prompt_hash(a.system_prompt, a.user_prompt)
        assert a.tools == catalog.registry.specs(list(scenario.tools))
    # Different seeds recombine pieces into different prompts.
    prompts = {catalog.instance("arith_multiply", seed).user_prompt for seed in range(50)}
    assert len(prompts) == 50


def test_seed_ranges_are_disjoint_and_ordered():
    spans = sorted(SEED_RANGES.values())
    for (start, stop), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert start < stop <= next_start


def test_evaluation_tiers(catalog):
    in_dist = catalog.eval_instances("in_distribution", 20)
    held_out = catalog.eval_instances("held_out", 20)
    train_ids = {s.id for s in catalog.train_scenarios}
    assert {i.scenario_id for i in in_dist} == train_ids
    assert {i.scenario_id for i in held_out} == {s.id for s in catalog.eval_scenarios}
    lo, hi = SEED_RANGES["eval"]
    assert all(lo <= i.seed < hi for i in in_dist + held_out)
    # Held-out ids and templates never appear among train scenarios.
    train_templates = {s.prompt.lower() for s in catalog.train_scenarios}
    assert not {s.id for s in catalog.eval_scenarios} & train_ids
    assert not {s.prompt.lower() for s in catalog.eval_scenarios} & train_templates
    # Prompts are distinct within a tier, and repeatable.
    assert len({i.instance_hash for i in in_dist}) == len(in_dist)
    assert catalog.eval_instances("in_distribution", 20) == in_dist
    hashes = catalog.evaluation_hashes(20)
    assert hashes == {i.instance_hash for i in in_dist + held_out}
    with pytest.raises(ValueError, match="tier"):
        catalog.eval_instances("sideways", 3)  # type: ignore[arg-type]


def test_small_scenarios_keep_most_of_their_space_for_training(catalog):
    size = catalog.space_size("lookup_capital")
    taken = [
        i
        for i in catalog.eval_instances("in_distribution", 70)
        if i.scenario_id == "lookup_capital"
    ]
    assert 0 < len(taken) <= size // 4


def test_demo_and_selfplay_draw_from_their_seed_ranges_and_avoid_evaluation(catalog):
    evaluation = catalog.evaluation_hashes(70)
    demos = catalog.demo_instances(5, exclude=evaluation)
    assert {d.scenario_id for d in demos} == {s.id for s in catalog.train_scenarios}
    assert all(SEED_RANGES["demo"][0] <= d.seed < SEED_RANGES["demo"][1] for d in demos)
    assert not {d.instance_hash for d in demos} & evaluation
    plays = catalog.selfplay_instances(400, seed=3, exclude=evaluation)
    assert len(plays) == 400
    assert all(SEED_RANGES["selfplay"][0] <= p.seed < SEED_RANGES["selfplay"][1] for p in plays)
    assert all(p.split == "train" for p in plays)
    assert not {p.instance_hash for p in plays} & evaluation
    assert catalog.selfplay_instances(400, seed=3, exclude=evaluation) == plays


def test_selfplay_weights(catalog):
    only_text = catalog.selfplay_instances(
        60, seed=0, weights={c: 0.0 for c in catalog.categories() if c != "text"}
    )
    assert {i.category for i in only_text} == {"text"}
    one = catalog.selfplay_instances(20, seed=0, weights={"arith_add": 1000.0, "text": 0.0})
    assert sum(i.scenario_id == "arith_add" for i in one) >= 15
    with pytest.raises(ValueError, match="unknown"):
        catalog.selfplay_instances(5, seed=0, weights={"astrology": 1.0})


def test_a_catalog_weighs_its_own_scenarios_for_selfplay(tmp_path):
    # File defaults and a scenario's own field; the settings' weights still win over both.
    text = GOOD.replace("  split: train\n", "  split: train\n  selfplay_weight: 0\n", 1).replace(
        "  - id: boxes\n", "  - id: boxes\n    selfplay_weight: 2.5\n", 1
    )
    catalog = load_catalog(write_catalog(tmp_path / "cat", text))
    assert {s.id: s.selfplay_weight for s in catalog.train_scenarios} == {
        "fruit_color": 0.0,
        "boxes": 2.5,
        "as_json": 0.0,
    }
    assert {i.scenario_id for i in catalog.selfplay_instances(40, seed=0)} == {"boxes"}
    both = catalog.selfplay_instances(400, seed=0, weights={"lookup": 2.5})
    assert {i.scenario_id for i in both} == {"boxes", "fruit_color"}
    assert 120 < sum(i.scenario_id == "boxes" for i in both) < 280
    message = broken(
        tmp_path, "    category: lookup\n", "    category: lookup\n    selfplay_weight: -1\n"
    )
    assert "selfplay_weight" in message


def test_docs_schema_matches_the_loader():
    documented = json.loads((REPO / "docs" / "scenario.schema.json").read_text())
    assert documented == CATALOG_SCHEMA
    assert documented["$defs"]["expected"]["properties"]["kind"]["enum"] == list(EXPECTED_KINDS)


# --- the template mini-language -----------------------------------------------------------------


def test_templates_substitute_filter_and_keep_types():
    env = {"a": 12, "p": "red fish blue", "u": {"from": "km"}, "result_0": 3.5}
    assert render_text("{a} + {result_0} {u.from|upper}", env) == "12 + 3.5 KM"
    assert (
        render_text("{p|reverse_words}/{p|word_count}/{p|initials}", env) == "blue fish red/3/RFB"
    )
    assert render_text("{{a}} is {a}", env) == "{a} is 12"
    assert render_value({"value": "{result_0}", "n": "{p|word_count}", "s": "x{a}"}, env) == {
        "value": 3.5,
        "n": 3,
        "s": "x12",
    }
    # Anything that is not a placeholder is left alone (e.g. regex quantifiers).
    assert render_text(r"\d{2,3} {a}", env) == r"\d{2,3} 12"


# --- catalogs written by someone else, and broken ones ------------------------------------------

GOOD = """
version: 1
defaults:
  system_prompt: Be brief.
  split: train
scenarios:
  - id: fruit_color
    category: lookup
    tools: [lookup_table]
    prompt: What color is a {fruit}?
    params:
      fruit: {table_key: colors}
    reference:
      calls:
        - name: lookup_table
          arguments: {table: colors, key: "{fruit}"}
      answer: "{result_0}"
    expected: {kind: exact, value: "{result_0}", ignore_case: true}
  - id: boxes
    category: packing
    tools: [calculator]
    prompt: I have {n} boxes of {k} cans. How many cans?
    params:
      n: {int: [2, 50]}
      k: {choice: [6, 12, 24]}
    reference:
      calls:
        - name: calculator
          arguments: {expression: "{n} * {k}"}
      answer: "{result_0} cans"
    expected: {kind: contains, all: ["{result_0}"]}
  - id: as_json
    category: formatting
    prompt: Give {name} as JSON with a field name.
    params:
      name: {words: [ada, bob, cy], count: 1}
    reference:
      answer: '{{"name": "{name}"}}'
    expected:
      kind: json_schema
      schema:
        type: object
        required: [name]
        properties: {name: {const: "{name}"}}
  - id: boxes_eval
    category: packing
    split: eval
    tools: [calculator]
    prompt: How many cans are in {n} crates holding {k} each?
    params:
      n: {int: [2, 50]}
      k: {choice: [6, 12, 24]}
    reference:
      calls:
        - name: calculator
          arguments: {expression: "{n} * {k}"}
      answer: "{result_0}"
    expected: {kind: numeric, value: "{result_0}", tolerance: 0.5}
"""


def write_catalog(root: Path, text: str, name: str = "mine.yaml") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(textwrap.dedent(text))
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / "colors.csv").write_text("key,value\nbanana,yellow\nlime,green\nplum,purple\n")
    return root


def test_a_catalog_written_by_someone_else_loads_and_verifies(tmp_path):
    catalog = load_catalog(write_catalog(tmp_path / "cat", GOOD))
    assert sorted(catalog.categories()) == ["formatting", "lookup", "packing"]
    assert [s.id for s in catalog.eval_scenarios] == ["boxes_eval"]
    verifier = VerifierAgent()
    for scenario in catalog.scenarios:
        for seed in range(5):
            instance = catalog.instance(scenario.id, seed)
            assert verifier.verify(instance, instance.reference_answer).passed
    fruit = catalog.instance("fruit_color", 0)
    assert fruit.reference_results[0] in {"yellow", "green", "purple"}
    spec = fruit.tools[0]["function"]
    assert spec["parameters"]["properties"]["table"]["enum"] == ["colors"]
    assert catalog.get("as_json").budgets.max_turns >= 2
    # The content hash covers the data files too.
    before = catalog.hash
    (tmp_path / "cat" / "data" / "colors.csv").write_text("key,value\nbanana,yellow\n")
    assert load_catalog(tmp_path / "cat").hash != before


def broken(tmp_path: Path, old: str, new: str) -> str:
    assert old in GOOD
    write_catalog(tmp_path / "bad", GOOD.replace(old, new, 1))
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "bad")
    return str(info.value)


def test_bad_yaml_names_the_file_and_line(tmp_path):
    message = broken(tmp_path, "    category: lookup\n", "    category: [lookup\n")
    assert "mine.yaml:" in message and "not valid YAML" in message


def test_unknown_verifier_kind(tmp_path):
    message = broken(tmp_path, "{kind: exact,", "{kind: fuzzy,")
    assert "mine.yaml" in message and "'fruit_color'" in message
    assert "field 'expected.kind'" in message and "unknown verifier kind 'fuzzy'" in message


def test_missing_field(tmp_path):
    message = broken(tmp_path, "    prompt: What color is a {fruit}?\n", "")
    assert "scenario 'fruit_color'" in message and "field 'prompt'" in message
    assert "missing required field" in message


def test_missing_field_that_defaults_could_give(tmp_path):
    message = broken(tmp_path, "  system_prompt: Be brief.\n", "")
    assert "field 'system_prompt'" in message and "defaults" in message


def test_unknown_field(tmp_path):
    message = broken(
        tmp_path, "    category: lookup\n", "    category: lookup\n    seed_range: [0, 9]\n"
    )
    assert "field 'seed_range'" in message and "unknown field" in message


def test_duplicate_id_across_files(tmp_path):
    root = write_catalog(tmp_path / "dup", GOOD)
    (root / "other.yaml").write_text(GOOD.replace("id: boxes_eval", "id: boxes_eval2"))
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    assert "other.yaml: scenario 'fruit_color': field 'id': duplicate id" in str(info.value)


def test_eval_scenario_sharing_a_train_template(tmp_path):
    message = broken(
        tmp_path,
        "How many cans are in {n} crates holding {k} each?",
        "I have {n} boxes of {k}  cans. How many cans",
    )
    assert "scenario 'boxes_eval'" in message and "field 'prompt'" in message
    assert "'boxes'" in message
    renamed = broken(
        tmp_path,
        "    prompt: How many cans are in {n} crates holding {k} each?\n    params:\n",
        "    prompt: I have {m} boxes of {j} cans. How many cans?\n    params:\n"
        "      m: {int: [2, 50]}\n      j: {choice: [6]}\n",
    )
    assert "scenario 'boxes_eval'" in renamed and "held-out templates must be new" in renamed


def test_unknown_placeholder_tool_table_and_generator(tmp_path):
    assert "unknown name {fruits}" in broken(tmp_path, "a {fruit}?", "a {fruits}?")
    assert "field 'tools[0]'" in broken(tmp_path, "tools: [calculator]", "tools: [abacus]")
    assert "unknown table 'colours'" in broken(
        tmp_path, "{table_key: colors}", "{table_key: colours}"
    )
    message = broken(tmp_path, "n: {int: [2, 50]}", "n: {range: [2, 50]}")
    assert "field 'params.n'" in message and "not a parameter generator" in message
    message = broken(tmp_path, '{expression: "{n} * {k}"}', '{expression: "{result_1} * {k}"}')
    assert "reference.calls[0].arguments" in message


def test_reference_that_fails_its_own_verifier(tmp_path):
    message = broken(tmp_path, 'answer: "{result_0} cans"', 'answer: "some cans"')
    assert "scenario 'boxes'" in message and "field 'reference.answer'" in message
    assert "fails its own expected outcome" in message


def test_reference_call_that_errors(tmp_path):
    message = broken(
        tmp_path, '{table: colors, key: "{fruit}"}', '{table: colors, key: "kiwi{fruit}"}'
    )
    assert "field 'reference.calls[0]'" in message and "no key" in message


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace("{kind: exact,", "{kind: fuzzy,").replace(
        "tools: [calculator]", "tools: [x]", 1
    )
    write_catalog(tmp_path / "many", text)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "many")
    assert len(info.value.issues) >= 2


def test_missing_catalog_and_bad_table(tmp_path):
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no \\*.yaml"):
        load_catalog(tmp_path / "empty")
    root = write_catalog(tmp_path / "t", GOOD)
    (root / "data" / "colors.csv").write_text("fruit,colour\nbanana,yellow\n")
    with pytest.raises(CatalogError, match="colors.csv.*key,value"):
        load_catalog(root)


def test_registry_tables_come_from_the_catalog_data_folder():
    registry = default_registry(SHIPPED / "data")
    assert {"capitals", "prices", "elements", "populations"} <= set(registry.tables.rows)
