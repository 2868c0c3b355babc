"""Would an in-distribution validation slice have seen the regressions that rejected rounds?

Issue #20 item 2 asks to detect per-category regression on a validation slice before the gate,
the held-out tier staying unseen. The cheapest slice is more instances of the train scenarios:
the in-distribution tier is exactly that kind of measurement, taken on the same candidates. This
reads every committed loop result (`bench/results/loop*.json`, `bench/results/trials/**`) and,
for each held-out category whose regression failed the gate (`category_regression`), what the
same category did in-distribution for the same candidate. Planted arms (poisoned, forgetting)
are left out: they are built to regress everywhere. No model is run.

    .venv/bin/python bench/validation_slice.py   # writes bench/results/validation_slice.*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, command_line, table, write_results  # noqa: E402

PLANTED = ("poisoned", "forgetting")
# A category down by at least this much in-distribution is one a slice would flag (the gate's
# own per-category tolerance on the shipped settings is 5 points).
FLAG_POINTS = 5.0


def loop_results(root: Path) -> list[Path]:
    """Every committed loop result with arms: the catalogs' and the trials'."""
    found = sorted(root.glob("loop*.json")) + sorted((root / "trials").rglob("loop*.json"))
    return [p for p in found if isinstance(json.loads(p.read_text()).get("arms"), dict)]


def held_out_regressions(path: Path, root: Path) -> list[dict[str, Any]]:
    rows = []
    for arm, result in json.loads(path.read_text())["arms"].items():
        if arm in PLANTED:
            continue
        categories = result.get("categories") or {}
        for gate in result.get("failed_gates") or []:
            if gate.get("name") != "category_regression":
                continue
            for part in gate["detail"].removeprefix("regressed: ").split(", "):
                name = part.split(" ")[0]
                if not name.startswith("held_out/"):
                    continue
                category = name.removeprefix("held_out/")
                held, inside = categories.get(name), categories.get(f"in_distribution/{category}")
                if not held or not inside:
                    continue
                rows.append(
                    {
                        "result": str(path.relative_to(root)),
                        "arm": arm,
                        "category": category,
                        "held_out_points": round(held["diff_points"], 1),
                        "held_out_instances": held["instances"],
                        "in_distribution_points": round(inside["diff_points"], 1),
                        "in_distribution_instances": inside["instances"],
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for results")
    args = parser.parse_args()
    rows = [row for path in loop_results(RESULTS) for row in held_out_regressions(path, RESULTS)]
    down = [r for r in rows if r["in_distribution_points"] < 0]
    flagged = [r for r in rows if r["in_distribution_points"] <= -FLAG_POINTS]
    result = {
        "question": "do held-out category regressions show in the same category in-distribution?",
        "command": command_line(),
        "results_read": len({r["result"] for r in rows}),
        "held_out_regressions": len(rows),
        "same_category_down_in_distribution": len(down),
        "flagged_in_distribution": len(flagged),
        "flag_points": FLAG_POINTS,
        "rows": rows,
    }
    header = ["result", "arm", "category", "held-out (points, n)", "in-distribution (points, n)"]
    lines = [
        [
            r["result"],
            r["arm"],
            r["category"],
            f"{r['held_out_points']:+} ({r['held_out_instances']})",
            f"{r['in_distribution_points']:+} ({r['in_distribution_instances']})",
        ]
        for r in rows
    ]
    text = f"""# Would an in-distribution validation slice have seen the held-out regressions?

`{result["command"]}` (reads committed results; runs no model).

Every held-out category whose regression failed a round's gate (`category_regression`) in the
committed loop results ({result["results_read"]} result files; planted arms left out), beside
what the same category did in-distribution for the same candidate against the same incumbent.

{table(header, lines)}

**{len(rows)} gate-failing held-out regressions; the same category fell in-distribution in
{len(down)}, by {FLAG_POINTS:g} points or more (the gate's default per-category tolerance) in
{len(flagged)}.** A validation slice of more instances of the train scenarios measures what the
in-distribution tier measures, so at that tolerance it would have flagged {len(flagged)} of the
{len(rows)} ({len(down)} at any drop at all): what rounds forget is the held-out
*phrasings* of behaviours they keep (or improve) on the train phrasings (held-out clarify on
`shipping` −70 points while in-distribution clarify rose; held-out refuse on `kitchen` −46 with
in-distribution refuse unchanged at 100%). Issue #20 item 2's detector therefore has to hold out
phrasings, not instances: for example a train scenario per category kept out of the round's
training and used as its validation slice, rotated between rounds so that no behaviour is
left untrained for good (`curation/split.py` says why whole scenarios are no longer held out of
every dataset). Not built here.
"""
    write_results("validation_slice", result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
