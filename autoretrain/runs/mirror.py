"""Azure Blob mirror of the landing zone and artifacts.

The local copy is the truth; the mirror catches up. A file is uploaded to
`<container>/<prefix>/<path relative to the data root>` with its sha256 in the blob's metadata,
so an unchanged file is never sent twice and a rewritten one is sent again. A small state file
(`<root>/mirror-state.json`) remembers what was synced, keyed by size and mtime, so a routine
sync reads neither the files nor the container for what it already sent. When the state does
not know a file (new file, lost state, an upload whose answer was lost in an outage), the mirror
lists that file's folder once and compares hashes before uploading. `verify=True` lists the whole
prefix and trusts nothing local, which repairs blobs deleted or lost remotely.

Each file is retried with exponential backoff. When one file has used all its retries on an
unreachable service, the rest of that sync is not attempted (an outage would otherwise cost
minutes of backoff per file): they are reported as failed, and the next sync uploads exactly
what is missing. `sync` never raises on a storage error; it returns a `SyncReport`.

Secrets (account keys, SAS tokens, the connection string) never reach logs or reports: every
message that leaves this module passes through `Redactor` (`runs/azure_storage.py`, which holds
what this mirror shares with the Table mirror).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from autoretrain.runs.azure_storage import (
    Outage,
    Redactor,
    describe,
    failure,
    load_state,
    retry,
    save_state,
    service_client,
)

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

    from autoretrain.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "mirror-state.json"
STATE_VERSION = 1
HASH_METADATA_KEY = "sha256"
# Save the state every this many uploads, so a killed sync loses little of what it learned.
_STATE_SAVE_EVERY = 100
_HASH_CHUNK = 1 << 20

Outcome = Literal["uploaded", "skipped", "failed"]
ProgressCallback = Callable[[str, Outcome], None]


@dataclass
class FailedFile:
    path: str
    reason: str


@dataclass
class SyncReport:
    """What one sync did. Paths are relative to the data root, in POSIX form."""

    destination: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[FailedFile] = field(default_factory=list)
    bytes_uploaded: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class _Synced:
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    relative: str


class _Pass:
    """The shared, thread-safe bookkeeping of one sync."""

    def __init__(
        self, report: SyncReport, state: dict[str, _Synced], progress: ProgressCallback | None
    ):
        self.report = report
        self.state = state
        self.progress = progress
        self.remote: dict[str, str | None] | None = None  # whole-prefix listing (verify)
        self.folders: dict[str, dict[str, str | None]] = {}  # one-level listings, by folder
        self.outage = threading.Event()
        self.lock = threading.Lock()
        self._unsaved = 0

    def record(self, relative: str, synced: _Synced, uploaded: bool) -> dict[str, _Synced] | None:
        """Remember a synced file; a copy of the state when enough uploads piled up to save it."""
        with self.lock:
            self.state[relative] = synced
            self._unsaved += uploaded
            if self._unsaved < _STATE_SAVE_EVERY:
                return None
            self._unsaved = 0
            return dict(self.state)

    def done(self, relative: str, outcome: Outcome, size: int = 0) -> None:
        with self.lock:
            if outcome == "uploaded":
                self.report.uploaded.append(relative)
                self.report.bytes_uploaded += size
            else:
                self.report.skipped.append(relative)
        log.debug("mirror: %s %s", outcome, relative)
        if self.progress:
            self.progress(relative, outcome)

    def fail(self, relative: str, reason: str) -> None:
        log.warning("mirror: %s failed: %s", relative, reason)
        with self.lock:
            self.report.failed.append(FailedFile(relative, reason))
        if self.progress:
            self.progress(relative, "failed")


_Redactor = Redactor  # its name before it moved to runs/azure_storage.py (shared with Table)


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _is_container_missing(exc: BaseException) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) and (
        getattr(exc, "error_code", None) == "ContainerNotFound" or "ContainerNotFound" in str(exc)
    )


class BlobMirror:
    """Mirrors files under a data root into one container and prefix."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        root: Path,
        *,
        prefix: str = "autoretrain",
        state_path: Path | None = None,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        workers: int = 4,
        secrets: Iterable[str] = (),
        default_sources: Iterable[Path] | None = None,
    ):
        self.service = service
        self.container = container
        self.root = root.resolve()
        self.prefix = prefix.strip("/")
        self.state_path = state_path or self.root / STATE_FILE
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.workers = max(1, workers)
        self.default_sources = list(default_sources) if default_sources is not None else None
        self._redact = Redactor(secrets)

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobMirror | None:
        """The mirror the settings describe, or None when no container is configured.

        Auth: the connection string in `mirror.connection_string_env` when that variable is set
        (development, Azurite); otherwise `DefaultAzureCredential` against `mirror.account_url`.
        """
        conf = settings.mirror
        if not conf.container:
            return None
        from azure.storage.blob import BlobServiceClient

        service, secrets = service_client(
            BlobServiceClient,
            conf,
            endpoint=conf.account_url,
            endpoint_setting="mirror.account_url",
            enabled_by="mirror.container",
            enabled_value=conf.container,
        )
        paths = settings.paths
        return cls(
            service,
            conf.container,
            paths.root,
            prefix=conf.prefix,
            max_retries=conf.max_retries,
            backoff_s=conf.backoff_s,
            backoff_max_s=conf.backoff_max_s,
            workers=conf.workers,
            secrets=secrets,
            default_sources=[paths.landing, paths.datasets, paths.models, paths.reports],
        )

    @property
    def destination(self) -> str:
        """Where blobs go, without credentials: account endpoint, container, prefix."""
        host = self.service.primary_hostname
        account = self.service.account_name or ""
        scheme = self.service.scheme
        base = (
            f"{scheme}://{host}/{account}"
            if account and account not in host
            else f"{scheme}://{host}"
        )
        return f"{base}/{self.container}/{self.prefix}".rstrip("/")

    def blob_name(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __repr__(self) -> str:
        return f"BlobMirror({self.destination!r})"

    # ---- sync ---------------------------------------------------------------------------

    def sync(
        self,
        paths: list[Path] | None = None,
        verify: bool = False,
        progress: ProgressCallback | None = None,
    ) -> SyncReport:
        """Upload new and changed files; skip the rest.

        `paths`: files or folders under the data root (absolute, or relative to it); None means
        the landing zone and the artifact folders. `verify`: list the container and compare
        every file's hash against its blob, ignoring the local state. `progress` is called
        with each file's path and outcome (from worker threads when `workers` > 1).
        """
        started = time.monotonic()
        files = self._collect(paths)
        run = _Pass(SyncReport(self.destination), self._load_state(), progress)
        log.info("mirror: %d files to check against %s", len(files), self.destination)
        try:
            # What the state vouches for (same size and mtime) needs neither a read nor a request.
            to_check = [item for item in files if verify or not self._vouched(item, run)]
            if to_check:
                self._check_and_upload(to_check, run, verify)
        finally:
            self._save_state(run.state)
            run.report.duration_s = time.monotonic() - started
        report = run.report
        log.info(
            "mirror: %d uploaded (%d bytes), %d unchanged, %d failed in %.1f s",
            len(report.uploaded),
            report.bytes_uploaded,
            len(report.skipped),
            len(report.failed),
            report.duration_s,
        )
        return report

    def _vouched(self, item: _LocalFile, run: _Pass) -> bool:
        known = run.state.get(item.relative)
        try:
            stat = item.path.stat()
        except OSError:
            return False  # the read in _sync_one reports it
        if known is None or (known.size, known.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            return False
        run.done(item.relative, "skipped")
        return True

    def _check_and_upload(self, files: list[_LocalFile], run: _Pass, verify: bool) -> None:
        try:
            self._retry(self._ensure_container, what="create container")
            if verify:
                run.remote = self._list(self.blob_name(""))
        except Exception as exc:
            reason = self._redact(f"storage not usable: {failure(exc)}")
            log.warning("mirror: %s", reason)
            for item in files:
                run.fail(item.relative, reason)
            return
        if self.workers == 1:
            for item in files:
                self._sync_one(item, run)
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="mirror") as pool:
                list(pool.map(lambda item: self._sync_one(item, run), files))

    def _sync_one(self, item: _LocalFile, run: _Pass) -> None:
        if run.outage.is_set():
            run.fail(item.relative, "not attempted: storage unreachable earlier in this sync")
            return
        blob = self.blob_name(item.relative)
        try:
            with open(item.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                sha = _sha256(handle)
                known = run.state.get(item.relative)
                if run.remote is not None:
                    needed = run.remote.get(blob) != sha
                elif known is not None and known.sha256 == sha:
                    needed = False  # touched, not changed
                else:
                    needed = self._folder_hashes(blob, run).get(blob) != sha
                if needed:
                    self._retry(lambda: self._upload(blob, handle, sha), what=f"upload {blob}")
        except Outage as exc:
            run.outage.set()
            run.fail(item.relative, self._redact(str(exc)))
            return
        except OSError as exc:
            run.fail(item.relative, f"cannot read local file: {exc.strerror or exc}")
            return
        except Exception as exc:
            run.fail(item.relative, self._redact(describe(exc)))
            return
        synced = _Synced(sha, stat.st_size, stat.st_mtime_ns)
        # Periodic saves from several workers may land out of order; the save after the last
        # worker is complete, and an entry lost in between costs a folder listing, not a resend.
        snapshot = run.record(item.relative, synced, uploaded=needed)
        if snapshot is not None:
            self._save_state(snapshot)
        run.done(item.relative, "uploaded" if needed else "skipped", synced.size)

    # ---- storage calls ------------------------------------------------------------------

    def _container(self) -> ContainerClient:
        return self.service.get_container_client(self.container)

    def _ensure_container(self) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        try:
            self._container().create_container()
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            # 403 from the service (not a credential that could not get a token): an identity
            # allowed to write blobs but not to create containers. The container must already
            # exist, and the uploads will say so if it does not.
            if exc.status_code != 403:
                raise
            log.debug(
                "mirror: not allowed to create container %s; assuming it exists", self.container
            )

    def _upload(self, blob: str, handle: BinaryIO, sha: str) -> None:
        handle.seek(0)
        try:
            self._container().upload_blob(
                blob, handle, overwrite=True, metadata={HASH_METADATA_KEY: sha}
            )
        except Exception as exc:
            if not _is_container_missing(exc):
                raise
            # Deleted (or lost by an emulator restart) since this sync began: recreate, resend.
            self._ensure_container()
            handle.seek(0)
            self._container().upload_blob(
                blob, handle, overwrite=True, metadata={HASH_METADATA_KEY: sha}
            )

    def _list(self, prefix: str, *, one_level: bool = False) -> dict[str, str | None]:
        """Blob name -> sha256 from metadata (None when a blob has none)."""

        def listing() -> dict[str, str | None]:
            container = self._container()
            items = (
                container.walk_blobs(name_starts_with=prefix, include=["metadata"])
                if one_level
                else container.list_blobs(name_starts_with=prefix, include=["metadata"])
            )
            found: dict[str, str | None] = {}
            for blob in items:
                metadata = getattr(blob, "metadata", None)
                if metadata is not None:  # BlobPrefix entries (sub-folders) have no metadata
                    found[blob.name] = metadata.get(HASH_METADATA_KEY)
            return found

        return self._retry(listing, what=f"list {prefix or '/'}")

    def _folder_hashes(self, blob: str, run: _Pass) -> dict[str, str | None]:
        folder = blob.rsplit("/", 1)[0] + "/" if "/" in blob else ""
        with run.lock:
            cached = run.folders.get(folder)
        if cached is None:
            cached = self._list(folder, one_level=True)
            with run.lock:
                run.folders[folder] = cached
        return cached

    def _retry(self, action: Callable[[], Any], *, what: str) -> Any:
        """Run `action`, retrying transient failures with exponential backoff and jitter."""
        return retry(
            action,
            what=what,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            backoff_max_s=self.backoff_max_s,
            redact=self._redact,
            logger=log,
            label="mirror",
        )

    # ---- local side ---------------------------------------------------------------------

    def _collect(self, paths: list[Path] | None) -> list[_LocalFile]:
        if paths is None:
            sources = [p for p in (self.default_sources or [self.root]) if p.exists()]
        else:
            sources = []
            for path in paths:
                full = (path if path.is_absolute() else self.root / path).resolve()
                if not full.is_relative_to(self.root):
                    raise ValueError(f"mirror: {path} is outside the data root {self.root}")
                if not full.exists():
                    raise ValueError(f"mirror: {path} does not exist (data root {self.root})")
                sources.append(full)
        found: dict[str, _LocalFile] = {}
        for source in sources:
            candidates = [source] if source.is_file() else sorted(source.rglob("*"))
            for path in candidates:
                if not path.is_file() or path.resolve() == self.state_path.resolve():
                    continue
                relative = path.resolve().relative_to(self.root)
                # Hidden names are temp files of atomic writes (".part-x.jsonl.<uuid>.tmp").
                if any(part.startswith(".") for part in relative.parts) or path.suffix == ".tmp":
                    continue
                found.setdefault(relative.as_posix(), _LocalFile(path, relative.as_posix()))
        return [found[key] for key in sorted(found)]

    def _load_state(self) -> dict[str, _Synced]:
        data = load_state(
            self.state_path,
            version=STATE_VERSION,
            destination=self.destination,
            logger=log,
            label="mirror",
        )
        if data is None:
            return {}
        try:
            return {name: _Synced(**entry) for name, entry in data["files"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            log.warning("mirror: ignoring malformed state %s (%s)", self.state_path, exc)
            return {}

    def _save_state(self, state: dict[str, _Synced]) -> None:
        # Losing the state costs one folder listing per folder next time, never a wrong sync.
        files = {name: asdict(entry) for name, entry in sorted(state.items())}
        save_state(
            self.state_path,
            {"files": files},
            version=STATE_VERSION,
            destination=self.destination,
            logger=log,
            label="mirror",
        )
