"""Bootstrap the embedded base model (`v0`) from the catalog's reference demonstrations.

Weak by design, and weak for the right reason: it sees only a few demonstrations per train
scenario, but it is trained on them to a plateau (a full cosine schedule, with early stopping on
the loss of a separate set of demonstrations), so a later lift comes from new verified data and
not from training longer. Only train scenarios and demo seeds are used, and any instance whose
prompt hash belongs to an evaluation tier is excluded.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoretrain.settings import TrainingSettings
from autoretrain.training.base_model import ModelSize, build_untrained_model
from autoretrain.training.chat_format import render
from autoretrain.training.config import TrainConfig
from autoretrain.training.lora import train

log = logging.getLogger(__name__)

DEMOS_FILE = "demonstrations.jsonl"  # kept beside the model: later rounds mix them back in
CALIBRATION_FILE = "calibration.json"  # what a calibrated build measured and chose

# Two layers, as in the trial that showed a self-play lift: ~0.66M parameters with the 2.2k
# vocabulary (1k BPE tokens and the 1,200 digit groups).
BOOTSTRAP_SIZE = {"num_hidden_layers": 2}

# A full cosine schedule: 12 epochs of 48 demonstrations per train scenario, one 512-token row
# (~4 conversations) per optimizer step, ~4,400 steps, on two torch threads (at 512 tokens a step
# two threads train x1.5 faster than one on two idle cores): about 100 s. Copying numbers
# from the prompt takes thousands of steps on varied numbers; with fewer steps the model learns
# the format but copies nothing, and self-play has nothing to reinforce. At 48 demonstrations
# the model has learned them by heart (train loss ~0.03) long before the schedule ends: the
# same number of extra steps on them gains nothing (+0.0 points), so what a loop round gains
# comes from the new verified runs. With 96 demonstrations and 6 epochs the base reached about
# the same pass rate but was limited by its steps, not its data: extra steps on the
# demonstrations alone gained as much as a loop round (bench/results/trials/bootstrap.md).
# Two threads are pinned, not one per core: the thread count is part of the floating-point path
# (it alone moved one schedule's build from 27% to 31% in-distribution in the trials), so a
# seed gives the same build whatever the core count.
# On a busy machine the threads wait for each other and training slows; `time_budget_s` caps it.
BOOTSTRAP_DEFAULTS = TrainConfig(
    method="full",
    epochs=12,
    learning_rate=3e-3,
    batch_size=4,
    max_seq_len=512,
    early_stopping_patience=None,
    evals_per_epoch=1,
    warmup_ratio=0.05,
    min_lr_ratio=0.05,
    checkpoint_every_s=1e9,  # a from-scratch build is cheap to redo
    torch_threads=2,
)


# A call without settings builds what `autoretrain bootstrap` builds: one place for those defaults.
_SHIPPED = TrainingSettings()


def demonstration_records(
    catalog: Any,
    per_scenario: int,
    validation_per_scenario: int,
    exclude: set[str],
    by_scenario_count: Mapping[str, int] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Reference transcripts of train scenarios (demo seeds only): (train, validation).
    `by_scenario_count` gives some scenarios another number of train demonstrations than
    `per_scenario` (their validation share stays `validation_per_scenario`)."""
    counts = dict(by_scenario_count or {})
    known = {s.id for s in catalog.train_scenarios}
    unknown = sorted(set(counts) - known)
    if unknown:
        raise ValueError(
            f"demonstration counts name scenarios that are not train scenarios: {unknown}"
        )
    most = max([per_scenario, *counts.values()])
    instances = catalog.demo_instances(most + validation_per_scenario, exclude=exclude)
    by_scenario: dict[str, list[Any]] = defaultdict(list)
    for instance in instances:
        if instance.split != "train":
            raise ValueError(
                f"demo instance of {instance.scenario_id} is not from a train scenario"
            )
        by_scenario[instance.scenario_id].append(instance)
    train_records, validation_records = [], []
    for scenario_id in sorted(by_scenario):
        wanted = counts.get(scenario_id, per_scenario)
        # The first `wanted` train, the next `validation_per_scenario` validation: with no
        # counts given, exactly the demonstrations of `per_scenario` for every scenario.
        for i, instance in enumerate(by_scenario[scenario_id][: wanted + validation_per_scenario]):
            record = {
                "messages": instance.reference_messages(),
                "tools": instance.tools,
                "metadata": {"scenario_id": scenario_id, "seed": instance.seed},
            }
            (train_records if i < wanted else validation_records).append(record)
    return train_records, validation_records


def bootstrap_base_model(
    catalog: Any,
    output_dir: Path,
    demos_per_scenario: int = _SHIPPED.bootstrap_demos_per_scenario,
    seed: int = 0,
    time_budget_s: float | None = _SHIPPED.bootstrap_time_budget_s,
    *,
    validation_per_scenario: int = 2,
    evaluation_per_scenario: int = 70,
    size: dict[str, int] | None = None,
    config: TrainConfig | None = None,
    demos_by_scenario: Mapping[str, int] | None = None,
) -> Path:
    """Build the tokenizer and the tiny Llama, train it on demonstrations, save it to `output_dir`.

    `evaluation_per_scenario` must be at least what evaluation draws per scenario, so that no
    evaluation prompt can be among the demonstrations. `demos_by_scenario` gives some train
    scenarios another number of demonstrations than `demos_per_scenario`. Returns `output_dir`.
    """
    output_dir = Path(output_dir)
    exclude = catalog.evaluation_hashes(evaluation_per_scenario)
    train_records, validation_records = demonstration_records(
        catalog, demos_per_scenario, validation_per_scenario, exclude, demos_by_scenario
    )
    if not train_records:
        raise ValueError(f"catalog {catalog.root} has no train scenario to demonstrate")
    config = config or BOOTSTRAP_DEFAULTS
    config = TrainConfig(**{**config.to_dict(), "seed": seed, "time_budget_s": time_budget_s})
    shape = ModelSize.from_kwargs({**BOOTSTRAP_SIZE, **(size or {})})
    corpus = [render(r["messages"], r["tools"]) for r in train_records]

    with tempfile.TemporaryDirectory(prefix="autoretrain-bootstrap-") as tmp:
        work = Path(tmp)
        untrained = build_untrained_model(work / "untrained", corpus, seed=seed, **asdict(shape))
        dataset = work / "demos"
        dataset.mkdir()
        _write_jsonl(dataset / "train.jsonl", train_records)
        _write_jsonl(dataset / "eval.jsonl", validation_records)
        (dataset / "manifest.json").write_text(
            json.dumps({"source": "catalog reference demonstrations", "catalog_hash": catalog.hash})
        )
        metadata = {
            "bootstrap": {
                "catalog_hash": catalog.hash,
                "catalog_root": str(catalog.root),
                "demos_per_scenario": demos_per_scenario,
                "validation_per_scenario": validation_per_scenario,
                "train_scenarios": sorted({r["metadata"]["scenario_id"] for r in train_records}),
                "n_demonstrations": len(train_records),
                "n_validation": len(validation_records),
                "excluded_evaluation_hashes": len(exclude),
                "model_size": asdict(shape),
                "seed": seed,
            }
        }
        if demos_by_scenario:
            metadata["bootstrap"]["demos_by_scenario"] = dict(sorted(demos_by_scenario.items()))
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        result = train(
            dataset,
            untrained,
            output_dir,
            config,
            extra_metadata=metadata,
            extra_files={DEMOS_FILE: dataset / "train.jsonl"},
        )
    metrics = result.metrics
    if metrics["stopped_by"] == "time_budget":
        log.warning(
            "bootstrap hit its %.0f s budget before its schedule ended: the model is weaker than "
            "its data allows and the build is not reproducible; raise time_budget_s",
            time_budget_s,
        )
    log.info(
        "bootstrap: %d demonstrations, %d parameters, final loss %.4f (validation %.4f), %.1f s",
        len(train_records),
        metrics["total_params"],
        metrics["final_train_loss"],
        metrics["best_eval_loss"] or float("nan"),
        metrics["train_seconds"],
    )
    return output_dir


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )


# --- Calibration: demonstrations sized by what the first build can do -----------------------
# A catalog's categories are not equally hard for the tiny model: on the shipping catalog the
# uniform build passed 100% of declines and clarifying questions and 0-6% of three tool
# categories (quotes, totals, records), where a loop round has almost no verified run to learn
# from. Moving demonstrations from the solved categories to the unsolved ones (x2 there, a
# quarter for the solved) took totals from 2.5% to 23% in-distribution, where a uniform build with
# as many steps left them at 2.5%, and the loop's first round from that base was promoted at +6.2
# points (+2.4 and rejected from the uniform base; bench/results/trials/bootstrap_calibration.md).


@dataclass(frozen=True)
class Calibration:
    """How a calibrated bootstrap resizes demonstrations per category, by the pass rate its
    uniform first build reaches on fresh train instances (`probe`)."""

    low: float = 0.1  # below: `more` times the demonstrations
    high: float = 0.95  # at or above: `fewer` times (at least one)
    more: float = 2.0
    fewer: float = 0.25
    probe_per_scenario: int = 10


def calibrated_counts(
    catalog: Any,
    rates_by_category: Mapping[str, float],
    per_scenario: int,
    calibration: Calibration = Calibration(),
) -> dict[str, int]:
    """Demonstrations per train scenario for the second build: only the scenarios whose
    category is outside [low, high) are named; an empty result means the first build is kept."""
    counts: dict[str, int] = {}
    for scenario in catalog.train_scenarios:
        rate = rates_by_category.get(scenario.category)
        if rate is None:
            continue
        if rate < calibration.low:
            counts[scenario.id] = max(per_scenario + 1, round(per_scenario * calibration.more))
        elif rate >= calibration.high:
            counts[scenario.id] = max(1, round(per_scenario * calibration.fewer))
    return counts


def macro_pass_rate(rates_by_category: Mapping[str, float]) -> float:
    """The mean over categories: every category counts the same, however many scenarios it has."""
    return sum(rates_by_category.values()) / len(rates_by_category) if rates_by_category else 0.0


def bootstrap_calibrated(
    catalog: Any,
    output_dir: Path,
    probe: Callable[[Path, int], dict[str, float]],
    demos_per_scenario: int = _SHIPPED.bootstrap_demos_per_scenario,
    time_budget_s: float | None = _SHIPPED.bootstrap_time_budget_s,
    calibration: Calibration = Calibration(),
    **options: Any,
) -> Path:
    """Two builds within one time budget: the uniform one, then, if some category is outside the
    band, one with `calibrated_counts`; the one with the higher `macro_pass_rate` on the probe
    is saved to `output_dir`, with both measurements in `calibration.json`. `probe(model_dir, n)`
    returns a build's pass rate per category on `n` instances per train scenario that are neither
    demonstrations nor evaluation instances (Project.train_pass_rates)."""
    output_dir = Path(output_dir)
    started = time.monotonic()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autoretrain-calibrate-", dir=output_dir.parent) as tmp:
        first = bootstrap_base_model(
            catalog,
            Path(tmp) / "uniform",
            demos_per_scenario,
            time_budget_s=time_budget_s,
            **options,
        )
        record: dict[str, Any] = {
            "calibration": asdict(calibration),
            "uniform": {
                "demos_per_scenario": demos_per_scenario,
                "probe": probe(first, calibration.probe_per_scenario),
            },
        }
        counts = calibrated_counts(
            catalog, record["uniform"]["probe"], demos_per_scenario, calibration
        )
        chosen, why = first, "every category is within the band"
        if counts:
            left = None if time_budget_s is None else time_budget_s - (time.monotonic() - started)
            if left is not None and left <= 0:
                why = "the uniform build used the whole time budget"
            else:
                second = bootstrap_base_model(
                    catalog,
                    Path(tmp) / "calibrated",
                    demos_per_scenario,
                    time_budget_s=left,
                    demos_by_scenario=counts,
                    **options,
                )
                rates = probe(second, calibration.probe_per_scenario)
                record["calibrated"] = {"demos_by_scenario": counts, "probe": rates}
                better = macro_pass_rate(rates) >= macro_pass_rate(record["uniform"]["probe"])
                chosen = second if better else first
                why = (
                    "the calibrated build passes more per category"
                    if better
                    else "the calibrated build passed less per category than the uniform one"
                )
        record["chosen"] = "calibrated" if chosen.name == "calibrated" else "uniform"
        record["why"] = why
        record["seconds"] = round(time.monotonic() - started, 1)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        shutil.move(str(chosen), output_dir)
    (output_dir / CALIBRATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "bootstrap calibration: kept the %s build (%s); macro pass rate %s",
        record["chosen"],
        why,
        ", ".join(
            f"{name} {macro_pass_rate(record[name]['probe']):.1%}"
            for name in ("uniform", "calibrated")
            if name in record
        ),
    )
    return output_dir
