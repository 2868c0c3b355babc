"""Import another app's JSONL into the landing zone.

Each line is either a record in our schema (it has a `run_id`) or an OpenAI chat-format
transcript (`{"messages": [...], "tools": [...]}`, the fine-tuning shape), which becomes a Run
with traffic="import". A transcript's run_id is a hash of its line, so importing the same file
twice lands the same run_ids and ingest keeps one copy. A bad line is reported with file, line
and reason; the good lines are still imported.

Lines are read and judged one at a time by the same parser and schema as ingest
(`autoretrain.runs.validate`), and what is written is checked to read back as it will at
ingest, so an imported run is never one that ingest then quarantines, and no line — lone
surrogates, 10,000-deep nesting, bytes that are not UTF-8 — stops the import.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import ValidationError

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.ingest import BOM
from autoretrain.runs.schema import Run
from autoretrain.runs.validate import json_kind, judge, reason

BATCH = 5000  # runs per landing file written


@dataclass
class LineError:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ImportReport:
    """lines == imported + len(errors) + blank_lines."""

    lines: int = 0
    imported: int = 0
    from_transcripts: int = 0
    blank_lines: int = 0
    errors: list[LineError] = field(default_factory=list)  # the lines not imported, and why
    written: list[Path] = field(default_factory=list)


def transcript_to_run(obj: dict[str, Any], raw: bytes, source: str, line: int) -> Run:
    """An OpenAI chat-format example -> Run (traffic="import", unverified)."""
    messages = obj["messages"]
    extra = {k: v for k, v in obj.items() if k not in ("messages", "tools", "model")}
    last = messages[-1] if messages else {}
    answered = isinstance(last, dict) and last.get("role") == "assistant"
    started = _timestamp(obj.get("created")) or datetime.now(UTC)
    run = Run(
        run_id="imp-" + hashlib.sha256(raw.strip()).hexdigest()[:32],
        model=str(obj.get("model") or "unknown"),
        traffic="import",
        status="succeeded" if answered else "failed",
        started_at=started,
        ended_at=started,
        messages=messages,
        tools=obj.get("tools") or [],
        final_answer=last.get("content") if answered else None,
        tags={"import_file": source, "import_line": str(line)},
        import_metadata=extra or None,
    )
    return run


def _timestamp(value: Any) -> datetime | None:
    # OpenAI objects carry `created` as unix seconds.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"created {value!r} is not a time (unix seconds)") from None
    return None


def _json_problem(exc: ValueError) -> str:
    detail = str(exc)
    if "recursion limit" in detail:
        return f"nested too deeply: {detail} (pydantic reads at most 201 levels)"
    return f"invalid JSON: {detail}"


def parse_line(raw: bytes, source: str, line: int) -> tuple[Run | None, str | None]:
    """(run, None) for a good line, (None, reason) for a bad one, (None, None) for a blank."""
    if not raw.strip():
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
    try:
        obj = pydantic_core.from_json(text)  # the parser ingest judges with
    except ValueError as exc:
        return None, _json_problem(exc)
    if not isinstance(obj, dict):
        return None, f"not an object: the line is a JSON {json_kind(obj)}"
    if "run_id" in obj:
        run, why = judge(text)
    elif isinstance(obj.get("messages"), list):
        try:
            run, why = transcript_to_run(obj, raw, source, line), None
        except ValidationError as exc:
            run, why = None, reason(exc)
        except (ValueError, TypeError, RecursionError) as exc:
            run, why = None, f"invalid value: {exc}"
    else:
        return None, "neither a run record (no run_id) nor a chat transcript (no messages list)"
    if run is None:
        return None, why
    # What lands is what ingest will read: check it reads back (it always should).
    _, again = judge(run.to_json())
    if again is not None:
        return None, f"{again} (after conversion to a run record)"
    return run, None


def import_file(path: Path, archive: RunArchive) -> ImportReport:
    """Stream `path` into the landing zone, one part file per day per batch."""
    report = ImportReport()
    source = str(path)
    pending: dict[str, list[str]] = defaultdict(list)
    n_pending = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)
            report.lines += 1
            run, why = parse_line(raw, source, number)
            if why is not None:
                report.errors.append(LineError(source, number, why))
            if run is None:
                report.blank_lines += why is None
                continue
            pending[run.day].append(run.to_json())
            n_pending += 1
            report.imported += 1
            report.from_transcripts += run.traffic == "import" and run.run_id.startswith("imp-")
            if n_pending >= BATCH:
                report.written += archive.write_lines(pending)
                pending, n_pending = defaultdict(list), 0
    report.written += archive.write_lines(pending)
    return report
