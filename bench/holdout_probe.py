"""Would a scenario held out of a round's training have warned of the held-out tier's losses?
(issue #20, item 2: a validation slice that sees forgetting before the gate does)

`bench/validation_slice.py` found, in the committed loop results, that a round which lost a
held-out category usually kept the same category's train scenarios: a validation slice made of
more instances of what the round trained on would not see the loss. The held-out tier differs
from the train tier by *phrasing* (other scenarios of the same categories), so the slice that
could see it is a phrasing one: in each category, one train scenario the round does not train
on. This probe measures that on a round that did forget.

From the work folder of a `bench/loop.py` run, it takes one round's dataset (the one the
`--full` candidate was trained on) and picks, per category, one train scenario the incumbent
solves (rotated by `--rotation`; `--any-scenario` picks among all). It removes every example of
those scenarios from the round's data (its runs and the catalog's reference solutions; with
`--drop-demos` also the base model's demonstrations that every round mixes back in), trains
again from the same start with the same settings, and replays both tiers through the incumbent
and this candidate (paired, the gate's harness). Per category it reports the held scenarios'
change (what the slice would see before the gate), the rest of the train tier, and the
held-out tier (what the gate sees), and the gate's answer.

    .venv/bin/python bench/holdout_probe.py --work bench/work/measured-shipped \
        --dataset 20261205T040121Z --incumbent it1 --settings '{...the run's settings...}'

writes bench/results/holdout_probe.json and .md (`--out`, `--name`); the `--step` runs of the
same round are under bench/results/trials/step-*.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, machine_facts, table  # noqa: E402

NAME = "holdout_probe"
REFERENCE_PREFIX = "reference-"  # the builder's run ids for catalog reference solutions


def incumbent_pass_rates(store_path: Path, incumbent: str) -> dict[str, float]:
    """Train scenario -> the incumbent's pass rate in its own evaluation replay (the store's
    evaluation traffic of that model, in-distribution tier)."""
    import duckdb

    con = duckdb.connect(str(store_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT scenario_id, avg(verified::INT) FROM runs WHERE traffic = 'evaluation' "
            "AND model = ? AND record->>'$.tags.tier' = 'in_distribution' GROUP BY 1",
            [incumbent],
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def validation_scenarios(
    catalog: Any, rotation: int, rates: dict[str, float] | None, solved: float
) -> dict[str, str]:
    """Category -> the train scenario held out of training. With `rates`, only scenarios the
    incumbent solves (pass rate >= `solved`) are candidates: a slice can only see the loss of
    a behaviour the incumbent has. Without, any of a category's two or more scenarios."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for scenario in catalog.train_scenarios:
        if rates is None or rates.get(scenario.id, 0.0) >= solved:
            by_category[scenario.category].append(scenario.id)
    return {
        category: sorted(ids)[rotation % len(ids)]
        for category, ids in sorted(by_category.items())
        if len(ids) >= (1 if rates is not None else 2)
    }


def run_scenarios(store_path: Path, run_ids: list[str]) -> dict[str, str]:
    import duckdb

    con = duckdb.connect(str(store_path), read_only=True)
    try:
        con.execute("CREATE TEMP TABLE wanted (run_id VARCHAR)")
        con.executemany("INSERT INTO wanted VALUES (?)", [[r] for r in run_ids])
        rows = con.execute(
            "SELECT run_id, scenario_id FROM runs JOIN wanted USING (run_id)"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def scenario_of(run_id: str, stored: dict[str, str]) -> str | None:
    if run_id in stored:
        return stored[run_id]
    if run_id.startswith(REFERENCE_PREFIX):  # reference-<scenario id>-<seed>
        return run_id[len(REFERENCE_PREFIX) :].rsplit("-", 1)[0]
    return None


def filtered_dataset(source: Path, target: Path, store: Path, held: set[str]) -> dict[str, Any]:
    """`source` without the examples of the `held` scenarios, into `target` (lines are in the
    manifest's `run_ids` order, one id per line)."""
    manifest = json.loads((source / "manifest.json").read_text())
    target.mkdir(parents=True)
    dropped: dict[str, int] = defaultdict(int)
    kept: dict[str, int] = {}
    unknown = 0
    for split in ("train", "eval"):
        ids = manifest["run_ids"][split]
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        if len(ids) != len(lines):
            raise SystemExit(f"{source}/{split}.jsonl: {len(lines)} lines, {len(ids)} run ids")
        stored = run_scenarios(store, ids)
        out = []
        for run_id, line in zip(ids, lines, strict=True):
            scenario = scenario_of(run_id, stored)
            unknown += scenario is None
            if scenario in held:
                dropped[f"{split}/{scenario}"] += 1
            else:
                out.append(line)
        kept[split] = len(out)
        (target / f"{split}.jsonl").write_text("".join(f"{x}\n" for x in out), encoding="utf-8")
    manifest["holdout_probe"] = {"held_out_scenarios": sorted(held), "dropped": dict(dropped)}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"kept": kept, "dropped": dict(sorted(dropped.items())), "unknown_scenario": unknown}


def filtered_demos(source: Path, target: Path, held: set[str]) -> dict[str, int]:
    lines = source.read_text(encoding="utf-8").splitlines()
    out = [x for x in lines if json.loads(x)["metadata"]["scenario_id"] not in held]
    target.write_text("".join(f"{x}\n" for x in out), encoding="utf-8")
    return {"kept": len(out), "dropped": len(lines) - len(out)}


def pass_rates(rows: list[dict[str, Any]], validation: set[str]) -> dict[str, Any]:
    """Per tier/category and role: passes and runs, the train tier split into the validation
    scenarios and the rest."""
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        tier = row["tier"]
        if tier == "in_distribution":
            tier = "validation" if row["scenario_id"] in validation else "trained"
        for key in ((tier, row["category"], row["role"]), (tier, "all", row["role"])):
            counts[key][0] += bool(row["passed"])
            counts[key][1] += 1
    out: dict[str, Any] = {}
    for (tier, category, role), (passed, n) in sorted(counts.items()):
        entry = out.setdefault(f"{tier}/{category}", {"instances": n})
        entry[f"{role}_pass_rate"] = round(passed / n, 4)
    for entry in out.values():
        entry["diff_points"] = round(
            100 * (entry.get("candidate_pass_rate", 0) - entry.get("incumbent_pass_rate", 0)), 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/loop.py work folder")
    parser.add_argument("--dataset", help="the round's dataset version (for a holdout)")
    parser.add_argument("--incumbent", required=True, help="the round's incumbent (e.g. it1)")
    parser.add_argument("--full", default="it2", help="the round's own candidate, for the record")
    parser.add_argument("--start", default="v0", help="the weights the round trained from")
    parser.add_argument("--settings", type=json.loads, default={}, help="the run's settings")
    parser.add_argument("--catalog", type=Path, help="default: the settings' scenarios_dir")
    parser.add_argument("--rotation", type=int, default=0, help="which scenario per category")
    parser.add_argument(
        "--any-scenario",
        action="store_true",
        help="choose among all of a category's train scenarios, not only those it solves",
    )
    parser.add_argument("--solved", type=float, default=0.2, help="'solves': this pass rate")
    parser.add_argument(
        "--drop-demos",
        action="store_true",
        help="also drop the held scenarios' base demonstrations from the mix-in",
    )
    parser.add_argument(
        "--step",
        type=float,
        help="instead of a holdout: the round's own candidate (--full) taken this share of the "
        "way from --start (start + step * (full - start), training.step_fraction's rule)",
    )
    parser.add_argument("--instances-per-scenario", type=int, default=70)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for results")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args()
    if args.step is None and not args.dataset:
        parser.error("a holdout needs --dataset (the round's dataset version)")

    from autoretrain.evaluation.compare import compare
    from autoretrain.evaluation.harness import replay
    from autoretrain.project import EMBEDDED, Project
    from autoretrain.providers.factory import chat_model_for
    from autoretrain.scenarios import load_catalog
    from autoretrain.settings import load_settings
    from autoretrain.training.bootstrap import DEMOS_FILE
    from autoretrain.training.config import TrainConfig
    from autoretrain.training.interpolate import interpolate_weights
    from autoretrain.training.lora import train

    work = args.work.resolve()
    home = work / "home"
    os.environ["AUTORETRAIN_HOME"] = str(home)
    os.environ["AUTORETRAIN_CONFIG"] = str(work / "autoretrain.yaml")
    os.environ["DAGSTER_HOME"] = str(home / ".dagster")
    overrides = dict(args.settings)
    if args.catalog:
        overrides["scenarios_dir"] = str(args.catalog.resolve())
    elif (work / "catalog").exists():  # bench/loop.py --strip-weights played this copy
        overrides["scenarios_dir"] = str(work / "catalog")
    overrides["evaluation"] = {
        **overrides.get("evaluation", {}),
        "instances_per_scenario": args.instances_per_scenario,
    }
    settings = load_settings(home=str(home), **overrides)
    catalog = load_catalog(settings.scenarios_dir)
    models = settings.paths.models / EMBEDDED
    if args.step is not None:
        held: dict[str, str] = {}
        name = f"{args.full}-step{args.step:g}"
        probe = fresh(work / "holdout" / name)
        candidate_dir = interpolate_weights(
            models / args.start, models / args.full, probe / "model", args.step
        )
        made: dict[str, Any] = {"step": args.step}
    else:
        rates = None
        if not args.any_scenario:
            rates = incumbent_pass_rates(settings.paths.database, args.incumbent)
        held = validation_scenarios(catalog, args.rotation, rates, args.solved)
        name = f"holdout-r{args.rotation}"
        probe = fresh(work / "holdout" / name)
        source = settings.paths.datasets / args.dataset
        data = filtered_dataset(
            source, probe / "dataset", settings.paths.database, set(held.values())
        )
        dropped_demos = set(held.values()) if args.drop_demos else set()
        demos = filtered_demos(models / "v0" / DEMOS_FILE, probe / DEMOS_FILE, dropped_demos)
        # What train_candidate gives a round of the embedded model (project.py): the base's
        # demonstrations mixed in, a merged model, one torch thread for a tiny model.
        config = TrainConfig.from_settings(
            settings.training, mix_in=[str(probe / DEMOS_FILE)], merge_adapter=True, torch_threads=1
        )
        t0 = time.perf_counter()
        trained = train(probe / "dataset", models / args.start, probe / "model", config)
        train_s = round(time.perf_counter() - t0, 1)
        steps = trained.metrics.record.get("steps")
        print(f"trained {name} in {train_s} s: {steps} steps", flush=True)
        candidate_dir = Path(trained.merged_dir or trained.model_dir)
        made = {
            "dataset": data,
            "demonstrations": demos,
            "training": {**trained.metrics.record, "seconds": train_s},
        }

    def load(version: str, path: Path) -> Any:
        model = chat_model_for(settings, model_dir=path)
        model.name = version
        return model

    setup = Project(settings).replay_setup()
    t0 = time.perf_counter()
    outcome = replay(
        load(args.incumbent, models / args.incumbent),
        load(name, candidate_dir),
        catalog,
        setup,
        progress=False,
        instances_per_scenario=args.instances_per_scenario,
    )
    comparison = compare(
        outcome.rows,
        candidate=name,
        incumbent=args.incumbent,
        lifts=setup.lifts,
        bootstrap_samples=setup.evaluation.bootstrap_samples,
        seed=setup.evaluation.seed,
        error=outcome.error,
    )
    rates = pass_rates(outcome.rows, set(held.values()))
    result = {
        "benchmark": "holdout probe: a phrasing validation slice against the gate",
        "command": command_line(),
        "machine": machine_facts(),
        "parameters": {**vars(args), "work": str(args.work), "out": str(args.out)},
        "candidate": name,
        "validation_scenarios": held,
        **made,
        "evaluation_seconds": round(time.perf_counter() - t0, 1),
        "gate": comparison.decision,
        "failed_gates": [{"name": g.name, "detail": g.detail} for g in comparison.failed_gates],
        "pass_rates": rates,
        "epsilon_points": round(100 * setup.lifts.max_category_regression, 2),
    }
    result["reading"] = reading(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def reading(result: dict[str, Any]) -> dict[str, Any]:
    """Per category: did the validation slice fall past ε where the held-out tier did?"""
    eps = result["epsilon_points"]
    rates = result["pass_rates"]
    out = {}
    for category in sorted({k.split("/", 1)[1] for k in rates} - {"all"}):
        slice_diff = rates.get(f"validation/{category}", {}).get("diff_points")
        held_diff = rates.get(f"held_out/{category}", {}).get("diff_points")
        out[category] = {
            "validation_diff_points": slice_diff,
            "held_out_diff_points": held_diff,
            "validation_flags": slice_diff is not None and slice_diff < -eps,
            "held_out_fails": held_diff is not None and held_diff < -eps,
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    rates = result["pass_rates"]
    rows = [
        [
            key,
            facts["instances"],
            f"{100 * facts.get('incumbent_pass_rate', 0):.1f}%",
            f"{100 * facts.get('candidate_pass_rate', 0):.1f}%",
            f"{facts['diff_points']:+.2f}",
        ]
        for key, facts in rates.items()
    ]
    verdicts = [
        [
            c,
            r["validation_diff_points"],
            r["held_out_diff_points"],
            "yes" if r["validation_flags"] else "no",
            "yes" if r["held_out_fails"] else "no",
        ]
        for c, r in result["reading"].items()
    ]
    p = result["parameters"]
    if "step" in result:
        title = f"`{p['full']}` taken {result['step']:g} of its step from `{p['start']}`"
        made = ""
    else:
        title = f"the round retrained without {len(result['validation_scenarios'])} scenarios"
        training = result["training"]
        made = (
            f"Validation scenarios (one per category, rotation {p['rotation']}): "
            f"{result['validation_scenarios']}\n\n"
            f"Dataset: {result['dataset']}; demonstrations mixed in: {result['demonstrations']}; "
            f"training {training.get('steps')} steps in {training['seconds']} s; "
        )
    return (
        f"# Holdout probe: `{p['incumbent']}` vs {title}\n\n"
        f"`{result['command']}`\n\n"
        + made
        + f"gate: **{result['gate']}** {[g['detail'] for g in result['failed_gates']]}\n\n"
        + table(
            ["tier/category", "instances", p["incumbent"], result["candidate"], "diff, points"],
            rows,
        )
        + f"\n\nPer category (ε = {result['epsilon_points']} points):\n\n"
        + table(
            ["category", "validation diff", "held-out diff", "slice flags", "gate fails"],
            verdicts,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
