"""Errors a person can fix, turned into one message (what, where, what to do) at the top of the CLI.

A bad setting, a database another process holds, a missing credential or a damaged registry is
not a bug: it deserves a sentence, not a traceback. Anything else is a bug and keeps its
traceback. `-v` logs the traceback of the errors turned into messages too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# DuckDB's text when another process holds the database file (the lock is per process).
LOCK_TEXT = "Could not set lock"
_LOCK_DETAIL = re.compile(
    r'Could not set lock on file "(?P<path>[^"]+)": Conflicting lock is held in '
    r"(?P<program>.+?) \(PID (?P<pid>\d+)\)"
)


def user_message(exc: BaseException) -> str | None:
    """The message for an error a person can fix, or None for a bug (keep the traceback)."""
    from autoretrain.settings import SettingsError

    chain = list(_chain(exc))
    for err in chain:
        if isinstance(err, SettingsError):
            return (
                f"bad settings: {err}\n"
                "Fix the value named above (docs/configuration.md lists every setting and its "
                "range), or point AUTORETRAIN_CONFIG at another file."
            )
    known = _known_types()
    for err in chain:
        if isinstance(err, known):
            return str(err)
    for err in chain:
        if LOCK_TEXT in str(err):
            return lock_message(exc, err)
    return None


def lock_message(outer: BaseException, lock_error: BaseException) -> str:
    """Who holds the database and what to do, from DuckDB's lock error."""
    found = _LOCK_DETAIL.search(str(lock_error))
    if found:
        what = (
            f"the database {found['path']} is held by another process (PID {found['pid']}, "
            f"{found['program']})"
        )
    else:
        what = f"the database is held by another process ({lock_error})"
    # A wrapper that said more (how long it waited, which store) keeps its own words in front.
    said = str(outer) if outer is not lock_error and LOCK_TEXT not in str(outer) else ""
    return (
        f"{said + ': ' if said else ''}{what}. Only one process may write it at a time: another "
        "`autoretrain ingest` or `loop`, a Dagster run, or a Python session with it open. Wait "
        "for that process to finish (or stop it) and run this command again."
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _known_types() -> tuple[type[BaseException], ...]:
    """Errors whose messages are written for the person at the keyboard. Imported here, on the
    error path only, so `autoretrain --help` stays fast."""
    from autoretrain.deploy.registry import RegistryError
    from autoretrain.providers.base import ProviderError

    known: tuple[type[BaseException], ...] = (ProviderError, RegistryError)
    try:  # the run store's own lock error (it waited, then says who holds the store)
        from autoretrain.runs.store import StoreLocked

        known += (StoreLocked,)
    except ImportError:
        pass
    return known
