"""A loopback managed identity endpoint of the kind App Service and Container Apps provide.

Those hosts set `IDENTITY_ENDPOINT` (a local URL) and `IDENTITY_HEADER` (a secret) in the app's
environment; the app asks for a token with

    GET {IDENTITY_ENDPOINT}?resource=<resource>&api-version=2019-08-01
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

and gets `{"access_token", "expires_on" (epoch seconds, a string), "resource", "token_type",
"client_id"}`. A request without the right header, api-version or resource is refused with a
`statusCode`/`message` body, as the App Service endpoint does. `azure-identity`
(`ManagedIdentityCredential`, inside `DefaultAzureCredential`, through MSAL) speaks exactly this,
so pointing the two variables here makes the credential path real in a test: the token request,
its resource and the credential's caching are all observable in `requests`.
"""

from __future__ import annotations

import json
import secrets
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autoretrain_tests.loopback import LoopbackServer

API_VERSION = "2019-08-01"


class IdentityServer(LoopbackServer):
    handler_attribute = "identity"

    def __init__(self, tokens: dict[str, str], *, lifetime_s: int = 3600):
        self.tokens = tokens  # resource -> the access token issued for it
        self.lifetime_s = lifetime_s
        self.header = secrets.token_hex(16)  # IDENTITY_HEADER
        self.client_id = "00000000-0000-0000-0000-00000000c11d"
        self.requests: list[dict[str, Any]] = []

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/msi/token"

    def environment(self) -> dict[str, str]:
        """The variables App Service / Container Apps would set."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}

    def answer(self, path: str, query: dict[str, str], header: str | None) -> tuple[int, dict]:
        if path != "/msi/token":
            return 404, {"statusCode": 404, "message": f"{path} not found"}
        if header != self.header:
            return 401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong"}
        if query.get("api-version") != API_VERSION:
            return 400, {"statusCode": 400, "message": f"api-version must be {API_VERSION}"}
        resource = query.get("resource", "")
        token = self.tokens.get(resource)
        if token is None:
            # The service's answer to an unknown resource is a vague 500 (MSAL says so too).
            return 500, {"statusCode": 500, "message": f"no token for resource {resource!r}"}
        return 200, {
            "access_token": token,
            "expires_on": str(int(time.time()) + self.lifetime_s),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": self.client_id,
        }


class _Handler(BaseHTTPRequestHandler):
    identity: IdentityServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        header = self.headers.get("X-IDENTITY-HEADER")
        self.identity.requests.append(
            {"method": "GET", "path": split.path, "query": query, "header": header}
        )
        status, body = self.identity.answer(split.path, query, header)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


IdentityServer.handler = _Handler  # what LoopbackServer.start() serves
