"""What one connection may cost `autoretrain serve`: a body size limit enforced while reading, a
deadline for the body, and one for the request line and headers.

uvicorn's `timeout_keep_alive` only covers the idle time between requests: a client that sends
half its headers, or half its body, would be held forever. The header deadline lives in the HTTP
protocol (the app never sees a request whose headers did not arrive); the body deadline and the
size limit live in the app, which reads the body chunk by chunk (uvicorn pauses the socket while
the app has not taken what came, so a big body is never buffered whole).
"""

from __future__ import annotations

import asyncio
from typing import Any

from autoretrain.serve_requests import RequestError

# After the limit is passed, up to this much more is read and thrown away, so that an ordinary
# client (which sends its whole body before reading the answer) sees the 413 instead of a reset
# connection. A body announced bigger than that is refused without reading any of it.
DRAIN_BYTES = 64 * 1024 * 1024


async def read_body(receive: Any, headers: Any, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, or a RequestError: 413 once it passes `max_bytes` (what came is thrown
    away, never kept), 408 if it has not all arrived within `timeout_s`."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + DRAIN_BYTES:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "the client went away before sending its body")
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                size += len(chunk)
                if size <= max_bytes:
                    chunks.append(chunk)
                    continue
                chunks.clear()  # over the limit: keep nothing, read on only to answer cleanly
                if size > max_bytes + DRAIN_BYTES:
                    break
    except TimeoutError:
        raise RequestError(
            408,
            f"the request body did not arrive within {timeout_s:g} s",
            "request_timeout",
        ) from None
    if size > max_bytes:
        raise _too_large(size, max_bytes)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> RequestError:
    return RequestError(
        413,
        f"the request body is {size} bytes or more, above the server's limit of {max_bytes}",
        "request_too_large",
    )


def header_deadline_protocol(base: type, timeout_s: float) -> type:
    """uvicorn's HTTP protocol class `base`, closing a connection whose next request line and
    headers have not all arrived `timeout_s` after it opened or after its last response."""

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            deadline = getattr(self, "_header_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            previous = getattr(self, "_header_deadline", None)
            if previous is not None:
                previous.cancel()
            # A request whose headers are complete gets a new cycle: the same cycle at the
            # deadline means none did.
            waiting_on = self.cycle
            self._header_deadline = self.loop.call_later(timeout_s, self._expire, waiting_on)

        def _expire(self, waiting_on: Any) -> None:
            if self.cycle is waiting_on and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline
