"""Seeded parameter generators: how a scenario's parameters are drawn, and how many values
each can produce (the size of a scenario's instance space)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

GENERATOR_KINDS = ("int", "float", "choice", "table_key", "words")


@dataclass(frozen=True)
class Generator:
    kind: str
    spec: dict[str, Any]

    def draw(self, rng: random.Random, tables: dict[str, list[str]]) -> Any:
        if self.kind == "int":
            lo, hi = self.spec["int"]
            return rng.randint(lo, hi)
        if self.kind == "float":
            lo, hi = self.spec["float"]
            decimals = self.spec.get("decimals", 1)
            value = round(rng.uniform(lo, hi), decimals)
            return int(value) if decimals == 0 else value
        if self.kind == "choice":
            return rng.choice(self.spec["choice"])
        if self.kind == "table_key":
            return rng.choice(tables[self.spec["table_key"]])
        lo, hi = self._count()
        words = self.spec["words"]
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    def _count(self) -> tuple[int, int]:
        count = self.spec.get("count", 1)
        return (count, count) if isinstance(count, int) else (count[0], count[1])

    def size(self, tables: dict[str, list[str]]) -> int:
        """How many distinct values it can produce (an upper bound for words)."""
        if self.kind == "int":
            lo, hi = self.spec["int"]
            return max(hi - lo + 1, 1)
        if self.kind == "float":
            lo, hi = self.spec["float"]
            return max(int((hi - lo) * 10 ** self.spec.get("decimals", 1)) + 1, 1)
        if self.kind == "choice":
            return len({json.dumps(c, sort_keys=True) for c in self.spec["choice"]})
        if self.kind == "table_key":
            return len(tables.get(self.spec["table_key"], []))
        lo, hi = self._count()
        n = len(set(self.spec["words"]))
        return sum(n**k for k in range(lo, hi + 1))
