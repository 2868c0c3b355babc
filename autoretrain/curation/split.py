"""The train/eval split of a dataset: by instance within each scenario, never by row.

A split key is a run's opening prompt (`curation.examples.split_key`): one instance of a
scenario, or one request of imported traffic, stays on one side. Keys are stratified by their
group (the scenario): each scenario gives round(ratio × its keys) to eval and keeps at
least one for train, so every behaviour in the catalog is trained on. (Splitting whole
scenarios, as the first versions did, held the same few scenarios out of every training set
for good: the shipped catalog never trained `decline_password`, and each round forgot the
held-out password refusal. bench/results/trials/instance_split.md measures the change.)

Within a group, keys are ranked by a salted SHA-256 of themselves: the same keys give the same
split on every machine and every run, and the eval share is the configured ratio even for a
handful of keys. With two or more keys and a ratio above zero, each side gets at least one key.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping

SALT = "autoretrain-split-v1"


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SALT}:{key}".encode("utf-8", "replace")).hexdigest()


def assign_splits(
    keys: Iterable[str], eval_ratio: float, groups: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map each distinct key to "train" or "eval". `groups` maps a key to its stratum (its
    scenario); keys it does not name, or every key without it, share one stratum."""
    if not 0.0 <= eval_ratio < 1.0:
        raise ValueError(
            f"settings.dataset.eval_ratio must be in [0, 1), got {eval_ratio}; "
            "set it in autoretrain.yaml under dataset.eval_ratio"
        )
    groups = groups or {}
    strata: dict[str, list[str]] = defaultdict(list)
    for key in set(keys):
        strata[groups.get(key, "")].append(key)
    eval_keys: set[str] = set()
    for members in strata.values():
        members.sort(key=lambda k: (_rank(k), k))
        n_eval = min(round(eval_ratio * len(members)), len(members) - 1)
        eval_keys.update(members[:n_eval])
    every = [k for members in strata.values() for k in members]
    if eval_ratio > 0 and len(every) >= 2 and not eval_keys:
        # Too few keys in each stratum for the ratio to take one: eval still gets a key, from
        # a stratum that keeps another for train when there is one.
        shared = [m[0] for m in strata.values() if len(m) >= 2]
        eval_keys.add(min(shared or every, key=lambda k: (_rank(k), k)))
    return {key: ("eval" if key in eval_keys else "train") for key in every}
