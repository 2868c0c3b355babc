"""The gateway's HTTP/1.1 client to its upstreams: keep-alive connections over asyncio streams.

Why not httpx: its connection pool scans every connection (and polls each idle socket) on each
request, so its cost per call grows with the number of calls in flight. Through httpx the
gateway's throughput at 64 concurrent agents was a tenth of the upstream's called directly
(bench/gateway.py); a gateway must cost a small constant per call. An OpenAI-compatible upstream
needs little of HTTP: a POST with a JSON body, and an answer framed by Content-Length, chunked
transfer coding, or the end of the connection. That is what this client does, over TLS too
(certifi's roots when installed, as httpx uses). It does not use proxies from the environment.

A pooled connection the upstream closed while it was idle fails on its first read; the request
is then sent once more on a new connection (the upstream never answered it). Timeouts: the
connect, then each read (waiting for the status line, then for every piece of the body).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

READ_SIZE = 64 * 1024
MAX_IDLE_PER_ORIGIN = 512


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the connection: answered 502."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer in time: answered 504."""


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Response:
    """An upstream's answer: status and headers read; the body is read with `read` or
    `iter_raw`, then `aclose` puts the connection back in the pool (if the body was read
    whole and the upstream keeps it alive) or closes it."""

    def __init__(
        self,
        pool: UpstreamPool,
        origin: tuple,
        connection: _Connection,
        status: int,
        headers: dict[str, str],
        keep_alive: bool,
        no_body: bool,
    ):
        self.pool, self.origin, self.connection = pool, origin, connection
        self.status_code, self.headers = status, headers
        self.keep_alive = keep_alive
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.remaining: int | None = None
        if no_body:
            self.remaining = 0
        elif not self.chunked and length is not None:
            try:
                self.remaining = int(length)
            except ValueError:
                raise UpstreamError(f"bad Content-Length from upstream: {length!r}") from None
        if self.remaining is None and not self.chunked:
            self.keep_alive = False  # the body ends when the connection does
        self.done = self.remaining == 0
        self.closed = False

    async def _read(self, coroutine):
        try:
            async with asyncio.timeout(self.pool.timeout_s):
                return await coroutine
        except TimeoutError:
            raise UpstreamTimeout("the upstream stopped sending its answer") from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            raise UpstreamError(f"the upstream broke the connection: {exc!r}") from None

    async def iter_raw(self) -> AsyncIterator[bytes]:
        reader = self.connection.reader
        while not self.done:
            if self.chunked:
                line = await self._read(reader.readline())
                if not line:
                    raise UpstreamError("the upstream closed the connection mid-body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise UpstreamError(f"bad chunk size from upstream: {line[:40]!r}") from None
                if size == 0:
                    while (await self._read(reader.readline())) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    return
                data = await self._read(reader.readexactly(size + 2))
                yield data[:-2]
            elif self.remaining is not None:
                data = await self._read(reader.read(min(self.remaining, READ_SIZE)))
                if not data:
                    raise UpstreamError("the upstream closed the connection mid-body")
                self.remaining -= len(data)
                self.done = self.remaining == 0
                yield data
            else:
                data = await self._read(reader.read(READ_SIZE))
                if not data:
                    self.done = True
                    return
                yield data

    async def read(self) -> bytes:
        if self.remaining is not None and not self.chunked:
            data = await self._read(self.connection.reader.readexactly(self.remaining))
            self.remaining, self.done = 0, True
            return data
        return b"".join([part async for part in self.iter_raw()])

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.done and self.keep_alive and self.connection.usable():
            self.pool._release(self.origin, self.connection)
        else:
            self.connection.close()


class UpstreamPool:
    """Keep-alive connections per origin (scheme, host, port); see the module docstring."""

    def __init__(self, timeout_s: float, connect_timeout_s: float = 10.0):
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        origin = (tls, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" + ("" if parts.port is None else f":{port}")
        lines = [f"POST {path} HTTP/1.1", f"host: {host_header}", f"content-length: {len(body)}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                continue  # never let a value split the request
            lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
        for attempt in range(2):
            connection = self._take(origin) if attempt == 0 else None
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin)
            try:
                connection.writer.write(request)
                async with asyncio.timeout(self.timeout_s):
                    await connection.writer.drain()
                    status, head, keep_alive = await self._head(connection.reader)
            except TimeoutError:
                connection.close()
                raise UpstreamTimeout(
                    f"{host}:{port} did not answer in {self.timeout_s:g} s"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
                connection.close()
                if reused:
                    continue  # closed by the upstream while idle: once more, on a new one
                raise UpstreamError(f"{host}:{port} broke the connection: {exc!r}") from None
            no_body = status in (204, 304) or 100 <= status < 200
            return Response(self, origin, connection, status, head, keep_alive, no_body)
        raise UpstreamError(f"{host}:{port} closed two connections in a row")  # pragma: no cover

    async def _head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed before answering")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise ConnectionError("closed in the middle of the headers")
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue, 103 Early Hints: the answer follows
            connection = headers.get("connection", "").lower()
            keep_alive = "close" not in connection
            if version == "HTTP/1.0":
                keep_alive = "keep-alive" in connection
            return status, headers, keep_alive

    async def _connect(self, origin: tuple) -> _Connection:
        tls, host, port = origin
        context = None
        if tls:
            self._tls = self._tls or _tls_context()
            context = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if tls else None, limit=READ_SIZE
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"cannot connect to {host}:{port} within {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc}") from None
        return _Connection(reader, writer)

    def _take(self, origin: tuple) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _release(self, origin: tuple, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < MAX_IDLE_PER_ORIGIN:
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
