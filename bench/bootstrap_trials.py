"""Trials of the embedded base model's bootstrap recipe (bench/results/trials/bootstrap.md).

Builds one `v0` with `bootstrap_base_model` and overrides given as JSON, then prints one JSON line:
the build's steps, seconds and losses, and its greedy pass rates per tier and category.

    .venv/bin/python bench/bootstrap_trials.py OUT_DIR \
        '{"demos": 96, "config": {"epochs": 6, "batch_size": 4, "max_seq_len": 512}}'

Spec keys: `demos` (per train scenario, default 96), `demos_by_category` (category → demonstrations
per scenario of that category, over `demos`), `config` (TrainConfig fields over the shipped
BOOTSTRAP_DEFAULTS), `size` (ModelSize fields), `budget` (seconds, default 600), `per`
(evaluation instances per scenario, default 20), `pace` (a simulated machine: the training loop's
clock advances this many seconds per step instead of reading the wall clock, so a time budget
stops the schedule at the same step on any machine and under any load). `--single-digits` builds
the tokenizer with one digit per token, as every trial row except the `m_g*` ones did (the
default before 2026-11-27); without it numbers are cut into groups of up to three digits, each
one token.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="where the model goes (reused if it exists)")
    p.add_argument("spec", nargs="?", default="{}", help="JSON overrides, see the module doc")
    p.add_argument("--single-digits", action="store_true")
    p.add_argument("--catalog", type=Path, help="a catalog folder (default: the shipped one)")
    args = p.parse_args(argv)
    spec = json.loads(args.spec)

    import autoretrain.training.base_model as base_model
    from autoretrain.project import Project
    from autoretrain.providers.local import LocalChatModel
    from autoretrain.scenarios import load_catalog
    from autoretrain.settings import load_settings
    from autoretrain.training.bootstrap import BOOTSTRAP_DEFAULTS, bootstrap_base_model
    from autoretrain.training.config import TrainConfig

    if "pace" in spec:
        _simulate_pace(float(spec["pace"]))
    if args.single_digits:
        base_model.build_tokenizer = functools.partial(base_model.build_tokenizer, digits="single")
    logging.basicConfig(level=logging.INFO)
    catalog_dir = args.catalog or ROOT / "scenarios"
    catalog = load_catalog(catalog_dir)
    # `demos_by_category`: another number of demonstrations for every scenario of a category.
    by_category = spec.get("demos_by_category", {})
    demos_by_scenario = {
        s.id: int(by_category[s.category])
        for s in catalog.train_scenarios
        if s.category in by_category
    }
    config = TrainConfig(
        **{**BOOTSTRAP_DEFAULTS.to_dict(), **spec.get("config", {}), "progress": False}
    )
    started = time.perf_counter()
    if not (args.out / "config.json").exists():
        bootstrap_base_model(
            catalog,
            args.out,
            demos_per_scenario=spec.get("demos", 96),
            time_budget_s=spec.get("budget", 600),
            size=spec.get("size"),
            config=config,
            demos_by_scenario=demos_by_scenario,
        )
    build_s = time.perf_counter() - started
    metrics = json.loads((args.out / "training_metrics.json").read_text())
    rates = Project(load_settings(scenarios_dir=str(catalog_dir))).pass_rates(
        LocalChatModel(args.out), per_scenario=spec.get("per", 20)
    )
    result = {
        "spec": spec,
        "grouped_digits": not args.single_digits,
        "build_s": round(build_s, 1),
        "steps": metrics["steps"],
        "scheduled_steps": metrics["total_steps"],
        "stopped": metrics["stopped_by"],
        "train_loss": metrics["final_train_loss"],
        "eval_loss": metrics["best_eval_loss"],
        **{
            tier: (round(r["pass_rate"], 3), r["by_category"])
            for tier, r in rates.to_dict().items()
        },
    }
    print(json.dumps(result))
    return result


def _simulate_pace(seconds_per_step: float) -> None:
    """The training loop reads its clock twice a step (its train seconds, then whether a
    checkpoint is due): half a step's pace per reading."""
    import types

    import autoretrain.training.loop as loop

    clock = {"now": 0.0}

    def monotonic() -> float:
        clock["now"] += seconds_per_step / 2
        return clock["now"]

    loop.time = types.SimpleNamespace(monotonic=monotonic)


if __name__ == "__main__":
    main()
