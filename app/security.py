"""Request guards for a server that lives on the user's own machine.

DNS rebinding (Ollama CVE-2024-28224): a web page on evil.example can resolve its name to
127.0.0.1 and talk to a local server. Tandem therefore answers only requests whose Host is a
loopback name or address (or, serving the LAN with an API key, an IP address or a configured
name), refuses browser requests from any other origin (scheme, host and port), and refuses
cross-site fetches marked by the browser (Sec-Fetch-Site) even without an Origin header. Every
response carries headers that keep other sites from framing or sniffing it. Request bodies are
bounded before the app reads them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost"}
API_ROOTS = ("/api", "/v1", "/openapi.json", "/docs", "/redoc")


def is_api_path(path: str) -> bool:
    """An API path (or the API's schema and docs), not a file of the page such as /api.js."""
    return any(path == root or path.startswith(root + "/") for root in API_ROOTS)


# What only this machine may do, key or not: change settings (and read the key), take files from
# paths on this machine, delete models.
LOCAL_ONLY = ("/api/settings", "/api/hub/import", "/api/app/", "/api/remotes", "/api/pool")  # /api/settings/... included
# Where a browser on another device trades the key for a cookie: reachable without the key.
SIGN_IN = "/api/auth"
KEY_COOKIE = "tandem_key"


def hash_key(key: str) -> str:
    """How an API key is kept: its SHA-256 (keys are 192 random bits: nothing to guess from it)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, key_hash: str | None) -> bool:
    """Whether `key` is the key whose hash is kept, compared in constant time."""
    return bool(key) and bool(key_hash) and hmac.compare_digest(hash_key(key), key_hash)


def cookie_value(key: str) -> str:
    """The key as the sign-in cookie holds it: base64url, so that no key needs quoting."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii")


def _cookie_key(header: str) -> str:
    """The key in the sign-in cookie of a Cookie header ("" when absent or unreadable)."""
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == KEY_COOKIE:
            try:
                return base64.urlsafe_b64decode(v.strip('"').encode("ascii")).decode("utf-8")
            except (ValueError, UnicodeError):
                return ""
    return ""

SECURITY_HEADERS = [
    # The page's own meta CSP says the same for documents; the header also covers every other
    # response and adds frame-ancestors, which a meta tag cannot.
    (b"content-security-policy", b"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def normal_host(value: str) -> str:
    """A host name or address as comparisons need it: lower case, no trailing dot, no brackets,
    no port, an IPv4-mapped IPv6 address as its IPv4 address. 'LOCALHOST.:80' -> 'localhost'."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    value = value.rstrip(".")
    ip = _ip(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip) if ip is not None else value


def _ip(value: str):
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """localhost, the whole of 127.0.0.0/8, ::1 and IPv4-mapped loopback, in any spelling."""
    name = normal_host(host)
    if name in LOOPBACK_NAMES:
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


def is_ip_literal(host: str) -> bool:
    return _ip(normal_host(host)) is not None


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header; None for 'null' or anything unparsable."""
    if origin.strip() == "null":
        return None
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, normal_host(parts.hostname), port or (443 if parts.scheme == "https" else 80)


class HostGuard:
    """ASGI middleware: 403 for an unexpected Host, a foreign Origin or a cross-site fetch; 401
    for a LAN client without the API key; security headers on every response.

    lan: the server listens beyond loopback. Then IP-address Hosts are accepted too (a rebinding
    page always uses a name), and clients other than this machine must send the API key.
    """

    def __init__(self, app, allowed_hosts: set[str] | None = None, lan: bool = False, key_hash: str | None = None):
        self.app = app
        self.allowed = {normal_host(h) for h in (allowed_hosts or ())}
        self.lan = lan
        self.key_hash = key_hash  # the API key's hash (security.hash_key); the key itself is never kept

    def host_ok(self, host: str) -> bool:
        name = normal_host(host)
        return bool(name) and (is_loopback(name) or name in self.allowed or (self.lan and is_ip_literal(name)))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        denied = self.check(scope, headers)
        if denied is not None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            status, message = denied
            return await _deny(send, status, message)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in SECURITY_HEADERS if k not in have]]}
            await send(message)

        return await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    def check(self, scope, headers: dict) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not self.host_ok(host):
            return 403, f"Host {normal_host(host)!r} is not allowed. Open Tandem at http://127.0.0.1."
        origin = headers.get("origin")
        if origin is not None:
            parts = origin_parts(origin)
            server_port = (scope.get("server") or (None, None))[1]
            if parts is None or not self.host_ok(parts[1]) or (server_port and parts[2] != server_port):
                return 403, "Cross-site requests to Tandem are refused."
        site = headers.get("sec-fetch-site")
        if site in ("cross-site", "same-site"):
            # A link from another page may open the app itself, never run an API call.
            navigation = scope.get("method") == "GET" and headers.get("sec-fetch-mode") == "navigate"
            if not navigation or is_api_path(scope["path"]):
                return 403, "Cross-site requests to Tandem are refused."
        if self.lan and not is_loopback((scope.get("client") or ("", 0))[0] or ""):
            path = scope["path"]
            if is_api_path(path) and path != SIGN_IN and not self.key_ok(headers):
                return 401, ("This Tandem server needs its API key: send it as 'Authorization: Bearer KEY' "
                             "(the key is on the Settings page of the machine that runs Tandem).")
            if path.startswith(LOCAL_ONLY) or (scope.get("method") == "DELETE" and path.startswith("/api/hub/models")):
                return 403, "Only the computer that runs Tandem can do this."
        return None

    def key_ok(self, headers: dict) -> bool:
        """The key as a bearer token, an X-API-Key header, or the cookie a browser got at sign-in."""
        given = headers.get("authorization", "")
        token = (given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-api-key", "")
                 or _cookie_key(headers.get("cookie", "")))
        return key_matches(token, self.key_hash)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads any of it
    (declared with Content-Length, or counted while a chunked body arrives)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"The request body is larger than {self.limit // (1024 * 1024)} MiB. "
                   "Send less (e.g. a shorter conversation), or raise TANDEM_MAX_BODY_MB.")
        length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _deny(send, 400, "The Content-Length header is not a number.")
            if declared > self.limit:
                return await _deny(send, 413, message)
            return await self.app(scope, receive, send)
        # No length given: read the body here, up to the limit, then hand it on.
        chunks, total = [], 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                return
            total += len(event.get("body", b""))
            if total > self.limit:
                return await _deny(send, 413, message)
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _deny(send, status: int, message: str) -> None:
    code = {401: "invalid_api_key", 403: "forbidden", 413: "too_large"}.get(status, "bad_request")
    body = json.dumps({"error": {"code": code, "message": message, "type": "invalid_request_error",
                                 "param": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})
