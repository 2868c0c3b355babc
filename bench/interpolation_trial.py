"""Trial (issue #20, item 2): does taking part of a round's step keep what it forgets?

`bench/forgetting_trial.py` leaves each variant's trained candidate in `<work>/trial/<name>`.
This interpolates each named candidate with v0 (autoretrain/training/interpolate.py: v0 +
alpha * (candidate - v0)) at each alpha and replays both tiers through v0 and the interpolated
model with the regression-gate harness (paired, the same instances as the bench).

    .venv/bin/python bench/interpolation_trial.py --work bench/work/planted-shipped \\
        --bench bench/results/trials/planted-shipped/loop.json \\
        --candidate seed_1 --candidate seed_3 --alpha 0.5 --alpha 0.7

Results go to bench/results/trials/interpolation.json and .md, or `--out DIR/NAME`.json and .md
(rewritten after each row, so a stopped run keeps the finished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, machine_facts  # noqa: E402
from forgetting_trial import _compare, _markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/loop.py work folder")
    parser.add_argument("--bench", type=Path, required=True, help="that work folder's loop JSON")
    parser.add_argument(
        "--candidate", action="append", required=True, help="a folder name under <work>/trial"
    )
    parser.add_argument("--alpha", type=float, action="append", required=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "trials" / "interpolation")
    parser.add_argument("--instances-per-scenario", type=int, default=70)
    args = parser.parse_args()

    from autoretrain.project import BASE_VERSION, EMBEDDED
    from autoretrain.scenarios import load_catalog
    from autoretrain.settings import load_settings
    from autoretrain.training.interpolate import interpolate_weights

    home = args.work / "home"
    os.environ["AUTORETRAIN_HOME"] = str(home)
    os.environ["AUTORETRAIN_CONFIG"] = str(args.work / "autoretrain.yaml")
    bench = json.loads(args.bench.read_text())
    overrides = dict(bench["parameters"]["settings"])
    if bench["parameters"]["catalog_dir"]:
        overrides["scenarios_dir"] = bench["parameters"]["catalog_dir"]
    settings = load_settings(home=str(home), **overrides)
    catalog = load_catalog(settings.scenarios_dir)
    it1 = bench["arms"]["it1"]
    base = settings.paths.models / EMBEDDED / BASE_VERSION
    result: dict[str, Any] = {
        "trial": "interpolation: v0 + alpha * (candidate - v0), each against v0",
        "command": command_line(),
        "machine": machine_facts(),
        "catalog": bench["catalog"],
        "dataset": it1["dataset"],
        "it1": {
            key: it1[key] for key in ("training", "tiers", "categories", "gate", "failed_gates")
        },
        "variants": {},
    }
    for name in args.candidate:
        trained = args.work / "trial" / name
        for alpha in args.alpha:
            label = f"{name} alpha {alpha:g}"
            model_dir = interpolate_weights(
                base, trained, args.work / "trial" / f"{name}-alpha-{alpha:g}", alpha
            )
            found = _compare(settings, catalog, base, model_dir, args.instances_per_scenario)
            found.update(settings={"candidate": name, "alpha": alpha})
            result["variants"][label] = found
            print(f"{label}: {json.dumps(found['tiers'])} gate={found['gate']}", flush=True)
            args.out.with_suffix(".json").write_text(
                json.dumps(result, indent=2, default=str) + "\n"
            )
            args.out.with_suffix(".md").write_text(
                _markdown(result)
                .replace("# Forgetting trial", "# Interpolation trial", 1)
                .replace(
                    "Round 1 retrained from v0 on the same dataset (it1's) under other training "
                    "settings",
                    "Round-1 candidates trained on it1's dataset (bench/forgetting_trial.py), "
                    "interpolated with v0",
                    1,
                )
            )


if __name__ == "__main__":
    main()
