"""Synthetic paired evaluation results with exactly chosen pass patterns (no models needed)."""

from __future__ import annotations

from typing import Any


def cell(
    tier: str,
    category: str,
    n: int,
    *,
    incumbent_passes: int,
    candidate_passes: int,
    both_pass: int | None = None,
    samples: int = 1,
    latency: tuple[float, float] = (1.0, 1.0),
    cost: tuple[float | None, float | None] = (0.001, 0.001),
) -> list[dict[str, Any]]:
    """`n` instances of one tier/category. The incumbent passes the first `incumbent_passes`
    instances; the candidate passes `both_pass` of those (default: as many as it can) and then
    the next ones, so the discordant counts are exact."""
    if both_pass is None:
        both_pass = min(incumbent_passes, candidate_passes)
    cand_only = candidate_passes - both_pass
    candidate_set = set(range(both_pass)) | set(
        range(incumbent_passes, incumbent_passes + cand_only)
    )
    assert len(candidate_set) == candidate_passes and max(candidate_set, default=0) < max(n, 1)
    rows = []
    for i in range(n):
        for s in range(samples):
            for role, passed, lat, usd in (
                ("incumbent", i < incumbent_passes, latency[0], cost[0]),
                ("candidate", i in candidate_set, latency[1], cost[1]),
            ):
                rows.append(
                    {
                        "instance_hash": f"{tier}-{category}-{i}",
                        "scenario_id": f"{category}-scenario",
                        "category": category,
                        "tier": tier,
                        "sample": s,
                        "role": role,
                        "passed": passed,
                        "score": 1.0 if passed else 0.2,
                        "n_recoveries": 0 if passed else 1,
                        "escalated": not passed and i % 7 == 0,
                        "latency_s": lat * (1 + (i % 5) / 10),
                        "total_tokens": 300 + i % 11,
                        "cost_usd": usd,
                    }
                )
    return rows


def evaluation(
    ind: tuple[int, int] = (100, 160), held: tuple[int, int] = (100, 105), n: int = 200, **kw: Any
) -> list[dict[str, Any]]:
    """Two categories per tier, each with n instances; (incumbent, candidate) passes per cell."""
    rows: list[dict[str, Any]] = []
    for category in ("calc", "convert"):
        rows += cell(
            "in_distribution", category, n, incumbent_passes=ind[0], candidate_passes=ind[1], **kw
        )
        rows += cell(
            "held_out", category, n, incumbent_passes=held[0], candidate_passes=held[1], **kw
        )
    return rows
