"""Request guards for a server that lives on the user's own machine.

DNS rebinding (Ollama CVE-2024-28224): a web page on evil.example can resolve its name to
127.0.0.1 and talk to a local server. Bound to loopback, Tandem therefore answers only requests
whose Host is a loopback name, and refuses cross-site browser requests (a foreign Origin).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def host_name(value: str) -> str:
    """'localhost:8742' -> 'localhost', '[::1]:80' -> '::1'; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def origin_host(origin: str) -> str | None:
    if origin == "null":
        return None
    try:
        return urlsplit(origin).hostname
    except ValueError:
        return None


class HostGuard:
    """ASGI middleware: 403 for an unexpected Host header or a foreign Origin."""

    def __init__(self, app, allowed_hosts: set[str] | None):
        self.app = app
        # None: any host (the person chose to serve beyond loopback)
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts} | LOOPBACK_NAMES

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            host = host_name(headers.get("host", ""))
            if host not in self.allowed:
                return await _deny(send, f"Host {host!r} is not allowed. Open Tandem at http://127.0.0.1.")
            origin = headers.get("origin")
            if origin is not None and origin_host(origin) not in self.allowed:
                return await _deny(send, "Cross-site requests to Tandem are refused.")
        return await self.app(scope, receive, send)


async def _deny(send, message: str) -> None:
    body = json.dumps({"error": {"code": "forbidden", "message": message, "type": "invalid_request_error"}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
