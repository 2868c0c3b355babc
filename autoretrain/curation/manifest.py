"""Dataset versions on disk: `<datasets root>/<timestamp>/{train.jsonl, eval.jsonl, manifest.json}`.

A version is written into a hidden temporary folder and renamed into place once complete, so a
reader never sees half a dataset; a folder without a readable manifest is reported as broken,
not skipped silently.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import autoretrain

MANIFEST = "manifest.json"
TRAIN = "train.jsonl"
EVAL = "eval.jsonl"
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass
class DatasetVersion:
    path: Path
    version: str
    manifest: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)
    exclusions: dict[str, int] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)

    @property
    def train_file(self) -> Path:
        return self.path / TRAIN

    @property
    def eval_file(self) -> Path:
        return self.path / EVAL


def git_commit(where: Path | None = None) -> str:
    """The commit of the code that built the dataset, or "unknown" outside a git checkout."""
    cwd = where or Path(autoretrain.__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


def file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    lines = 0
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size, "lines": lines}


def new_version_dir(root: Path, now: datetime | None = None) -> tuple[str, Path]:
    """A fresh version name (UTC timestamp; `-2`, `-3`… when one already exists that second)."""
    base = (now or datetime.now(UTC)).astimezone(UTC).strftime(VERSION_FORMAT)
    version, n = base, 1
    while (root / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version, root / version


def read_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))


def list_versions(root: Path) -> list[dict[str, Any]]:
    """Every version under `root`, newest first: name, path, and the manifest's headline
    numbers, or `error` when the manifest is missing or unreadable."""
    if not root.is_dir():
        return []
    rows = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name, reverse=True):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        row: dict[str, Any] = {"version": entry.name, "path": str(entry)}
        try:
            manifest = read_manifest(entry)
        except (OSError, ValueError) as exc:
            row["error"] = f"no readable {MANIFEST}: {exc}"
            rows.append(row)
            continue
        counts = manifest.get("counts", {})
        row.update(
            created_at=manifest.get("created_at"),
            train=counts.get("train"),
            eval=counts.get("eval"),
            excluded=sum(manifest.get("exclusions", {}).values()),
            redactions=sum(manifest.get("redactions", {}).values()),
            source_models=manifest.get("source_models"),
            git_commit=manifest.get("git_commit"),
        )
        rows.append(row)
    return rows
