"""Model registry: versions, slots per provider profile, and an append-only promotion ledger.

Tables (in the store's database):
- `model_versions`: one row per trained model (local model dir / adapter, or hosted model id).
- `model_slots`: which version each slot (`primary`, `canary`) of each provider profile serves.
- `promotion_ledger`: every slot change, never updated or deleted.

Rollback follows promotions, not builds: replaying a slot's ledger, a promotion pushes its
version and a rollback pops one, so the slot returns to the version promoted there before the
current one, and repeated rollbacks walk further back. The slots table is the ledger's result,
written in the same transaction.

For a profile of kind `local`, every slot change rewrites `<root>/serving.json` (atomically),
which `autoretrain serve` reloads by mtime: names are the slot names and the version ids.

The registry never lies: a slot moves only to a version whose files load (`deploy/artifacts.py`);
a slot naming a version that is no longer registered is an error, not a slot quietly left out of
serving.json; and a registry missing one of its tables is damaged, never read as empty or
recreated empty (that would lose the history rollback walks).
"""

from __future__ import annotations

import getpass
import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from autoretrain.deploy.artifacts import load_problems
from autoretrain.deploy.serving import SERVING_FILE

if TYPE_CHECKING:
    from autoretrain.settings import Settings

SLOTS = ("primary", "canary")

_DDL = [
    """CREATE TABLE IF NOT EXISTS model_versions (
        id VARCHAR PRIMARY KEY,
        base_model VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        model_dir VARCHAR,
        adapter_dir VARCHAR,
        hosted_model_id VARCHAR,
        dataset_version VARCHAR,
        training_metrics JSON,
        created_at TIMESTAMPTZ NOT NULL,
        parent_version VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS model_slots (
        provider_profile VARCHAR NOT NULL,
        slot VARCHAR NOT NULL,
        version_id VARCHAR NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (provider_profile, slot)
    )""",
    "CREATE SEQUENCE IF NOT EXISTS promotion_ledger_seq",
    """CREATE TABLE IF NOT EXISTS promotion_ledger (
        seq BIGINT PRIMARY KEY DEFAULT nextval('promotion_ledger_seq'),
        slot VARCHAR NOT NULL,
        provider_profile VARCHAR NOT NULL,
        from_version VARCHAR,
        to_version VARCHAR NOT NULL,
        "at" TIMESTAMPTZ NOT NULL,
        actor VARCHAR NOT NULL,
        reason VARCHAR,
        evaluation_id VARCHAR,
        action VARCHAR NOT NULL
    )""",
]
_TABLES = ("model_versions", "model_slots", "promotion_ledger")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why and what to do."""


@dataclass
class ModelVersion:
    id: str
    base_model: str
    kind: Literal["local", "hosted"]
    model_dir: str | None = None
    adapter_dir: str | None = None
    hosted_model_id: str | None = None
    dataset_version: str | None = None
    training_metrics: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    parent_version: str | None = None

    @property
    def artifact(self) -> str | None:
        """What this version itself added: its adapter, else its model dir, else the hosted id."""
        return self.adapter_dir or self.model_dir or self.hosted_model_id

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


@dataclass
class LedgerEntry:
    seq: int
    slot: str
    provider_profile: str
    from_version: str | None
    to_version: str
    at: datetime
    actor: str
    reason: str | None
    evaluation_id: str | None
    action: Literal["promote", "rollback"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class RegistryConfig:
    """What the registry needs from the settings, as plain values: each provider profile's kind
    (which slots rewrite serving.json, which versions a profile can serve), the profile used
    when none is named, the data root (serving.json lives there), the datasets folder (a model
    a manifest names is kept by retention) and the database path (named in error messages)."""

    profiles: Mapping[str, str]
    default_profile: str
    root: Path
    datasets: Path
    database: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", MappingProxyType(dict(self.profiles)))

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        return cls(
            profiles={name: profile.kind for name, profile in settings.providers.items()},
            default_profile=settings.provider,
            root=settings.paths.root,
            datasets=settings.paths.datasets,
            database=settings.paths.database,
        )


class ModelRegistry:
    """The registry over one DuckDB connection. Pass `read_only=True` for a read-only connection:
    nothing is created, and a database without the registry reads as empty. A registry with
    some of its tables and not others is damaged: every operation says so."""

    def __init__(self, con: Any, config: RegistryConfig, *, read_only: bool = False):
        self.con = con
        self.config = config
        self.read_only = read_only
        if not read_only:
            # Refuse before creating anything: CREATE IF NOT EXISTS would recreate a lost
            # ledger empty, and rollback would then say there is nothing to roll back to.
            self._check_whole()
            for ddl in _DDL:
                con.execute(ddl)

    @classmethod
    def from_settings(
        cls, con: Any, settings: Settings, *, read_only: bool = False
    ) -> ModelRegistry:
        """The registry with its `RegistryConfig` read from the settings."""
        return cls(con, RegistryConfig.from_settings(settings), read_only=read_only)

    # ------------------------------------------------------------ versions

    def register(
        self,
        *,
        base_model: str,
        kind: Literal["local", "hosted"],
        model_dir: str | Path | None = None,
        adapter_dir: str | Path | None = None,
        hosted_model_id: str | None = None,
        dataset_version: str | None = None,
        training_metrics: dict[str, Any] | None = None,
        parent_version: str | None = None,
        version_id: str | None = None,
    ) -> ModelVersion:
        """Record a new model version; returns it with its id."""
        if kind == "local" and not (model_dir or adapter_dir):
            raise RegistryError("a local version needs model_dir or adapter_dir")
        if kind == "hosted" and not hosted_model_id:
            raise RegistryError("a hosted version needs hosted_model_id")
        if kind not in ("local", "hosted"):
            raise RegistryError(f"kind must be 'local' or 'hosted', not {kind!r}")
        if parent_version and self.get(parent_version) is None:
            raise RegistryError(f"parent version {parent_version!r} is not registered")
        now = datetime.now(UTC)
        version = ModelVersion(
            id=version_id or f"v{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
            base_model=base_model,
            kind=kind,
            model_dir=_path(model_dir),
            adapter_dir=_path(adapter_dir),
            hosted_model_id=hosted_model_id,
            dataset_version=dataset_version,
            training_metrics=training_metrics or {},
            created_at=now,
            parent_version=parent_version,
        )
        if "," in version.id:
            raise RegistryError(f"version id {version.id!r} must not contain commas")
        if self.get(version.id) is not None:
            raise RegistryError(f"version {version.id!r} is already registered")
        self.con.execute(
            "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                version.id,
                version.base_model,
                version.kind,
                version.model_dir,
                version.adapter_dir,
                version.hosted_model_id,
                version.dataset_version,
                json.dumps(version.training_metrics),
                version.created_at,
                version.parent_version,
            ],
        )
        return version

    def get(self, version_id: str) -> ModelVersion | None:
        rows = self._select("SELECT * FROM model_versions WHERE id = ?", [version_id])
        return _version(rows[0]) if rows else None

    def versions(self) -> list[ModelVersion]:
        return [
            _version(r)
            for r in self._select("SELECT * FROM model_versions ORDER BY created_at, id")
        ]

    # ------------------------------------------------------------ slots and ledger

    def slots(self, profile: str | None = None) -> dict[str, str]:
        """slot -> version id for one profile (the active one by default); empty slots absent."""
        profile = profile or self.config.default_profile
        rows = self._select(
            "SELECT slot, version_id FROM model_slots WHERE provider_profile = ? ORDER BY slot",
            [profile],
        )
        return dict(rows)

    def held_since(self, slots: tuple[str, ...], profile: str | None = None) -> Any:
        """When the newest of these slots last changed hands (None if none is held): the start
        of the window in which each has served its current version."""
        profile = profile or self.config.default_profile
        marks = ", ".join("?" for _ in slots)
        rows = self._select(
            f"SELECT max(updated_at) FROM model_slots WHERE provider_profile = ? "
            f"AND slot IN ({marks})",
            [profile, *slots],
        )
        return rows[0][0] if rows else None

    def all_slots(self) -> list[dict[str, Any]]:
        rows = self._select(
            "SELECT provider_profile, slot, version_id, updated_at FROM model_slots "
            "ORDER BY provider_profile, slot"
        )
        return [
            {"provider_profile": p, "slot": s, "version_id": v, "updated_at": u.isoformat()}
            for p, s, v, u in rows
        ]

    def ledger(
        self, *, slot: str | None = None, profile: str | None = None, limit: int | None = None
    ) -> list[LedgerEntry]:
        """Ledger entries, newest first."""
        where, params = [], []
        if slot:
            where.append("slot = ?")
            params.append(slot)
        if profile:
            where.append("provider_profile = ?")
            params.append(profile)
        sql = "SELECT * FROM promotion_ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [LedgerEntry(*row) for row in self._select(sql, params)]

    def promote(
        self,
        version_id: str,
        slot: str,
        *,
        reason: str | None = None,
        evaluation_id: str | None = None,
        actor: str | None = None,
        profile: str | None = None,
    ) -> LedgerEntry | None:
        """Put a version into a slot. Returns the ledger entry, or None when the slot already
        holds that version (nothing changes, nothing is recorded)."""
        profile = self._profile(profile)
        self.check_promotable(version_id, slot, profile)
        current = self.slots(profile).get(slot)
        if current == version_id:
            return None
        return self._move(
            slot, profile, current, version_id, "promote", actor, reason, evaluation_id
        )

    def check_promotable(
        self, version_id: str, slot: str, profile: str | None = None
    ) -> ModelVersion:
        """Everything `promote` checks before a slot moves, without moving it: the slot name,
        the version is registered and of a kind the profile serves, and its files load. Call it
        before changing anything outside the registry (a deployment) too."""
        profile = self._profile(profile)
        _check_slot(slot)
        version = self.get(version_id)
        if version is None:
            raise RegistryError(
                f"version {version_id!r} is not registered; `autoretrain models` lists versions"
            )
        self._check_servable(version, profile)
        self._check_loads(version)
        return version

    def resolve_slot(self, slot: str, profile: str | None = None) -> ModelVersion | None:
        """The version in a slot, None when the slot is empty; an error when the slot names a
        version that is not registered (it was deleted), instead of reading as empty."""
        profile = self._profile(profile)
        version_id = self.slots(profile).get(slot)
        if version_id is None:
            return None
        version = self.get(version_id)
        if version is None:
            raise RegistryError(_dangling(profile, slot, version_id))
        return version

    def dangling_slots(self) -> list[dict[str, Any]]:
        """Slots (of every profile) that name a version no longer registered."""
        return [s for s in self.all_slots() if self.get(s["version_id"]) is None]

    def rollback_target(self, slot: str = "primary", profile: str | None = None) -> str | None:
        """The version a rollback of this slot would restore, or None."""
        stack = self._promotion_stack(slot, self._profile(profile))
        return stack[-2] if len(stack) >= 2 else None

    def rollback(
        self,
        slot: str = "primary",
        *,
        reason: str | None = None,
        actor: str | None = None,
        profile: str | None = None,
    ) -> LedgerEntry:
        """Return the slot to the version promoted there before the current one."""
        profile = self._profile(profile)
        _check_slot(slot)
        stack = self._promotion_stack(slot, profile)
        current = self.slots(profile).get(slot)
        if len(stack) < 2:
            held = f"holds {current!r}" if current else "is empty"
            raise RegistryError(
                f"nothing to roll back to: slot {slot!r} of profile {profile!r} {held} and no "
                "earlier promoted version remains in its ledger"
            )
        previous = self.get(stack[-2])
        if previous is None:
            raise RegistryError(
                f"cannot roll slot {slot!r} of profile {profile!r} back to {stack[-2]!r}: that "
                "version is no longer registered. Promote a registered version instead"
            )
        self._check_loads(previous)
        return self._move(slot, profile, current, stack[-2], "rollback", actor, reason, None)

    def _promotion_stack(self, slot: str, profile: str) -> list[str]:
        stack: list[str] = []
        for entry in reversed(self.ledger(slot=slot, profile=profile)):
            if entry.action == "promote":
                stack.append(entry.to_version)
            elif stack:
                stack.pop()
        return stack

    def _move(
        self,
        slot: str,
        profile: str,
        from_version: str | None,
        to_version: str,
        action: str,
        actor: str | None,
        reason: str | None,
        evaluation_id: str | None,
    ) -> LedgerEntry:
        if self.read_only:
            raise RegistryError("the registry was opened read-only")
        # serving.json is rewritten from every slot of the profile: one naming a deleted version
        # would drop out of it (and stop being served) unnoticed. Refuse before anything moves;
        # the slot being moved is being repaired, so it may dangle.
        for other, version_id in self.slots(profile).items():
            if other != slot and self.get(version_id) is None:
                raise RegistryError(_dangling(profile, other, version_id))
        now = datetime.now(UTC)
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "INSERT INTO promotion_ledger (slot, provider_profile, from_version, to_version, "
                '"at", actor, reason, evaluation_id, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                [
                    slot,
                    profile,
                    from_version,
                    to_version,
                    now,
                    actor or default_actor(),
                    reason,
                    evaluation_id,
                    action,
                ],
            )
            self.con.execute(
                "INSERT OR REPLACE INTO model_slots VALUES (?, ?, ?, ?)",
                [profile, slot, to_version, now],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        if self.config.profiles[profile] == "local":
            self.write_serving_config(profile)
        return self.ledger(slot=slot, profile=profile, limit=1)[0]

    # ------------------------------------------------------------ serving

    def serving_config(self, profile: str | None = None) -> dict[str, dict[str, str | None]]:
        """Model name -> directories: every slot of a local profile, then every registered local
        version by its id whose files are on disk. A candidate that holds no slot is served by
        id too, so a replay through a team's agent (which reaches it through the gateway by
        version id) needs no slot move first. `serve` loads a model on its first request."""
        config: dict[str, dict[str, str | None]] = {}
        profile = self._profile(profile)
        for slot, version_id in self.slots(profile).items():
            version = self.get(version_id)
            if version is None:
                raise RegistryError(_dangling(profile, slot, version_id))
            if version.kind != "local":
                continue
            dirs = {"model_dir": version.model_dir, "adapter_dir": version.adapter_dir}
            config[slot] = dirs
            config[version_id] = dirs
        for version in self.versions():
            if version.kind != "local" or version.id in config:
                continue
            folders = [d for d in (version.model_dir, version.adapter_dir) if d]
            if folders and all(Path(d).is_dir() for d in folders):
                config[version.id] = {
                    "model_dir": version.model_dir,
                    "adapter_dir": version.adapter_dir,
                }
        return config

    def write_serving_config(self, profile: str | None = None) -> Path:
        """Rewrite serving.json in the one format `autoretrain serve` and the local provider
        read (serve.py owns it), so a promotion reaches a running server."""
        from autoretrain.deploy.serving import ServingEntry, write_serving_config

        path = self.config.root / SERVING_FILE
        entries = {}
        for name, dirs in self.serving_config(profile).items():
            model_dir, adapter_dir = dirs["model_dir"], dirs["adapter_dir"]
            if model_dir is None:  # an adapter alone: the local provider finds its base model
                entries[name] = ServingEntry(Path(adapter_dir))  # type: ignore[arg-type]
            else:
                entries[name] = ServingEntry(
                    Path(model_dir), Path(adapter_dir) if adapter_dir else None
                )
        write_serving_config(path, entries)
        return path

    # ------------------------------------------------------------ retention

    def removable_artifacts(
        self, retention_days: float, *, now: datetime | None = None
    ) -> list[ModelVersion]:
        """Versions whose artifacts nothing needs any more: in no slot, not restorable by a
        rollback, no ledger entry and no creation within the retention window, named by no
        dataset manifest, and not the parent (or holder of the files) of a version kept."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(days=retention_days)
        versions = {v.id: v for v in self.versions()}
        keep: set[str] = {
            v.id for v in versions.values() if v.created_at and v.created_at >= cutoff
        }
        for row in self.all_slots():
            keep.add(row["version_id"])
            keep.update(self._promotion_stack(row["slot"], row["provider_profile"]))
        for entry in self.ledger():
            if entry.at >= cutoff:
                keep.update(v for v in (entry.from_version, entry.to_version) if v)
        referenced = _dataset_strings(self.config.datasets)
        keep.update(
            v.id for v in versions.values() if v.id in referenced or v.artifact in referenced
        )
        # A kept version may build on another's files (its parent, or an adapter on its model
        # dir): keep those too, until nothing changes.
        changed = True
        while changed:
            changed = False
            kept_paths = {p for k in keep if k in versions for p in _paths(versions[k])}
            for v in versions.values():
                if v.id in keep:
                    continue
                parent_of_kept = any(
                    versions[k].parent_version == v.id for k in keep if k in versions
                )
                if parent_of_kept or (v.artifact and v.artifact in kept_paths):
                    keep.add(v.id)
                    changed = True
        return [v for v in versions.values() if v.id not in keep]

    # ------------------------------------------------------------ helpers

    def _profile(self, profile: str | None) -> str:
        profile = profile or self.config.default_profile
        if profile not in self.config.profiles:
            raise RegistryError(
                f"provider profile {profile!r} is not defined; known: {sorted(self.config.profiles)}"
            )
        return profile

    def _check_servable(self, version: ModelVersion, profile: str) -> None:
        kind = self.config.profiles[profile]
        if kind == "local" and version.kind != "local":
            raise RegistryError(
                f"version {version.id!r} is hosted ({version.hosted_model_id}); profile "
                f"{profile!r} serves local models: choose a hosted profile with --profile"
            )
        if kind == "azure_openai" and version.kind != "hosted":
            raise RegistryError(
                f"version {version.id!r} is a local model; profile {profile!r} is Azure OpenAI"
            )

    def _check_loads(self, version: ModelVersion) -> None:
        if version.kind != "local":
            return  # a hosted model's files are the provider's; its deployment is checked there
        problems = load_problems(version.model_dir, version.adapter_dir)
        if problems:
            raise RegistryError(
                f"version {version.id!r} would not load: {'; '.join(problems)}. No slot was "
                "changed; restore its files, or register and promote a complete model"
            )

    def _select(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        if self.read_only and not self._check_whole():
            return []  # a database the registry has never been created in: nothing yet
        return self.con.execute(sql, params or []).fetchall()

    def _check_whole(self) -> bool:
        """True when every registry table exists, False when none does; an error otherwise."""
        found = {
            row[0]
            for row in self.con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE table_name IN (?, ?, ?)",
                list(_TABLES),
            ).fetchall()
        }
        if found and len(found) < len(_TABLES):
            missing = [t for t in _TABLES if t not in found]
            raise RegistryError(
                f"the model registry in {self.config.database} is damaged: table(s) "
                f"{', '.join(missing)} missing (found {', '.join(sorted(found))}). Nothing was "
                "read or changed. Restore the database from a backup or the mirror; recreating "
                "the table empty would lose the versions or the promotion history rollback uses"
            )
        return bool(found)


def _dangling(profile: str, slot: str, version_id: str) -> str:
    return (
        f"slot {slot!r} of profile {profile!r} names version {version_id!r}, which is not "
        "registered (deleted?). Re-register it, or promote a registered version into that slot "
        "first: until then serving.json cannot be written truthfully"
    )


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise RegistryError(f"slot must be one of {SLOTS}, not {slot!r}")


def _path(value: str | Path | None) -> str | None:
    return str(Path(value).resolve()) if value else None


def _paths(version: ModelVersion) -> set[str]:
    return {p for p in (version.model_dir, version.adapter_dir) if p}


def _version(row: tuple) -> ModelVersion:
    (id_, base, kind, model_dir, adapter_dir, hosted, dataset, metrics, created, parent) = row
    return ModelVersion(
        id=id_,
        base_model=base,
        kind=kind,
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        hosted_model_id=hosted,
        dataset_version=dataset,
        training_metrics=json.loads(metrics) if metrics else {},
        created_at=created,
        parent_version=parent,
    )


def _dataset_strings(datasets: Path) -> set[str]:
    """Every string value in every dataset manifest: a model named anywhere there is in use."""
    found: set[str] = set()
    if not datasets.exists():
        return found

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for manifest in datasets.glob("*/manifest.json"):
        try:
            walk(json.loads(manifest.read_text(encoding="utf-8-sig")))
        except (OSError, json.JSONDecodeError) as exc:
            # An unreadable manifest might name anything: keeping everything is the safe answer.
            raise RegistryError(
                f"cannot read dataset manifest {manifest}: {exc}; fix it before pruning models"
            ) from exc
    return found
