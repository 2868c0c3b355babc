"""The train/eval split of a dataset: by scenario, never by row.

Each split key (a scenario id) is ranked by a salted SHA-256 of itself, and the first
round(ratio × n) keys go to eval. The rank depends only on the keys, so the same scenarios give
the same split on every machine and every run; unlike a per-key threshold, the eval share is
the configured ratio even when there are only a handful of scenarios. With two or more keys and
a ratio above zero, each side gets at least one key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SALT = "autoretrain-split-v1"


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SALT}:{key}".encode("utf-8", "replace")).hexdigest()


def assign_splits(keys: Iterable[str], eval_ratio: float) -> dict[str, str]:
    """Map each distinct key to "train" or "eval"."""
    if not 0.0 <= eval_ratio < 1.0:
        raise ValueError(
            f"settings.dataset.eval_ratio must be in [0, 1), got {eval_ratio}; "
            "set it in autoretrain.yaml under dataset.eval_ratio"
        )
    ordered = sorted(set(keys), key=lambda k: (_rank(k), k))
    n_eval = round(eval_ratio * len(ordered))
    if eval_ratio > 0 and len(ordered) >= 2:
        n_eval = min(max(n_eval, 1), len(ordered) - 1)
    return {key: ("eval" if i < n_eval else "train") for i, key in enumerate(ordered)}
