"""Slots resolved outside the provider: an environment file the app reads.

Azure cannot re-point a deployment at another model, so each model version has a deployment of
its own and a slot (primary, canary) is a name that autoretrain resolves: promotion and rollback
write which deployment each slot is into

    <root>/serving/<profile>-slots.env        (e.g. <root>/serving/azure-slots.env)

    # written by autoretrain on every promotion and rollback of profile 'azure'
    AUTORETRAIN_SLOT_PRIMARY=autoretrain-v20261203-070512-ab12cd
    AUTORETRAIN_SLOT_CANARY=autoretrain-v20261203-091500-ef34aa-dev

replacing the file atomically (a reader sees the old mapping or the new one, never half of
each). The format is both a shell file (`set -a; . azure-slots.env`) and a Docker / Compose
`--env-file`; the Azure OpenAI chat provider reads it directly (`slot_deployment`), and so
does the keep-alive. The profile's `slots` stay the fallback for a slot no promotion has
written yet (a deployment made by hand, such as the base model's).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from autoretrain.deploy.azure import DeploymentError

SERVING_DIR = "serving"
VARIABLE_PREFIX = "AUTORETRAIN_SLOT_"
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")


class SlotConfigError(DeploymentError):
    """The slot file cannot be read or written; the message says which file and why. A
    DeploymentError, so `autoretrain promote` / `rollback` report it as one."""


def slot_variable(slot: str) -> str:
    """`primary` -> `AUTORETRAIN_SLOT_PRIMARY`."""
    return VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", slot).upper()


def slot_file(settings: Any, profile: str | None = None) -> Path:
    """Where a profile's slot mapping lives: the profile's `slot_config_file`, or
    `<root>/serving/<profile>-slots.env`."""
    name = profile or settings.provider
    configured = getattr(settings.providers[name], "slot_config_file", None)
    if configured:
        return Path(configured).expanduser()
    return settings.paths.root / SERVING_DIR / f"{name}-slots.env"


def read_slots(path: Path) -> dict[str, str]:
    """slot -> deployment name from a slot file; empty when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SlotConfigError(f"cannot read the slot file {path}: {exc}") from exc
    slots: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise SlotConfigError(
                f"{path}:{number}: {line!r} is not NAME=value; fix or delete the line (the "
                "next promotion rewrites the file)"
            )
        name, value = match.groups()
        value = value.strip("'\"")
        if name.startswith(VARIABLE_PREFIX) and value:
            slots[name.removeprefix(VARIABLE_PREFIX).lower()] = value
    return slots


def write_slot(path: Path, slot: str, deployment: str, *, profile: str = "") -> dict[str, str]:
    """Set one slot in the file, keeping the others, atomically (write a temporary file in the
    same folder, flush it to disk, rename it over the old one). Returns the new mapping."""
    if not _VALUE.match(deployment):
        raise SlotConfigError(
            f"deployment name {deployment!r} for slot {slot!r} holds characters an environment "
            "file cannot carry unquoted; deployment names are letters, digits, '_', '.' and '-'"
        )
    slots = read_slots(path)
    slots[slot] = deployment
    header = f"# written by autoretrain on every promotion and rollback of profile {profile!r}"
    lines = [header, "# a slot is the deployment named here; edit through autoretrain, not by hand"]
    lines += [f"{slot_variable(name)}={value}" for name, value in sorted(slots.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the app may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return slots


def slot_deployment(settings: Any, slot: str, profile: str | None = None) -> str | None:
    """The deployment a slot resolves to now: the slot file's entry (what the last promotion or
    rollback wrote), else the profile's `slots` entry, else None."""
    name = profile or settings.provider
    written = read_slots(slot_file(settings, name)).get(slot)
    return written or settings.providers[name].slots.get(slot) or None


def resolved_slots(settings: Any, profile: str | None = None) -> dict[str, str]:
    """slot -> deployment for every slot the file or the profile names."""
    name = profile or settings.provider
    merged = dict(settings.providers[name].slots)
    merged.update(read_slots(slot_file(settings, name)))
    return {slot: value for slot, value in sorted(merged.items()) if value}
