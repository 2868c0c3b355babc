"""Trial (issue #20, item 2): does the phrasing slice choose a round's epoch count that keeps
held-out behaviours?

On a `bench/loop.py` work folder (v0, it1's dataset, the catalog), this runs the probe of
`training.phrasing_slice` (`Project.phrasing_slice_epochs`: a training without one train
scenario per category, the withheld scenarios replayed through v0 and every epoch's model), then
trains v0 on the whole dataset for the epoch count it chose, as `Project.train_candidate` would,
and replays both tiers through v0 and that candidate with the regression-gate harness (paired,
the bench's instances). The bench's it1 (the configured epochs) is the row to compare with.

    .venv/bin/python bench/phrasing_slice_trial.py --work bench/work/kitchen-slice \\
        --bench /tmp/trial/kitchen-base/loop-kitchen.json --out bench/results/trials/phrasing_slice/kitchen

Results go to `--out`.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from forgetting_trial import _compare, _markdown, _train, setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/loop.py work folder")
    parser.add_argument("--bench", type=Path, default=None, help="that run's loop JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "phrasing_slice_trial")
    parser.add_argument("--instances-per-scenario", type=int, default=70)
    args = parser.parse_args()

    from autoretrain.project import BASE_VERSION, Project
    from autoretrain.training.bootstrap import DEMOS_FILE
    from autoretrain.training.config import TrainConfig

    settings, catalog, base, dataset, result = setup(
        args.work,
        args.bench or RESULTS / f"{args.work.name}.json",
        "phrasing slice: round 1 from v0 on it1's dataset, epochs chosen by the probe",
    )
    project = Project(settings)
    with project.store(read_only=True) as store:
        v0 = project.registry(store, read_only=True).get(BASE_VERSION)
    config = TrainConfig.from_settings(
        settings.training, mix_in=[str(base / DEMOS_FILE)], merge_adapter=True, torch_threads=1
    )
    t0 = time.perf_counter()
    trial = args.work / "trial" / "phrasing-slice"
    chosen, probe = project.phrasing_slice_epochs(dataset, base, v0, config, trial / "candidate")
    probe["probe_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(probe, indent=1), flush=True)

    t0 = time.perf_counter()
    fields = {"epochs": chosen.epochs}
    model_dir = _train(settings, dataset, base, trial / f"epochs-{chosen.epochs}", fields)
    trained_s = round(time.perf_counter() - t0, 1)
    found = _compare(settings, catalog, base, model_dir, args.instances_per_scenario)
    found.update(settings=fields, training_seconds=trained_s, phrasing_slice=probe)
    result["variants"][f"phrasing_slice ({chosen.epochs} epochs)"] = found
    print(f"chosen {chosen.epochs}: {json.dumps(found['tiers'])} gate={found['gate']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(
        _markdown(
            result,
            title="Phrasing-slice trial",
            what="Round 1 from v0 on it1's dataset, for the epoch count the phrasing-slice "
            "probe chose (it1: the configured epochs)",
        )
        + _probe_markdown(probe)
    )


def _probe_markdown(probe: dict) -> str:
    categories = sorted(probe.get("incumbent", {}))
    lines = [
        "",
        f"Probe: withheld {json.dumps(probe.get('withheld'))}; "
        f"{probe.get('instances_per_scenario')} instances per withheld scenario; "
        f"{probe.get('probe_seconds')} s. Chose {probe.get('epochs')} of "
        f"{probe.get('configured_epochs')} epochs: {probe.get('reason')}.",
        "",
        "| slice pass rate | " + " | ".join(categories) + " |",
        "|---|" + "---|" * len(categories),
        "| v0 | " + " | ".join(f"{probe['incumbent'][c]:.3f}" for c in categories) + " |",
    ]
    for epoch, rates in sorted(probe.get("by_epoch", {}).items()):
        lines.append(
            f"| epoch {epoch} | " + " | ".join(f"{rates.get(c, 0):.3f}" for c in categories) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
