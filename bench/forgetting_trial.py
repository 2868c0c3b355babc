"""Trial (issue #20, item 2): which training setting keeps a round from forgetting?

A `bench/loop.py` run leaves its work folder: v0, the round-1 dataset it1 was trained on, and
the catalog. This retrains v0 on that same dataset (the v0 demonstrations mixed back in, as
`Project.train_candidate` does) under each variant's training settings, and replays both tiers
of the evaluation catalog through v0 and each variant with the regression-gate harness (paired,
same instances as the bench). Only the training settings change between variants, so a
difference in the held-out tier is the setting's.

    .venv/bin/python bench/forgetting_trial.py --work bench/work/loop-shipping \\
        --variant lr_3e-4='{"learning_rate": 3e-4}' --variant epochs_1='{"epochs": 1}'

A run made only for this trial can keep its bench JSON out of bench/results (`bench/loop.py
--out DIR`) and name it with `--bench DIR/loop-<catalog>.json`. A variant `{}` retrains with the
settings unchanged: the spread between it and it1 is retraining noise.

Results go to bench/results/forgetting_trial.json and .md, or `--out DIR/NAME`.json and .md
(rewritten after each variant, so a stopped run keeps the finished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, machine_facts  # noqa: E402
from loop import _summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/loop.py work folder")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME='{\"learning_rate\": 3e-4}'",
        help="TrainConfig fields over the settings' training section",
    )
    parser.add_argument(
        "--bench",
        type=Path,
        default=None,
        help="the loop bench's JSON for that work folder (default: "
        "bench/results/<work folder name>.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "forgetting_trial",
        help="results path without suffix (default: bench/results/forgetting_trial)",
    )
    parser.add_argument("--instances-per-scenario", type=int, default=70)
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, fields = spec.partition("=")
        variants[name] = json.loads(fields)

    settings, catalog, base, dataset, result = setup(
        args.work,
        args.bench or RESULTS / f"{args.work.name}.json",
        "forgetting: round 1 retrained from v0 on it1's dataset under other settings",
    )
    out = args.out
    for name, fields in variants.items():
        t0 = time.perf_counter()
        model_dir = _train(settings, dataset, base, args.work / "trial" / name, fields)
        trained_s = round(time.perf_counter() - t0, 1)
        found = _compare(settings, catalog, base, model_dir, args.instances_per_scenario)
        found.update(settings=fields, training_seconds=trained_s)
        result["variants"][name] = found
        print(f"{name}: {json.dumps(found['tiers'])} gate={found['gate']}", flush=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(_markdown(result))


def setup(work: Path, bench_path: Path, trial: str) -> tuple[Any, Any, Path, Path, dict]:
    """A trial on a `bench/loop.py` work folder: (settings, catalog, v0's folder, it1's
    dataset folder, the result record with it1's figures for reference)."""
    from autoretrain.project import BASE_VERSION, EMBEDDED
    from autoretrain.scenarios import load_catalog
    from autoretrain.settings import load_settings

    home = work / "home"
    os.environ["AUTORETRAIN_HOME"] = str(home)
    os.environ["AUTORETRAIN_CONFIG"] = str(work / "autoretrain.yaml")
    bench = json.loads(bench_path.read_text())
    overrides = dict(bench["parameters"]["settings"])
    if bench["parameters"]["catalog_dir"]:
        overrides["scenarios_dir"] = bench["parameters"]["catalog_dir"]
    settings = load_settings(home=str(home), **overrides)
    it1 = bench["arms"]["it1"]
    result: dict[str, Any] = {
        "trial": trial,
        "command": command_line(),
        "machine": machine_facts(),
        "catalog": bench["catalog"],
        "dataset": it1["dataset"],
        "it1": {
            key: it1[key] for key in ("training", "tiers", "categories", "gate", "failed_gates")
        },
        "variants": {},
    }
    return (
        settings,
        load_catalog(settings.scenarios_dir),
        settings.paths.models / EMBEDDED / BASE_VERSION,
        home / "autoretrain" / it1["dataset"]["version"],
        result,
    )


def _train(settings: Any, dataset: Path, base: Path, out: Path, fields: dict[str, Any]) -> Path:
    """v0 fine-tuned as `Project.train_candidate` does (demonstrations mixed back in, merged,
    one thread), with `fields` over the training settings."""
    from autoretrain.training.bootstrap import DEMOS_FILE
    from autoretrain.training.config import TrainConfig
    from autoretrain.training.lora import train

    config = TrainConfig.from_settings(
        settings.training,
        mix_in=[str(base / DEMOS_FILE)],
        merge_adapter=True,
        torch_threads=1,
        **fields,
    )
    trained = train(dataset, base, out, config)
    return Path(trained.merged_dir or trained.model_dir)


def _compare(settings: Any, catalog: Any, base: Path, model_dir: Path, per_scenario: int) -> Any:
    from autoretrain.evaluation.harness import evaluate
    from autoretrain.project import Project
    from autoretrain.providers.factory import chat_model_for

    def load(name: str, path: Path) -> Any:
        model = chat_model_for(settings, model_dir=path)
        model.name = name
        return model

    comparison = evaluate(
        load("v0", base),
        load("variant", model_dir),
        catalog,
        Project(settings).replay_setup(),
        incumbent_name="v0",
        candidate_name="variant",
        progress=False,
        instances_per_scenario=per_scenario,
    )
    return _summary(comparison, "v0")


def _markdown(
    result: dict[str, Any],
    title: str = "Forgetting trial",
    what: str = "Round 1 retrained from v0 on the same dataset (it1's) under other training "
    "settings",
) -> str:
    rows = [("it1 (the bench's round)", result["it1"]["training"], result["it1"])]
    rows += [(name, v["settings"], v) for name, v in result["variants"].items()]
    lines = [
        f"# {title} on the {result['catalog']} catalog",
        "",
        f"`{result['command']}`",
        "",
        f"{what}; each row against v0, paired, both tiers.",
        "",
        "| variant | settings | in-dist diff [95% CI] | held-out diff [95% CI] | gate | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name, settings, found in rows:
        tiers = found["tiers"]

        def cell(tier: str, tiers: dict[str, Any] = tiers) -> str:
            t = tiers[tier]
            low, high = t["diff_ci_points"]
            return f"{t['diff_points']:+.2f} [{low:+.2f}, {high:+.2f}]"

        failed = "; ".join(g["detail"] for g in found.get("failed_gates", [])) if found else ""
        shown = json.dumps(settings) if name != rows[0][0] else "the settings' training section"
        lines.append(
            f"| {name} | {shown} | {cell('in_distribution')} | {cell('held_out')} | "
            f"{found['gate']} | {failed} |"
        )
    keys = sorted(result["it1"]["categories"])
    lines += [
        "",
        "Per category, points against v0 (v0's pass rate in brackets):",
        "",
        "| variant | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, _, found in rows:
        cats = found["categories"]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{cats[k]['diff_points']:+.1f} ({100 * cats[k]['incumbent_pass_rate']:.0f}%)"
                for k in keys
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
