"""Trials of the embedded base model's bootstrap recipe (bench/results/trials/bootstrap.md).

Builds one `v0` with `bootstrap_base_model` and overrides given as JSON, then prints one JSON line:
the build's steps, seconds and losses, and its greedy pass rates per tier and category.

    .venv/bin/python bench/bootstrap_trials.py OUT_DIR \
        '{"demos": 96, "config": {"epochs": 6, "batch_size": 4, "max_seq_len": 512}}'

Spec keys: `demos` (per train scenario, default 12), `config` (TrainConfig fields over the shipped
BOOTSTRAP_DEFAULTS), `size` (ModelSize fields), `budget` (seconds, default 600), `per`
(evaluation instances per scenario, default 20). `--grouped-digits` builds a tokenizer whose
vocabulary holds every group of up to three digits as one token (the `m_g*` trials).
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


def grouped_digit_tokenizer(
    build_tokenizer, corpus: list[str], vocab_size: int = 1024, max_length: int = 1024
):
    """`build_tokenizer` (base_model's), but numbers split into groups of up to three digits,
    every such group (0-999, 00-99, 000-099) in the vocabulary."""
    from tokenizers import Regex, pre_tokenizers

    groups = [str(n) for n in range(1000)] + [f"{n:02d}" for n in range(100)]
    groups += [f"{n:03d}" for n in range(100)]
    return build_tokenizer(
        list(corpus) + [" ".join(groups)] * 2,  # twice: BPE merges need a frequency of 2
        vocab_size + 1200,
        max_length,
        number_splitter=pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="where the model goes (reused if it exists)")
    p.add_argument("spec", nargs="?", default="{}", help="JSON overrides, see the module doc")
    p.add_argument("--grouped-digits", action="store_true")
    args = p.parse_args(argv)
    spec = json.loads(args.spec)

    import autoretrain.training.base_model as base_model
    from autoretrain.providers.local import LocalChatModel
    from autoretrain.scenarios import load_catalog
    from autoretrain.settings import load_settings
    from autoretrain.stages import pass_rates
    from autoretrain.training.bootstrap import BOOTSTRAP_DEFAULTS, bootstrap_base_model
    from autoretrain.training.config import TrainConfig

    if args.grouped_digits:
        base_model.build_tokenizer = functools.partial(
            grouped_digit_tokenizer, base_model.build_tokenizer
        )
    logging.basicConfig(level=logging.INFO)
    catalog = load_catalog(ROOT / "scenarios")
    config = TrainConfig(
        **{**BOOTSTRAP_DEFAULTS.to_dict(), **spec.get("config", {}), "progress": False}
    )
    started = time.perf_counter()
    if not (args.out / "config.json").exists():
        bootstrap_base_model(
            catalog,
            args.out,
            demos_per_scenario=spec.get("demos", 12),
            time_budget_s=spec.get("budget", 600),
            size=spec.get("size"),
            config=config,
        )
    build_s = time.perf_counter() - started
    metrics = json.loads((args.out / "training_metrics.json").read_text())
    rates = pass_rates(load_settings(), LocalChatModel(args.out), per_scenario=spec.get("per", 20))
    result = {
        "spec": spec,
        "grouped_digits": args.grouped_digits,
        "build_s": round(build_s, 1),
        "steps": metrics["steps"],
        "stopped": metrics["stopped_by"],
        "train_loss": metrics["final_train_loss"],
        "eval_loss": metrics["best_eval_loss"],
        **{tier: (round(r["pass_rate"], 3), r["by_category"]) for tier, r in rates.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
