"""The phrasing slice (training/phrasing_slice.py): which scenarios a probe withholds, what it
trains on without them, the epoch it chooses, and the whole probe through Project.train_candidate
on a real tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from autoretrain.training import phrasing_slice
from autoretrain.training.phrasing_slice import (
    SliceError,
    choose_epochs,
    choose_slice,
    snapshot_models,
    withhold,
)
from autoretrain_tests.training.conftest import write_dataset


def test_slice_takes_one_scenario_from_each_category_that_keeps_two():
    categories = {
        "refuse_a": "refuse", "refuse_b": "refuse", "refuse_c": "refuse",
        "units_a": "units", "units_b": "units",  # two: both stay in training
        "math_a": "math", "math_b": "math", "math_c": "math", "math_d": "math",
    }  # fmt: skip
    chosen = choose_slice(categories, rotation="20260301T000000Z")
    assert set(chosen) == {"refuse", "math"}
    assert categories[chosen["refuse"]] == "refuse" and categories[chosen["math"]] == "math"
    # The same dataset gives the same slice; over many rounds every scenario takes its turn.
    assert choose_slice(dict(reversed(categories.items())), "20260301T000000Z") == chosen
    turns = Counter(choose_slice(categories, f"v{i}")["math"] for i in range(200))
    assert set(turns) == {"math_a", "math_b", "math_c", "math_d"}


def _with_scenarios(folder: Path, owners: dict[str, list[str | None]]) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["scenario_ids"] = owners
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_withhold_drops_the_slice_scenarios_lines_and_demonstrations(tmp_path):
    dataset = write_dataset(tmp_path / "ds", n_train=6, n_eval=3)
    _with_scenarios(
        dataset,
        {"train": ["a", "b", "a", None, "c", "b"], "eval": ["b", "a", "c"]},
    )
    demos = tmp_path / "demos.jsonl"
    demo_lines = [
        json.dumps({"messages": [], "metadata": {"scenario_id": s}}) for s in ("a", "b", "b", "c")
    ]
    demos.write_text("\n".join(demo_lines) + "\n")
    train_lines = (dataset / "train.jsonl").read_text().splitlines(keepends=True)

    probe, mix_in, dropped = withhold(dataset, {"b"}, [demos], tmp_path / "probe")

    kept = (probe / "train.jsonl").read_text().splitlines(keepends=True)
    assert kept == [train_lines[i] for i in (0, 2, 3, 4)]  # the unnamed line stays
    assert len((probe / "eval.jsonl").read_text().splitlines()) == 2
    assert [
        json.loads(line)["metadata"]["scenario_id"]
        for line in Path(mix_in[0]).read_text().splitlines()
    ] == ["a", "c"]
    assert dropped == {"train.jsonl": 2, "eval.jsonl": 1, str(demos): 2}
    assert (dataset / "train.jsonl").read_text().splitlines(keepends=True) == train_lines


def test_withhold_refuses_a_dataset_it_cannot_line_up(tmp_path):
    dataset = write_dataset(tmp_path / "old", n_train=4, n_eval=1)
    with pytest.raises(SliceError, match="no scenario_ids.*rebuild"):
        withhold(dataset, {"a"}, [], tmp_path / "probe")
    _with_scenarios(dataset, {"train": ["a", "b"], "eval": ["a"]})
    with pytest.raises(SliceError, match="has 4 lines but its manifest names the scenario of 2"):
        withhold(dataset, {"a"}, [], tmp_path / "probe2")


def test_choose_epochs_stops_only_where_training_longer_forgets_a_phrasing():
    incumbent = {"refuse": 1.0, "scaling": 0.2}
    # Kitchen's shape: learning goes on (scaling) while a refusal phrasing is forgotten.
    by_epoch = {
        1: {"refuse": 0.98, "scaling": 0.3},
        2: {"refuse": 0.96, "scaling": 0.5},
        3: {"refuse": 0.60, "scaling": 0.6},
    }
    choice = choose_epochs(incumbent, by_epoch, tolerance=0.05)
    assert choice.epochs == 2 and "epoch 3 dropped 0.400" in choice.reason
    # Every epoch below the incumbent by about as much (the probe never rehearses the slice):
    # that does not decide, and the most-trained epoch within the tolerance stays.
    refusals = {"refuse": 1.0}
    level = {1: {"refuse": 0.90}, 2: {"refuse": 0.88}, 3: {"refuse": 0.86}}
    assert choose_epochs(refusals, level, 0.05).epochs == 3
    assert choose_epochs(refusals, {1: {"refuse": 0.9}, 2: {"refuse": 0.9}}, 0.05).epochs == 2
    # A drop of exactly the tolerance more is within it; beyond it is not.
    assert choose_epochs(refusals, {1: {"refuse": 1.0}, 2: {"refuse": 0.95}}, 0.05).epochs == 2
    assert choose_epochs(refusals, {1: {"refuse": 1.0}, 2: {"refuse": 0.9}}, 0.05).epochs == 1
    # A category an epoch never played counts as 0 (it cannot hide a loss).
    assert (
        choose_epochs(
            incumbent, {1: {"refuse": 1.0, "scaling": 0.2}, 2: {"refuse": 1.0}}, 0.05
        ).epochs
        == 1
    )
    assert choice.record()["by_epoch"]["3"] == {"refuse": 0.6, "scaling": 0.6}
    with pytest.raises(ValueError, match="no epoch"):
        choose_epochs(incumbent, {}, 0.05)


def test_a_manifest_names_the_scenario_of_every_line(settings, tmp_path):
    from autoretrain.curation.builder import build_dataset
    from autoretrain_tests.curation.factories import make_run, solved

    by_run = {f"r{i}": f"s{i % 3}" for i in range(9)}
    runs = [make_run(run_id, solved(i + 2, 7), scenario_id=scenario_id)
            for i, (run_id, scenario_id) in enumerate(by_run.items())]  # fmt: skip
    settings.dataset.eval_ratio = 0.34
    version = build_dataset(
        runs,
        out_root=tmp_path,
        eval_hashes=set(),
        eval_scenario_ids=set(),
        config=settings.dataset,
        gates=settings.promotion_gates(),
    )
    manifest = version.manifest
    for split in ("train", "eval"):
        lines = (version.path / f"{split}.jsonl").read_text().splitlines()
        owners = manifest["scenario_ids"][split]
        assert len(owners) == len(lines) == len(manifest["run_ids"][split]) > 0
        assert owners == [by_run[r] for r in manifest["run_ids"][split]]


def test_epoch_snapshots_leave_the_trained_model_unchanged(tmp_path_factory, tmp_path):
    """Saving each epoch's model is a side effect only: the version's weights are the same
    bytes as a run without snapshots."""
    from autoretrain.training.config import TrainConfig
    from autoretrain.training.lora import SNAPSHOTS_DIR, train
    from autoretrain_tests.deploy.model_files import tiny_model

    base = tiny_model(tmp_path_factory)
    dataset = write_dataset(tmp_path / "ds", n_train=8, n_eval=2)
    config = TrainConfig(epochs=2, batch_size=4, max_seq_len=256, early_stopping_patience=None)
    plain = train(dataset, base, tmp_path / "plain", config)
    config.epoch_snapshots = True
    snapped = train(dataset, base, tmp_path / "snapped", config)
    weights = "model.safetensors"
    assert (plain.model_dir / weights).read_bytes() == (snapped.model_dir / weights).read_bytes()
    assert [e for e, _ in snapshot_models(snapped.output_dir / SNAPSHOTS_DIR)] == [1, 2]
    # The last epoch's snapshot is the model as training ended (no best-eval restore here).
    last = snapped.output_dir / SNAPSHOTS_DIR / "epoch-2" / weights
    assert last.read_bytes() == (snapped.model_dir / weights).read_bytes()


def test_train_candidate_chooses_its_epochs_on_the_slice(settings, tmp_path_factory, monkeypatch):
    """The whole probe on a real (untrained) tiny model: withheld scenarios, two epoch
    snapshots and the incumbent replayed on them, the choice recorded with the candidate."""
    from autoretrain.project import Project
    from autoretrain_tests.deploy.model_files import copy_model, tiny_model

    monkeypatch.setattr(phrasing_slice, "SLICE_INSTANCES", 3)
    settings.training.phrasing_slice = True
    project = Project(settings)
    by_category: dict[str, list[str]] = {}
    for scenario in project.catalog.train_scenarios:
        by_category.setdefault(scenario.category, []).append(scenario.id)
    category, ids = next((c, sorted(i)) for c, i in sorted(by_category.items()) if len(i) >= 3)
    incumbent = copy_model(tiny_model(tmp_path_factory), settings.paths.root / "v1")
    with project.store() as store:
        registry = project.registry(store)
        registry.register(base_model="tiny", kind="local", model_dir=incumbent, version_id="v1")
        registry.promote("v1", "primary")
    dataset = write_dataset(settings.paths.datasets / "20260301T000000Z", n_train=9, n_eval=3)
    _with_scenarios(dataset, {"train": [ids[i % 3] for i in range(9)], "eval": ids[:3]})

    result = project.train_candidate(
        dataset, "v2", epochs=2, batch_size=4, max_seq_len=256, early_stopping_patience=None
    )

    probe = result.metrics.record["phrasing_slice"]
    assert list(probe["withheld"]) == [category] and probe["withheld"][category] in ids[:3]
    assert probe["dropped_lines"]["train.jsonl"] == 3
    assert set(probe["by_epoch"]) == {"1", "2"} and probe["configured_epochs"] == 2
    assert set(probe["incumbent"]) == {category}
    assert probe["epochs"] in (1, 2) and probe["reason"]
    assert result.metrics.record["total_steps"] == probe["epochs"] * 3  # 9 examples, batch 4
    with project.store(read_only=True) as store:
        version = project.registry(store, read_only=True).get("v2")
    assert version.training_metrics["phrasing_slice"] == probe
    # The probe's models and runs are gone; only its record stays.
    assert not list(settings.paths.models.rglob("*phrasing-slice*"))


def test_a_round_played_by_the_teams_own_agent_keeps_its_configured_epochs(settings, tmp_path):
    """The slice replays through the built-in workflow, which is not the team's agent: with an
    HTTP agent configured the probe stands aside, says why, and changes nothing."""
    from autoretrain.deploy.registry import ModelVersion
    from autoretrain.project import Project
    from autoretrain.settings import Settings
    from autoretrain.training.config import TrainConfig

    agent = Settings(
        agent={
            "kind": "http",
            "url": "http://127.0.0.1:9/run",
            "gateway_url": "http://127.0.0.1:9/v1",
        }
    ).agent
    project = Project(settings.model_copy(update={"agent": agent}))
    config = TrainConfig(epochs=3)
    work = tmp_path / "models"
    work.mkdir()
    incumbent = ModelVersion(id="v1", base_model="tiny", kind="local", model_dir=str(work / "v1"))

    chosen, record = project.phrasing_slice_epochs(
        work / "dataset", work / "base", incumbent, config, work / "v2"
    )

    assert chosen == config and record["epochs"] is None
    assert "own agent" in record["reason"]
    assert not list(work.iterdir())  # no probe folder: nothing was trained or loaded
