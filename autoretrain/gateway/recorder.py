"""The gateway's writer: finished runs into the landing zone, never in the agent's way.

`submit` only appends to a bounded in-memory buffer and returns at once; a writer thread turns
the buffer into part files (`RunArchive.write`: atomic, fsynced) every `flush_interval_s`, or
sooner when a batch is full. A write that fails (disk full, a landing zone that is not a
folder) keeps its runs at the head of the buffer and is retried with backoff; when the buffer is
full, a new run is dropped and counted (`dropped`), with a warning, rather than blocking a
call or growing without bound. `close` writes what is left, within a deadline.

Runs come as plain dicts (built on the event loop cheaply) and are validated against the run
schema here, off the event loop; one that does not validate is counted (`invalid`) and logged,
never written as a line ingest would quarantine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from autoretrain.runs.archive import RunArchive

log = logging.getLogger(__name__)

BATCH_RUNS = 500  # runs per part file at most: a busy gateway makes few, large files
MAX_BACKOFF_S = 5.0


class Recorder:
    def __init__(
        self,
        archive: RunArchive,
        *,
        max_buffered: int = 10000,
        flush_interval_s: float = 1.0,
        batch_runs: int = BATCH_RUNS,
    ):
        self.archive = archive
        self.max_buffered = max_buffered
        self.flush_interval_s = flush_interval_s
        self.batch_runs = batch_runs
        self.recorded = 0  # runs written to part files
        self.dropped = 0  # runs lost: the buffer was full, or still unwritable at close
        self.invalid = 0  # runs the schema refused (a bug in the gateway: logged)
        self.write_failures = 0  # failed write attempts (their runs were retried)
        self.last_error: str | None = None
        self._buffer: deque[Any] = deque()  # run dicts, or Runs back from a failed write
        self._cond = threading.Condition()
        self._closing = False
        self._backoff = 0.0
        self._thread = threading.Thread(target=self._loop, name="gateway-recorder", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one run record; False (counted, logged) when the buffer is full. Never blocks
        on the disk: the lock is held only to append."""
        with self._cond:
            if len(self._buffer) >= self.max_buffered:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "gateway recorder buffer full (%d runs; last write error: %s): "
                        "%d run(s) dropped so far",
                        self.max_buffered,
                        self.last_error,
                        self.dropped,
                    )
                return False
            self._buffer.append(record)
            if len(self._buffer) >= self.batch_runs:
                self._cond.notify()
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "buffered": self.buffered,
            "dropped": self.dropped,
            "invalid": self.invalid,
            "write_failures": self.write_failures,
            "last_error": self.last_error,
        }

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._closing:
                    wait = max(self.flush_interval_s, self._backoff)
                    self._cond.wait_for(
                        lambda: (
                            self._closing
                            or (len(self._buffer) >= self.batch_runs and not self._backoff)
                        ),
                        timeout=wait,
                    )
                if self._closing and not self._buffer:
                    return
                if self._closing and self._backoff:
                    return  # close() decides what is left
            self._write_some()

    def _take(self) -> list[Any]:
        with self._cond:
            n = min(len(self._buffer), self.batch_runs)
            return [self._buffer.popleft() for _ in range(n)]

    def _write_some(self) -> bool:
        """Write one batch. False when the write failed (the batch went back to the head)."""
        from pydantic import ValidationError

        from autoretrain.runs.schema import Run

        batch = self._take()
        if not batch:
            return True
        runs = []
        for record in batch:
            if isinstance(record, Run):  # validated already, back from a failed write
                runs.append(record)
                continue
            try:
                runs.append(Run.model_validate(record))
            except ValidationError as exc:
                self.invalid += 1
                log.error(
                    "gateway run %s does not validate, not written: %s", record.get("run_id"), exc
                )
        try:
            if runs:
                self.archive.write(runs)
        except Exception as exc:  # OSError mostly; anything else must not kill the thread
            self.write_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._backoff = min(max(self._backoff * 2, 0.1), MAX_BACKOFF_S)
            log.warning("gateway recorder cannot write %d run(s): %s; will retry", len(runs), exc)
            with self._cond:
                room = self.max_buffered - len(self._buffer)
                keep = runs[: max(room, 0)]
                self.dropped += len(runs) - len(keep)
                self._buffer.extendleft(reversed(keep))
            return False
        self._backoff = 0.0
        self.recorded += len(runs)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, then write what is left (retrying until the deadline); whatever
        still cannot be written is counted as dropped and logged."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._buffer and time.monotonic() < deadline:
            if not self._write_some():
                time.sleep(min(self._backoff, max(deadline - time.monotonic(), 0)))
        if self._buffer:
            lost = len(self._buffer)
            self.dropped += lost
            self._buffer.clear()
            log.error("gateway recorder closed with %d run(s) unwritten: %s", lost, self.last_error)
