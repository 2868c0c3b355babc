"""Trial (issue #20, item 2): does taking part of a round's step keep what it forgets?

`bench/forgetting_trial.py` leaves each variant's trained candidate in `<work>/trial/<name>`.
This interpolates each named candidate with v0 (autoretrain/training/interpolate.py: v0 +
alpha * (candidate - v0)) at each alpha and replays both tiers through v0 and the interpolated
model with the regression-gate harness (paired, the same instances as the bench).

    .venv/bin/python bench/interpolation_trial.py --work bench/work/planted-shipped \\
        --bench bench/results/trials/planted-shipped/loop.json \\
        --candidate seed_1 --candidate seed_3 --alpha 0.5 --alpha 0.7

Results go to bench/results/interpolation_trial.json and .md, or `--out DIR/NAME`.json and
.md (rewritten after each row, so a stopped run keeps the finished ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from forgetting_trial import _compare, _markdown, setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/loop.py work folder")
    parser.add_argument("--bench", type=Path, required=True, help="that work folder's loop JSON")
    parser.add_argument(
        "--candidate", action="append", required=True, help="a folder name under <work>/trial"
    )
    parser.add_argument("--alpha", type=float, action="append", required=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "interpolation_trial")
    parser.add_argument("--instances-per-scenario", type=int, default=70)
    args = parser.parse_args()

    from autoretrain.training.interpolate import interpolate_weights

    settings, catalog, base, _, result = setup(
        args.work, args.bench, "interpolation: v0 + alpha * (candidate - v0), each against v0"
    )
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
                _markdown(
                    result,
                    "Interpolation trial",
                    "Round-1 candidates trained on it1's dataset (bench/forgetting_trial.py), "
                    "interpolated with v0",
                )
            )


if __name__ == "__main__":
    main()
