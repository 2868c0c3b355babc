"""What the Azure Storage mirrors (`runs/mirror.py` for Blob, `runs/table_mirror.py` for Table)
share: the client from the settings, retries with backoff, the state file, and the scrubbing of
secrets from every message that leaves them."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoretrain.runs.archive import write_atomically
from autoretrain.settings import SettingsError

if TYPE_CHECKING:
    from autoretrain.settings import MirrorSettings

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Redactor:
    """Removes secrets from any text before it is logged or reported."""

    _PATTERNS = (
        re.compile(r"(AccountKey=)[^;\s]+", re.IGNORECASE),
        re.compile(r"(SharedAccessSignature=)[^;\s]+", re.IGNORECASE),
        re.compile(r"([?&]sig=)[^&\s]+", re.IGNORECASE),
    )

    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a connection string is removed whole before its key inside it.
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern in self._PATTERNS:
            text = pattern.sub(r"\1***", text)
        return text


class Outage(Exception):
    """The service stayed unreachable through every retry."""


def connection_string_secrets(connection_string: str) -> list[str]:
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part.strip())
    keys = ("AccountKey", "SharedAccessSignature")
    return [connection_string] + [parts[k] for k in keys if parts.get(k)]


def is_retryable(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in RETRYABLE_STATUS


def describe(exc: BaseException) -> str:
    # Storage errors carry the whole XML body over several lines; the first line says it.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def failure(exc: BaseException) -> str:
    """Why a storage call failed: an outage says it whole, any other error by its first line."""
    return str(exc) if isinstance(exc, Outage) else describe(exc)


def service_client(
    client_class: Any,
    conf: MirrorSettings,
    *,
    endpoint: str | None,
    endpoint_setting: str,
    enabled_by: str,
    enabled_value: str,
) -> tuple[Any, list[str]]:
    """A storage service client (`BlobServiceClient`, `TableServiceClient`) and the secrets its
    messages must never show.

    Auth: the connection string in `mirror.connection_string_env` when that variable is set
    (development, Azurite); otherwise `DefaultAzureCredential` against `endpoint` (the setting
    `endpoint_setting`). `enabled_by` is the setting that turned the mirror on, with its value.
    """
    # Our own backoff is the retry layer; the SDK's (10 tries, 15 s+ waits) would make a
    # stopped service look like a hang.
    client_options: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": conf.connect_timeout_s,
        "read_timeout": conf.read_timeout_s,
    }
    connection_string = os.environ.get(conf.connection_string_env, "").strip()
    if connection_string:
        secrets = connection_string_secrets(connection_string)
        try:
            service = client_class.from_connection_string(connection_string, **client_options)
        except ValueError as exc:
            raise SettingsError(
                f"mirror: ${conf.connection_string_env} is not a valid Azure Storage "
                f"connection string ({Redactor(secrets)(str(exc))})"
            ) from None
        return service, secrets
    if endpoint:
        from azure.identity import DefaultAzureCredential

        return client_class(endpoint, credential=DefaultAzureCredential(), **client_options), []
    raise SettingsError(
        f"{enabled_by} is {enabled_value!r} but there are no credentials: set "
        f"${conf.connection_string_env} to a connection string, or set "
        f"{endpoint_setting} to use DefaultAzureCredential (managed identity, az login)"
    )


def retry(
    action: Callable[[], Any],
    *,
    what: str,
    max_retries: int,
    backoff_s: float,
    backoff_max_s: float,
    redact: Redactor,
    logger: logging.Logger,
    label: str,
) -> Any:
    """Run `action`, retrying transient failures with exponential backoff and jitter; `Outage`
    when the last try failed too. `label` starts the log lines ("mirror", "table mirror")."""
    for attempt in range(max_retries + 1):
        try:
            return action()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt == max_retries:
                raise Outage(
                    f"gave up after {attempt + 1} tries: {redact(describe(exc))}"
                ) from None
            delay = min(backoff_max_s, backoff_s * 2**attempt)
            delay *= 0.5 + random.random() / 2
            logger.debug(
                "%s: %s failed (%s); retry %d/%d in %.2f s",
                label,
                what,
                redact(describe(exc)),
                attempt + 1,
                max_retries,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def load_state(
    path: Path, *, version: int, destination: str, logger: logging.Logger, label: str
) -> dict[str, Any] | None:
    """The state file's content when it was written in `version` for `destination`; None when
    there is none, or it is unreadable (logged), or it was kept for another destination."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: ignoring unreadable state %s (%s)", label, path, exc)
        return None
    # State written for another container, table or account says nothing about this one.
    if (
        not isinstance(data, dict)
        or data.get("version") != version
        or data.get("destination") != destination
    ):
        return None
    return data


def save_state(
    path: Path,
    fields: dict[str, Any],
    *,
    version: int,
    destination: str,
    logger: logging.Logger,
    label: str,
) -> None:
    """Write the state file atomically: version, destination, then `fields`. A failure is
    logged, not raised: losing the state costs work next time, never a wrong mirror."""
    data = {"version": version, "destination": destination, **fields}
    try:
        write_atomically(path, json.dumps(data, indent=1).encode("utf-8"))
    except OSError as exc:
        logger.warning("%s: could not save state %s (%s)", label, path, exc)
