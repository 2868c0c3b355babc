"""Slot -> target: what a name an agent sends (`primary`, `canary`, a version id) forwards to.

The registry (DuckDB) says which version each slot of the active provider profile holds; the
gateway's settings say where a slot or a version is served (`gateway.targets`), and a local
version without an entry of its own goes to a running `autoretrain serve` (`gateway.serve_url`),
which serves the slot names and the version ids in them.

The registry is read in a background thread (never on a request's path) at most every
`gateway.registry_ttl_s`, and only when its files changed: a promotion or a rollback is seen
within about a second, without a restart. A read that fails (a writer holds the lock, the file is
being replaced) keeps the last answer: forwarding never stops because the store is busy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoretrain.azure_identity import COGNITIVE_SERVICES_SCOPE, token_provider
from autoretrain.settings import GatewayTarget, Settings

log = logging.getLogger(__name__)

SLOTS = ("primary", "canary")  # the registry's slots (deploy/registry.py)
SERVE_API_KEY_ENV = "AUTORETRAIN_SERVE_API_KEY"  # what `autoretrain serve` reads by default
# Re-read the registry at least this often even when its files look unchanged (a clock that
# jumped, a file system that keeps mtimes coarse).
FORCED_REREAD_S = 30.0


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the registry said at one moment: slot -> version id, version id -> (kind, hosted id)."""

    slots: dict[str, str] = field(default_factory=dict)
    versions: dict[str, tuple[str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One resolved upstream: where to POST, the model name it is sent, how to authenticate."""

    slot: str  # the slot (or version id) served, recorded on the run
    kind: str  # openai_compatible | azure_openai | serve
    url: str  # the chat completions URL
    model: str  # the `model` sent upstream (Azure: the deployment, ignored by the service)
    version: str | None  # the registry version, when the registry named one
    headers: tuple[tuple[str, str], ...] = ()  # fixed credentials (an API key)
    token: Callable[[], str] | None = field(default=None, compare=False)  # Entra ID bearer

    @property
    def recorded_model(self) -> str:
        """What the run records as its model: the version id (what canary analysis and the
        ledger speak) when there is one, else the upstream's model name."""
        return self.version or self.model

    @property
    def has_credentials(self) -> bool:
        return bool(self.headers) or self.token is not None


def read_registry(settings: Settings) -> RegistrySnapshot | None:
    """The registry's slots and versions, or None when it cannot be read now (locked)."""
    from autoretrain.deploy.registry import ModelRegistry
    from autoretrain.runs.store import connect

    path = settings.paths.database
    if not path.exists():
        return RegistrySnapshot()
    try:
        con = connect(path, read_only=True, config={}, wait_s=0.0)
    except Exception as exc:  # StoreLocked, or another process replacing the file
        log.debug("registry not readable now (%s); keeping the last answer", exc)
        return None
    try:
        registry = ModelRegistry.from_settings(con, settings, read_only=True)
        versions = {v.id: (v.kind, v.hosted_model_id) for v in registry.versions()}
        return RegistrySnapshot(registry.slots(), versions)
    except Exception as exc:  # a damaged registry is a RegistryError: say it, keep serving
        log.warning("cannot read the model registry: %s; keeping the last answer", exc)
        return None
    finally:
        con.close()


class SlotResolver:
    """Names -> targets over a cached registry snapshot (see the module docstring)."""

    def __init__(self, settings: Settings, reader: Callable[[Settings], Any] = read_registry):
        self.settings = settings
        self.config = settings.gateway
        self.reader = reader
        self.snapshot = RegistrySnapshot()
        self.read_at = 0.0  # monotonic time of the last successful read
        self.stale_reads = 0  # reads that failed and kept the last answer
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        self._tokens: dict[str, Callable[[], str] | None] = {}

    # -- the registry -------------------------------------------------------------------------

    def _files_stamp(self) -> tuple:
        stamp = []
        database = self.settings.paths.database
        for path in (database, database.with_name(database.name + ".wal")):
            try:
                stat = path.stat()
                stamp.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the registry if its files changed (or `force`). Blocking: call it from a
        thread. True when the snapshot is current."""
        with self._lock:
            stamp = self._files_stamp()
            fresh = time.monotonic() - self.read_at < FORCED_REREAD_S
            if not force and stamp == self._stamp and fresh:
                return True
            snapshot = self.reader(self.settings)
            if snapshot is None:
                self.stale_reads += 1
                return False
            if snapshot.slots != self.snapshot.slots:
                log.info("registry slots: %s", snapshot.slots or "(none)")
            self.snapshot, self._stamp, self.read_at = snapshot, stamp, time.monotonic()
        self._prepare_credentials()
        return True

    def _prepare_credentials(self) -> None:
        # Entra ID's first token can take seconds: fetch it here, off the request path.
        for spec in self.config.targets.values():
            if spec.kind == "azure_openai" and spec.use_entra_id:
                self._entra_token(spec.base_url.rstrip("/"))

    # -- names --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name a request can use now: held slots, versions, configured targets."""
        snap = self.snapshot
        found = {s for s in SLOTS if self.resolve(s) is not None}
        found |= {v for v in snap.versions if self.resolve(v) is not None}
        found |= set(self.config.targets)
        return sorted(found)

    def known(self, name: str) -> bool:
        return name in SLOTS or name in self.snapshot.versions or name in self.config.targets

    def resolve(self, name: str) -> Target | None:
        """The target `name` forwards to now, or None (an empty slot with no fixed target, an
        unknown name, a hosted version with no endpoint configured)."""
        snap = self.snapshot
        version = (
            snap.slots.get(name) if name in SLOTS else (name if name in snap.versions else None)
        )
        kind, hosted = snap.versions.get(version, ("", None)) if version else ("", None)
        configured = self.config.targets.get(version) if version else None
        configured = configured or self.config.targets.get(name)
        if configured is None and kind == "hosted":
            configured = self._profile_target()
        if configured is not None:
            if configured.model:  # a fixed model: the registry does not rule this target
                return self._target(name, configured, configured.model, None)
            if version is not None:
                return self._target(
                    name, configured, self._upstream_name(configured, version, hosted), version
                )
            return self._target(name, configured, name, None)
        local = kind == "local"
        if local and self.config.serve_url:
            key = os.environ.get(SERVE_API_KEY_ENV)
            headers = (("authorization", f"Bearer {key}"),) if key else ()
            url = f"{self.config.serve_url.rstrip('/')}/chat/completions"
            # The version id, not the slot name: what was resolved is what is served.
            return Target(name, "serve", url, version, version, headers)
        return None

    def _profile_target(self) -> GatewayTarget | None:
        """A hosted version with no target of its own is served where the active provider
        profile points (its versions live there): OpenAI-compatible `base_url`, or Azure."""
        profile = self.settings.providers.get(self.settings.provider)
        if profile is None:
            return None
        if profile.kind == "openai_compatible" and profile.base_url:
            return GatewayTarget(base_url=profile.base_url, api_key_env=profile.api_key_env)
        if profile.kind == "azure_openai" and profile.azure_endpoint:
            return GatewayTarget(
                kind="azure_openai",
                base_url=profile.azure_endpoint,
                api_key_env=profile.api_key_env,
                api_version=profile.api_version,
            )
        return None

    def _upstream_name(self, spec: GatewayTarget, version: str, hosted: str | None) -> str:
        """The name a registry version has upstream: on Azure its own deployment
        (deploy/azure.py names one per version), elsewhere its hosted model id."""
        if spec.kind == "azure_openai":
            from autoretrain.deploy.azure import deployment_name

            profile = self.settings.providers.get(self.settings.provider)
            prefix = profile.deployment_prefix if profile else "autoretrain"
            return deployment_name(version, prefix=prefix)
        return hosted or version

    def _target(self, slot: str, spec: GatewayTarget, model: str, version: str | None) -> Target:
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        base = spec.base_url.rstrip("/")
        if spec.kind == "azure_openai":
            url = (
                f"{base}/openai/deployments/{model}/chat/completions?api-version={spec.api_version}"
            )
            token = self._tokens.get(base) if spec.use_entra_id else None
            headers = (("api-key", key),) if key and token is None else ()
            return Target(slot, "azure_openai", url, model, version, headers, token)
        headers = (("authorization", f"Bearer {key}"),) if key else ()
        return Target(
            slot, "openai_compatible", f"{base}/chat/completions", model, version, headers
        )

    def _entra_token(self, endpoint: str) -> Callable[[], str] | None:
        """A bearer-token provider for Azure OpenAI that has produced a token once, or None
        (then the key is used), decided once per endpoint as providers/azure_openai.py does."""
        if endpoint in self._tokens:
            return self._tokens[endpoint]
        provider, why = token_provider(COGNITIVE_SERVICES_SCOPE)
        if provider is not None:
            log.info("%s: authenticating with Microsoft Entra ID", endpoint)
        else:
            log.info("%s: Entra ID unavailable (%s); using the API key", endpoint, why)
        self._tokens[endpoint] = provider
        return provider
