"""Progress for long operations: a tqdm bar on a terminal, a few plain lines otherwise.

tqdm prints nothing when stderr is not a terminal (`disable=None`), which left a three-minute
self-play silent in CI logs and `make demo | tee`. Off a terminal this prints one line per
quarter of the work, so a log shows the operation is alive without drowning the stage lines.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """The slice of tqdm's interface the project uses, as occasional lines."""

    def __init__(
        self, total: int, desc: str, unit: str, file: TextIO | None = None, steps: int = 4
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file or sys.stderr
        self.n = 0
        self.postfix = ""
        self.started = time.perf_counter()
        self.marks = [round(total * (i + 1) / steps) for i in range(steps)]

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if any(before < mark <= self.n for mark in self.marks[:-1]):
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        self._line()

    def _line(self) -> None:
        seconds = time.perf_counter() - self.started
        rate = self.n / seconds if seconds > 0 else 0.0
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"    {self.desc}: {self.n:,}/{self.total:,} {self.unit}s "
            f"({rate:,.0f}/s, {seconds:.0f} s{extra})",
            file=self.file,
            flush=True,
        )


def progress_bar(total: int, desc: str, unit: str = "run", enabled: bool = True) -> Any:
    """A bar (terminal), lines (pipe or log), or None (disabled or nothing to do)."""
    if not enabled or total <= 0:
        return None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0)
    return LineProgress(total, desc, unit)
