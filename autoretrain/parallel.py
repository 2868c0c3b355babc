"""Ordered fan-out of pure-Python work to worker processes, for curation's per-run checks.

Curation's slow part is Python per run (parse, gate, convert, scrub, count): independent from
run to run, so on N cores it goes ~N times as fast in N processes. `ordered_map` sends chunks
of a stream to workers and yields their results in the stream's order, with a few chunks in
flight, so memory stays bounded however long the stream and the output does not depend on how
many workers there were.

Workers are forked where the platform forks: they inherit their state with nothing pickled,
and need no importable `__main__` (spawning re-runs a caller's unguarded script). A forked
child runs only the given function over plain Python objects, never the parent's DuckDB
connection or a lock a parent thread holds; it freezes what it inherited so its garbage
collector never finalizes the parent's objects, and it leaves through `os._exit`
(multiprocessing's fork), so no destructor of theirs runs. Elsewhere workers are spawned and
the state's arguments pickled.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The first this many items of a stream are worked on in the caller's process, so a small job
# (a loop round's build or decisions) never starts a worker: forking one costs little, but
# spawning one (where the platform cannot fork) takes about a second of imports.
PARALLEL_AFTER = 50_000
CHUNK = 1_000  # items per task sent to a worker

_STATE: Any = None


def workers_for(setting: int | None) -> int:
    """A `workers` setting: as set, or (unset) one per core, at most 4."""
    return setting if setting is not None else max(1, min(4, os.cpu_count() or 1))


def _start(make_state: Callable[..., Any], args: tuple[Any, ...], forked: bool) -> None:
    global _STATE
    if forked:
        gc.freeze()  # inherited objects are the parent's: never collected (finalized) here
    _STATE = make_state(*args)


def _run_chunk(work: Callable[[Any, T], R], batch: list[T]) -> list[R]:
    return [work(_STATE, item) for item in batch]


def ordered_map(
    work: Callable[[Any, T], R],
    state: Any,
    items: Iterable[T],
    *,
    workers: int,
    make_state: Callable[..., Any],
    args: tuple[Any, ...] = (),
) -> Iterator[R]:
    """`work(state, item)` for every item, results in the order of `items`.

    The first PARALLEL_AFTER items use `state` in this process;
    with `workers` > 1 the rest go in chunks to that many processes, each with its own state,
    `make_state(*args)`. `work` and `make_state` must be module-level (they are pickled by
    name), and the items and results picklable."""
    rest = iter(items)
    if workers <= 1:
        yield from (work(state, item) for item in rest)
        return
    yield from (work(state, item) for item in islice(rest, PARALLEL_AFTER))
    try:
        first = next(rest)
    except StopIteration:
        return  # a small job: no worker started
    yield from _map_chunks(work, chain([first], rest), workers, make_state, args)


def _map_chunks(
    work: Callable[[Any, T], R],
    items: Iterator[T],
    workers: int,
    make_state: Callable[..., Any],
    args: tuple[Any, ...],
) -> Iterator[R]:
    forked = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if forked else "spawn")
    pending: deque[Future[list[R]]] = deque()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start, initargs=(make_state, args, forked)
    ) as pool:
        while batch := list(islice(items, CHUNK)):
            pending.append(pool.submit(_run_chunk, work, batch))
            while len(pending) > 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
