"""Where a comparison is kept and how it is shown.

Each comparison gets an id, a row in the DuckDB table `evaluations` (the decision plus the whole
comparison as JSON) and a folder `<reports>/<id>/` with `comparison.json`, `report.md` and
`pass_rate.png` (per-category pass rate, incumbent vs candidate, with bootstrap intervals).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoretrain.evaluation.compare import ALL, Comparison
from autoretrain.runs.archive import write_atomically

EVALUATIONS_DDL = """
CREATE TABLE IF NOT EXISTS evaluations (
    id VARCHAR PRIMARY KEY,
    candidate VARCHAR NOT NULL,
    incumbent VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    decision VARCHAR NOT NULL,
    summary JSON NOT NULL
)
"""
REPORT_FILES = ("comparison.json", "report.md", "pass_rate.png")


def new_evaluation_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"eval-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def save_comparison(
    con: Any,
    comparison: Comparison,
    reports: Path,
    *,
    with_report: bool = True,
) -> str:
    """Store the comparison (table `evaluations` and its folder under `reports`, the settings'
    `paths.reports`); returns its id.

    Files are written before the row, so a row always has its folder; the id is set on the
    comparison in place."""
    evaluation_id = comparison.evaluation_id or new_evaluation_id()
    comparison.evaluation_id = evaluation_id
    folder = report_dir(reports, evaluation_id)
    write_atomically(folder / "comparison.json", comparison.to_json().encode("utf-8"))
    if with_report:
        write_report(comparison, folder)
    con.execute(EVALUATIONS_DDL)
    con.execute(
        "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
        [
            evaluation_id,
            comparison.candidate,
            comparison.incumbent,
            datetime.fromisoformat(comparison.created_at),
            comparison.decision,
            comparison.to_json(),
        ],
    )
    return evaluation_id


def load_comparison(con: Any, evaluation_id: str | None = None) -> Comparison | None:
    """The given comparison, or the most recent one; None when there is none."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'evaluations'"
    ).fetchone()[0]
    if not exists:
        return None
    if evaluation_id:
        row = con.execute(
            "SELECT summary FROM evaluations WHERE id = ?", [evaluation_id]
        ).fetchone()
    else:
        row = con.execute(
            "SELECT summary FROM evaluations ORDER BY created_at DESC, id DESC LIMIT 1"
        ).fetchone()
    return Comparison.from_dict(json.loads(row[0])) if row else None


def report_dir(reports: Path, evaluation_id: str) -> Path:
    """A comparison's folder under the reports root."""
    return reports / evaluation_id


def write_report(comparison: Comparison, folder: Path) -> tuple[Path, Path | None]:
    """Write `report.md` and, when there is anything to plot, `pass_rate.png`."""
    chart = folder / "pass_rate.png"
    has_chart = bool(comparison.paired)
    if has_chart:
        write_atomically(chart, render_chart(comparison))
    markdown = folder / "report.md"
    text = render_markdown(comparison, chart_name=chart.name if has_chart else None)
    write_atomically(markdown, text.encode("utf-8"))
    return markdown, chart if has_chart else None


# ---------------------------------------------------------------- markdown


def gates_markdown(gates: list[Any]) -> str:
    """The gates as a markdown table (the report's, the regression gate's and canary
    analysis's metadata in the Dagster UI)."""
    lines = ["| gate | result | value | threshold | detail |", "|---|---|---|---|---|"]
    for g in gates:
        result = {True: "pass", False: "**FAIL**", None: "skipped"}[g.passed]
        lines.append(
            f"| {g.name} | {result} | {_num(g.value)} | {_num(g.threshold)} | {_cell(g.detail)} |"
        )
    return "\n".join(lines)


def render_markdown(comparison: Comparison, chart_name: str | None = None) -> str:
    c = comparison
    lines = [
        f"# Evaluation {c.evaluation_id or '(unsaved)'}: {c.decision.upper()}",
        "",
        f"Candidate `{c.candidate}` vs incumbent `{c.incumbent}`, {c.created_at}.",
        "",
        "## Gates",
        "",
        gates_markdown(c.reasons),
    ]
    whole = [p for p in c.paired if p["category"] == ALL]
    if whole:
        lines += ["", "## Paired pass-rate differences", ""]
        lines += _paired_table(whole)
        cells = [p for p in c.paired if p["category"] != ALL]
        lines += ["", "### Per category", ""]
        lines += _paired_table(cells)
    if c.tiers:
        lines += ["", "## Per model", ""]
        lines += [
            "| tier | model | runs | instances | pass rate | score | recoveries/run | "
            "escalation | p50 s | p95 s | tokens/run | cost/run |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in c.tiers:
            cost = "n/a" if t["cost_per_run_usd"] is None else f"${t['cost_per_run_usd']:.6f}"
            lines.append(
                f"| {t['tier']} | {t['role']} | {t['runs']} | {t['instances']} | "
                f"{t['pass_rate']:.3f} | {t['mean_score']:.3f} | {t['recoveries_per_run']:.2f} | "
                f"{t['escalation_rate']:.3f} | {t['latency_p50_s']:.3f} | "
                f"{t['latency_p95_s']:.3f} | {t['tokens_per_run']:.1f} | {cost} |"
            )
    if c.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in c.notes]
    if chart_name:
        lines += ["", f"![pass rate per category]({chart_name})"]
    return "\n".join(lines) + "\n"


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| tier | category | instances | incumbent | candidate | diff | CI | p (mid) | p (exact) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        lo, hi = p["pass_rate_diff_ci"]
        out.append(
            f"| {p['tier']} | {p['category']} | {p['instances']} | "
            f"{p['incumbent_pass_rate']:.3f} | {p['candidate_pass_rate']:.3f} | "
            f"{p['pass_rate_diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | "
            f"{p['p_value_mid']:.3g} | {p['p_value_exact']:.3g} |"
        )
    return out


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- chart


def render_chart(comparison: Comparison, dpi: int = 100) -> bytes:
    """PNG bytes: pass rate per tier/category for both models, with bootstrap intervals
    (a lower `dpi` gives the small copy the Dagster UI shows inline)."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    cells = [p for p in comparison.paired if p["category"] != ALL] or comparison.paired
    labels = [f"{p['tier']}\n{p['category']}" for p in cells]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cells) + 2), 4.5), dpi=dpi)
    try:
        for offset, role, color in (
            (-width / 2, "incumbent", "#8a8a8a"),
            (width / 2, "candidate", "#2f6db5"),
        ):
            rates = [p[f"{role}_pass_rate"] for p in cells]
            lows = [
                max(0.0, r - p[f"{role}_pass_rate_ci"][0])
                for r, p in zip(rates, cells, strict=True)
            ]
            highs = [
                max(0.0, p[f"{role}_pass_rate_ci"][1] - r)
                for r, p in zip(rates, cells, strict=True)
            ]
            xs = [i + offset for i in range(len(cells))]
            ax.bar(xs, rates, width, label=role, color=color)
            ax.errorbar(xs, rates, yerr=[lows, highs], fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_xticks(range(len(cells)), labels, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("verification pass rate")
        confidence = cells[0]["confidence"] if cells else 0.95
        ax.set_title(
            f"{comparison.candidate} vs {comparison.incumbent}: {comparison.decision} "
            f"({confidence:.0%} cluster-bootstrap intervals)",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
