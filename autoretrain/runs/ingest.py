"""Reading landing-zone files into chunks of lines for the checks, which run inside DuckDB.

Python only cuts each file into bounded chunks of whole lines (bytes, so memory does not grow
with the size of a file or a day) and catches what DuckDB cannot be handed: bytes that are not
UTF-8, lines over `ingest.max_record_bytes`, and entries that are not files at all (a directory,
a dangling symlink or a symlink loop named like a part file), which are reported, not fatal.
A UTF-8 byte order mark at the start of a file is dropped.

The reader thread also marks each line `plain` when nothing in its bytes could make DuckDB's
JSON reader and pydantic's disagree (see `autoretrain.runs.rules`): the fast path confirms only
plain lines; the rest are judged by the schema itself.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoretrain.runs.rules import MAX_BRACKETS, NOT_PLAIN

RAW_CHARS = 1000  # quarantine keeps this much of a bad line
BOM = b"\xef\xbb\xbf"


@dataclass
class Rejected:
    """A line turned away before SQL (bytes-level problems)."""

    line: int
    reason: str
    raw: str


@dataclass
class Chunk:
    """Whole lines of one file: `table` has columns line (1-based), text, last (no newline),
    plain (see the module docstring)."""

    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    nbytes: int = 0


def read_chunks(path: Path, max_record_bytes: int, chunk_bytes: int) -> Iterator[Chunk]:
    """Yield a file as chunks of whole lines; a line never spans two chunks.

    Memory stays near `chunk_bytes` plus one line, and a line longer than `max_record_bytes`
    is skipped while streaming (only its first bytes are kept, for the quarantine).
    """
    line_no = 0  # lines completed before `carry`
    carry = b""
    first = True
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            if first:
                # Windows tools and Azure's fine-tuning files start with a BOM; it is not part
                # of the first record.
                block, first = block.removeprefix(BOM), False
            data = carry + block if carry else block
            cut = data.rfind(b"\n")
            if cut == -1:
                if len(data) > max_record_bytes:
                    line_no += 1
                    rejected, carry = _skip_long_line(fh, data, line_no, chunk_bytes)
                    yield Chunk(_lines_table([], line_no), [rejected], nbytes=len(data))
                else:
                    carry = data
                continue
            body, carry = data[:cut], data[cut + 1 :]
            chunk = _chunk(body, line_no, last=False, max_record_bytes=max_record_bytes)
            line_no += len(chunk.table) + len(chunk.rejected)
            yield chunk
    if carry:
        yield _chunk(carry, line_no, last=True, max_record_bytes=max_record_bytes)


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a part file, or None when it can."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        return "not a file: a dangling symlink (its target does not exist)"
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return "not a file: a symlink loop"
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "not a file: a directory"
    if not stat.S_ISREG(mode):
        return "not a file: a special file (socket, pipe or device)"
    return None


def read_files(
    paths: Sequence[Path], max_record_bytes: int, chunk_bytes: int, ahead: int = 2
) -> Iterator[tuple[int, Chunk | str | None]]:
    """(file index, chunk) for every chunk of every file, in order; None for an empty file, and
    a reason (str) for an entry that is not a readable file, which is skipped.

    A thread reads and splits up to `ahead` chunks ahead (file reads and Arrow kernels release
    the GIL), so the next chunk is ready while DuckDB works on this one."""
    out: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for idx, path in enumerate(paths):
                if (problem := not_a_file(path)) is not None:
                    if not put((idx, problem)):
                        return
                    continue
                try:
                    if path.stat().st_size == 0:
                        if not put((idx, None)):
                            return
                        continue
                    for chunk in read_chunks(path, max_record_bytes, chunk_bytes):
                        if not put((idx, chunk)):
                            return
                except OSError as exc:  # unreadable (permissions, I/O): report it, go on
                    if not put((idx, f"cannot read: {exc.strerror or exc}")):
                        return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="ingest-reader", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _skip_long_line(fh, head: bytes, line_no: int, chunk_bytes: int) -> tuple[Rejected, bytes]:  # type: ignore[no-untyped-def]
    size = len(head)
    while True:
        block = fh.read(chunk_bytes)
        if not block:
            rest = b""
            break
        cut = block.find(b"\n")
        if cut != -1:
            size += cut
            rest = block[cut + 1 :]
            break
        size += len(block)
    reason = f"record too large: {size} bytes, over ingest.max_record_bytes"
    return Rejected(line_no, reason, _preview(head)), rest


def _preview(raw: bytes) -> str:
    return raw[: RAW_CHARS * 4].decode("utf-8", errors="replace")[:RAW_CHARS]


def _lines_table(texts: list[str] | pa.Array, first: int, last: bool = False) -> pa.Table:
    n = len(texts)
    numbers = pa.array(range(first + 1, first + n + 1), pa.int64())
    flags = pa.array([last and i == n - 1 for i in range(n)], pa.bool_()) if last else None
    return pa.table(
        {
            "line": numbers,
            "text": texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string()),
            "last": flags if flags is not None else pa.nulls(n, pa.bool_()).fill_null(False),
            "plain": pa.nulls(n, pa.bool_()).fill_null(False),
        }
    )


# Every byte but `[`, `{` and the newline, for bytes.translate to drop.
_NOT_BRACKET_OR_NEWLINE = bytes(c for c in range(256) if c not in b"[{\n")


def _few_brackets(body: bytes) -> np.ndarray:
    """Per line of body: at most MAX_BRACKETS `{` and `[` (so no deeper nesting than that).

    One pass in C keeps only those bytes and the newlines (a few percent of the body), so the
    counts are the gaps between newlines. Counting on the whole body with numpy made three
    body-sized temporaries per chunk, which cost about three times as much in the reader
    thread (fresh memory each time); the counts are the same."""
    kept = np.frombuffer(body.translate(None, _NOT_BRACKET_OR_NEWLINE) + b"\n", np.uint8)
    newlines = np.flatnonzero(kept == 10)
    counts = np.diff(newlines, prepend=-1) - 1
    return counts <= MAX_BRACKETS


def _chunk(body: bytes, before: int, last: bool, max_record_bytes: int) -> Chunk:
    lines = pc.split_pattern(pa.array([body], pa.large_binary()), b"\n").flatten()
    numbers = pa.array(range(before + 1, before + len(lines) + 1), pa.int64())
    rejected: list[Rejected] = []
    keep = pc.less_equal(pc.binary_length(lines), max_record_bytes)
    if not pc.all(keep).as_py():
        for i in pc.indices_nonzero(pc.invert(keep)).to_pylist():
            raw = lines[i].as_py()
            reason = f"record too large: {len(raw)} bytes, over ingest.max_record_bytes ({max_record_bytes})"
            rejected.append(Rejected(before + 1 + i, reason, _preview(raw)))
    try:
        texts = lines.cast(pa.large_string())
    except pa.ArrowInvalid:
        texts, bad = _decode_each(lines)
        for i, reason in bad:
            if keep[i].as_py():
                rejected.append(Rejected(before + 1 + i, reason, _preview(lines[i].as_py())))
        keep = pc.and_(keep, pc.is_valid(texts))
    flags = pa.array([last and i == len(lines) - 1 for i in range(len(lines))], pa.bool_())
    lenient = pc.match_substring_regex(texts, NOT_PLAIN)
    plain = pc.and_kleene(pa.array(_few_brackets(body)), pc.invert(lenient))
    table = pa.table({"line": numbers, "text": texts, "last": flags, "plain": plain})
    if not pc.all(keep).as_py():  # filtering copies every line; most chunks lose none
        table = table.filter(keep)
    return Chunk(table, rejected, nbytes=len(body) + (0 if last else 1))


def _decode_each(lines: pa.Array) -> tuple[pa.Array, list[tuple[int, str]]]:
    # Only a chunk that holds a bad byte comes here; decode line by line to say which.
    texts: list[str | None] = []
    bad: list[tuple[int, str]] = []
    for i, raw in enumerate(lines.to_pylist()):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            texts.append(None)
            bad.append((i, f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"))
    return pa.array(texts, pa.large_string()), bad
