"""serving.json: which model directories the local server serves under which names.

One file, one format, one writer (the model registry, on every slot change of a local profile)
and one reader (`read_serving_config`), shared by `autoretrain serve`, the local provider and the
slot targets. It lives in `deploy` because deployment owns it; `serve` only serves what it says.

    {"models": {"primary": {"model_dir": "...", "adapter_dir": "..."}, "v3": {...}}}

Relative paths are relative to the file's folder. Writes are atomic, so a running server never
reads half a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SERVING_FILE = "serving.json"


def serving_file(root: Path) -> Path:
    """The data root's serving.json."""
    return Path(root) / SERVING_FILE


@dataclass(frozen=True)
class ServingEntry:
    model_dir: Path
    adapter_dir: Path | None = None

    def to_json(self) -> dict[str, str]:
        out = {"model_dir": str(self.model_dir)}
        if self.adapter_dir:
            out["adapter_dir"] = str(self.adapter_dir)
        return out


class ServingConfigError(ValueError):
    """serving.json is not valid: the message says which file and which entry."""


def read_serving_config(path: Path) -> dict[str, ServingEntry]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ServingConfigError(f"{path}: cannot read serving config: {exc}") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ServingConfigError(f'{path}: expected {{"models": {{name: {{"model_dir": ...}}}}}}')
    entries = {}
    for name, spec in models.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("model_dir"), str):
            raise ServingConfigError(f"{path}: models.{name}: needs a string model_dir")
        adapter = spec.get("adapter_dir")
        if adapter is not None and not isinstance(adapter, str):
            raise ServingConfigError(f"{path}: models.{name}.adapter_dir: must be a string")
        base = Path(path).parent
        entries[name] = ServingEntry(
            (base / spec["model_dir"]).resolve(), (base / adapter).resolve() if adapter else None
        )
    return entries


def write_serving_config(path: Path, entries: dict[str, ServingEntry]) -> None:
    """Replace serving.json atomically (a running server never reads half a file)."""
    from autoretrain.runs.archive import write_atomically

    body = {"models": {name: entry.to_json() for name, entry in sorted(entries.items())}}
    write_atomically(Path(path), (json.dumps(body, indent=2) + "\n").encode())
