"""Import another app's JSONL into the landing zone.

Each line is either a record in our schema (it has a `run_id`) or an OpenAI chat-format
transcript (`{"messages": [...], "tools": [...]}`, the fine-tuning shape), which becomes a Run
with traffic="import". A transcript's run_id is a hash of its line, so importing the same file
twice lands the same run_ids and ingest keeps one copy. A bad line is reported with file, line
and reason; the good lines are still imported.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autoretrain.runs.archive import RunArchive
from autoretrain.runs.schema import KNOWN_SCHEMA_VERSIONS, Run

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
    imported: int = 0
    from_transcripts: int = 0
    errors: list[LineError] = field(default_factory=list)
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
        return datetime.fromtimestamp(value, UTC)
    return None


def parse_line(raw: bytes, source: str, line: int) -> tuple[Run | None, str | None]:
    """(run, None) for a good line, (None, reason) for a bad one, (None, None) for a blank."""
    if not raw.strip():
        return None, None
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(obj, dict):
        return None, f"not an object: the line is a JSON {type(obj).__name__}"
    try:
        if "run_id" in obj:
            version = obj.get("schema_version", 1)
            if version not in KNOWN_SCHEMA_VERSIONS:
                return None, f"unknown schema_version: {version!r}"
            return Run.model_validate(obj), None
        if isinstance(obj.get("messages"), list):
            return transcript_to_run(obj, raw, source, line), None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        return None, f"invalid record: {problems}"
    return None, "neither a run record (no run_id) nor a chat transcript (no messages list)"


def import_file(path: Path, archive: RunArchive) -> ImportReport:
    """Stream `path` into the landing zone, one part file per day per batch."""
    report = ImportReport()
    source = str(path)
    pending: dict[str, list[str]] = defaultdict(list)
    n_pending = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            run, reason = parse_line(raw, source, number)
            if reason is not None:
                report.errors.append(LineError(source, number, reason))
            if run is None:
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
