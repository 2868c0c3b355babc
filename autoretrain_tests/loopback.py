"""A loopback HTTP server in a daemon thread: the lifecycle the test doubles share
(`AzureDouble`, `IdentityServer`)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, Self


class LoopbackServer:
    """Serves `handler` on 127.0.0.1 at a free port once started. The handler class sees this
    object as its attribute `handler_attribute` (e.g. `self.double` inside the handler)."""

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    handler_attribute: ClassVar[str]
    noun: ClassVar[str] = "server"  # what the "start() ... first" assertion calls it

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        handler = type("Handler", (self.handler,), {self.handler_attribute: self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        assert self._server, f"start() the {self.noun} first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"
