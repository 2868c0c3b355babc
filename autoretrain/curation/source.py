"""The promoted runs a build reads, streamed out of the run store.

The records are copied, as the JSON text the store holds, into an unlinked temporary file and
the store is closed before the build starts: the read-only connection (which keeps a writer
process out of the DuckDB file) is held for the copy, not for the whole build, and memory
holds one batch of records at a time, not every promoted run.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

_LENGTH = struct.Struct("<Q")  # each record is framed by its length: JSON text may hold "\n"
_BATCH = 2000
# DuckDB keeps the blocks it read cached up to its memory limit (80% of RAM by default): for
# the copy, a small limit (restored afterwards) keeps the process near its working set.
_COPY_MEMORY_LIMIT = "256MB"


def spool_records(con: Any, run_ids: Sequence[str], spool: IO[bytes]) -> int:
    """Copy the stored records of `run_ids` (a DuckDB connection to the run store) into
    `spool`; returns how many."""
    if not run_ids:
        return 0
    (limit,) = con.execute("SELECT current_setting('memory_limit')").fetchone()
    con.execute(f"SET memory_limit = '{_COPY_MEMORY_LIMIT}'")
    cur = con.cursor()
    try:
        # No ORDER BY: sorting would hold every record at once, and the build's output does
        # not depend on the order of its input.
        cur.execute(
            "SELECT r.record FROM runs r "
            "SEMI JOIN (SELECT unnest(?::VARCHAR[]) AS run_id) AS chosen USING (run_id)",
            [list(run_ids)],
        )
        n = 0
        while rows := cur.fetchmany(_BATCH):
            for (record,) in rows:
                data = record.encode("utf-8") if isinstance(record, str) else bytes(record)
                spool.write(_LENGTH.pack(len(data)))
                spool.write(data)
            n += len(rows)
    finally:
        cur.close()
        con.execute(f"SET memory_limit = '{limit}'")
    spool.flush()
    return n


def spooled_records(spool: IO[bytes]) -> Iterator[bytes]:
    """The records written by `spool_records`, one JSON text at a time."""
    spool.seek(0)
    while header := spool.read(_LENGTH.size):
        (size,) = _LENGTH.unpack(header)
        yield spool.read(size)


@contextmanager
def promoted_records(
    open_store: Callable[[], AbstractContextManager[Any]],
    spool_dir: Path,
    start_day: str | None = None,
    end_day: str | None = None,
) -> Iterator[tuple[int, Iterator[bytes]]]:
    """(how many, the records as JSON text) of every promotable run, days optional. The records
    wait in a temporary file in `spool_dir`; `open_store()` opens the run store read-only, and
    it is closed by the time the caller reads them."""
    from autoretrain.runs.review import promotable_run_ids

    folder = Path(spool_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder, prefix=".records-") as spool:
        with open_store() as store:
            run_ids = promotable_run_ids(store.con, start_day, end_day)
            n = spool_records(store.con, run_ids, spool)
        yield n, spooled_records(spool)
