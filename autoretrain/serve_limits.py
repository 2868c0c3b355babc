"""What one connection may cost `autoretrain serve`: a body size limit enforced while reading, a
deadline for the body, and a deadline and size limit for the request line and headers.

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
# connection. A body announced bigger than that, or by a client that waits for "100 Continue",
# is refused without reading any of it.
DRAIN_BYTES = 64 * 1024 * 1024
# The request line and headers (nginx allows 32 KB by default, uvicorn's h11 16 KB).
MAX_HEADER_BYTES = 64 * 1024


async def read_body(receive: Any, headers: Any, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, or a RequestError: 413 once it passes `max_bytes` (what came is thrown
    away, never kept), 408 if it has not all arrived within `timeout_s`."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        # A client waiting for "100 Continue" sends nothing until told: no need to read.
        waiting = headers.get("expect", "").lower() == "100-continue"
        if waiting or int(declared) > max_bytes + DRAIN_BYTES:
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


def header_limits_protocol(base: type, timeout_s: float, max_bytes: int) -> type:
    """uvicorn's HTTP protocol class `base`, closing a connection whose next request line and
    headers have not all arrived `timeout_s` after it opened or after its last response, or
    run past `max_bytes` (answered 431 first): uvicorn's httptools parser keeps every header
    it is sent, so a header flood would otherwise grow memory without end (measured: +200 MB
    for 200 MB of headers)."""

    class HeaderLimits(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_limits()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_limits()

        def connection_lost(self, exc: Exception | None) -> None:
            deadline = getattr(self, "_header_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A request whose headers are complete gets a new cycle: until then, all that
            # came is headers (checked after each read: at most one read past the limit).
            if self.cycle is not self._waiting_on or self.transport.is_closing():
                return
            self._header_bytes += len(data)
            if self._header_bytes > max_bytes:
                self.transport.write(HEADERS_TOO_LARGE % max_bytes)
                self.transport.close()

        def _arm_header_limits(self) -> None:
            previous = getattr(self, "_header_deadline", None)
            if previous is not None:
                previous.cancel()
            self._waiting_on, self._header_bytes = self.cycle, 0
            self._header_deadline = self.loop.call_later(timeout_s, self._expire, self.cycle)

        def _expire(self, waiting_on: Any) -> None:
            if self.cycle is waiting_on and not self.transport.is_closing():
                self.transport.close()

    HeaderLimits.__name__ = f"HeaderLimits{base.__name__}"
    return HeaderLimits


_431_BODY = (
    b'{"error": {"message": "the request line and headers are over %d bytes", '
    b'"type": "invalid_request_error", "param": null, "code": "headers_too_large"}}'
)
HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\n\r\n" + _431_BODY
)
