"""One file from the hub into `<file>.part`: resumed with HTTP Range, retried, checked by SHA-256.

huggingface_hub resolves the file (auth, the redirect to the CDN, size and etag) before every
attempt, since CDN addresses are signed and expire; the bytes are streamed here (app.hub.http)
because it has no pause, no resume into a chosen file and no stall limit. The partial file is
the truth about progress: after a crash or a SIGKILL the download goes on from its size, and the
SHA-256 of the whole file (the prefix hashed again on resume) decides whether it is kept.
A connection that breaks keeps every byte that arrived; a stall detected inside a 1 MiB read
loses that read's bytes (the standard library's buffered reader does not report them), which are
fetched again.

The bytes are read with the standard library's http.client, `readinto` one reused buffer: on a
2-core machine that keeps up with curl, where an httpx stream (an object per 64 KiB piece)
reached about two thirds of it. Proxies from the environment and further redirects are honoured.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

from tandem.app import __version__
from tandem.app.hub.client import GatedRepo, HubClient, HubError, HubNotFound, endpoint, token

CHUNK = 1 << 20


class TransferError(HubError):
    """A download that stopped; `retry_later` says whether trying again may help."""

    def __init__(self, message: str, code: str, retry_later: bool = True):
        super().__init__(message)
        self.code, self.retry_later = code, retry_later


class Stopped(Exception):
    """The download was paused or cancelled by a person (not an error)."""


@dataclass
class TransferOptions:
    stall_s: float = 30.0  # no byte for this long: the connection is dropped and tried again
    retries: int = 6  # attempts in a row without progress before giving up
    backoff_s: float = 0.5  # first wait between attempts, doubled each time (at most 30 s)

    @classmethod
    def from_env(cls) -> "TransferOptions":
        """TANDEM_DOWNLOAD_STALL_S, TANDEM_DOWNLOAD_RETRIES, TANDEM_DOWNLOAD_BACKOFF_S override the defaults."""
        d = cls()
        try:
            return cls(float(os.environ.get("TANDEM_DOWNLOAD_STALL_S", d.stall_s)),
                       int(os.environ.get("TANDEM_DOWNLOAD_RETRIES", d.retries)),
                       float(os.environ.get("TANDEM_DOWNLOAD_BACKOFF_S", d.backoff_s)))
        except ValueError as err:
            raise HubError(f"A TANDEM_DOWNLOAD_* setting is not a number ({err}); fix or unset it.") from None


def sha256_of(path: Path, upto: int | None = None) -> "hashlib._Hash":
    h = hashlib.sha256()
    left = upto if upto is not None else path.stat().st_size
    with path.open("rb") as f:
        while left > 0:
            block = f.read(min(8 * CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def fetch(client: HubClient, repo_id: str, revision: str | None, name: str, size: int | None, sha256: str | None,
          part: Path, stop: threading.Event, progress: Callable[[int], None],
          options: TransferOptions = TransferOptions()) -> str:
    """Download one repo file into `part` (resuming what is there); return its SHA-256.

    Raises Stopped when `stop` is set, TransferError when it cannot finish.
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    hasher = sha256_of(part, have) if have else hashlib.sha256()
    if have:
        progress(have)
    failures = 0
    while size is None or have < size:
        if stop.is_set():
            raise Stopped()
        try:
            url, hub_size, _ = client.file_location(repo_id, name, revision)
            size = size if size is not None else hub_size
            if size is not None and have >= size:
                break
            got, last = _stream(url, part, have, size, hasher, stop, progress, options.stall_s)
        except (HubNotFound, GatedRepo) as err:
            raise TransferError(str(err), err.code, retry_later=False) from err
        except _Restart as err:
            part.unlink(missing_ok=True)
            progress(-(have + err.got))
            have, hasher = 0, hashlib.sha256()
            continue
        except TransferError:
            raise
        except HubError as err:  # the hub itself unreachable or failing: worth another try
            got, last = 0, TransferError(str(err), err.code)
        have += got
        if size is None and last is None:
            break  # no size known and the stream ended cleanly: that was the whole file
        if got:
            failures = 0
            continue
        failures += 1
        if failures > options.retries:
            raise last or TransferError(f"{name}: the server keeps ending the file early. Resume to try again.", "network")
        if stop.wait(min(30.0, options.backoff_s * 2 ** (failures - 1))):
            raise Stopped()
    digest = hasher.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise TransferError(
            f"{name} arrived damaged: its SHA-256 is {digest[:16]}..., the hub says {sha256[:16]}.... "
            "The file was deleted; retry the download.", "checksum_mismatch")
    return digest


class _Restart(Exception):
    """The server ignored the Range request or sent too much: the file starts again from byte 0."""

    def __init__(self, got: int = 0):
        self.got = got


def _stream(url: str, part: Path, have: int, size: int | None, hasher, stop: threading.Event,
            progress: Callable[[int], None], stall_s: float) -> tuple[int, TransferError | None]:
    """Append bytes [have, size) from url to part. Returns (bytes that arrived, the error that ended
    the attempt early or None); every byte counted is on disk and in `hasher`."""
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    got = 0
    tok = token()
    auth = (urlsplit(endpoint()).hostname, tok) if tok else None
    try:
        conn, r = open_get(url, headers, stall_s, auth)
    except (OSError, http.client.HTTPException) as err:
        return 0, TransferError(f"The connection failed ({type(err).__name__}).", "network")
    try:
        if r.status == 416 and size is not None and have >= size:
            return 0, None
        if r.status in (401, 403, 404):
            raise TransferError(f"The CDN refused the file ({r.status}); open the repo again and retry.",
                                "refused", retry_later=False)
        if r.status >= 400:
            return 0, TransferError(f"The server answered {r.status}.", "server_error")
        if have and (r.status == 200 or not (r.getheader("Content-Range") or "").startswith(f"bytes {have}-")):
            raise _Restart()  # a range we did not ask for cannot be appended
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with part.open("ab", buffering=0) as f:
            while True:
                try:
                    n = r.readinto(buf)
                except (TimeoutError, socket.timeout):
                    return got, TransferError(f"No data for {stall_s:g} s from the server (stalled).", "stalled")
                except (OSError, http.client.HTTPException) as err:
                    return got, TransferError(f"The connection broke ({type(err).__name__}).", "network")
                if not n:
                    break
                if size is not None and have + got + n > size:
                    raise _Restart(got)
                try:
                    f.write(view[:n])
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise TransferError(
                            f"The disk holding {part.parent} is full. Free some space, then resume the download.",
                            "disk_full", retry_later=False) from err
                    raise
                hasher.update(view[:n])
                got += n
                progress(n)
                if stop.is_set():
                    raise Stopped()
    finally:
        conn.close()
    if size is not None and have + got < size:
        return got, TransferError("The server ended the file early.", "network")
    return got, None


MAX_REDIRECTS = 5
_ssl_context: ssl.SSLContext | None = None


def _context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for url (through a proxy when the environment names one) and the request target."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise http.client.InvalidURL(f"not an http(s) address: {url}")
    port = u.port or (443 if u.scheme == "https" else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    proxy = urllib.request.getproxies().get(u.scheme)
    if proxy and not urllib.request.proxy_bypass(u.hostname):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=timeout, context=_context())
            conn.set_tunnel(u.hostname, port)
            return conn, target
        return http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=timeout), url
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, port, timeout=timeout, context=_context()), target
    return http.client.HTTPConnection(u.hostname, port, timeout=timeout), target


def open_get(url: str, headers: dict[str, str], timeout: float, auth: tuple[str, str] | None = None):
    """(connection, response) of a GET, redirects followed. `timeout` bounds the connect and every
    read: a server that sends nothing for that long raises TimeoutError (a stall).

    auth: (host, token) sends the token to that host only, never to a CDN it redirects to.
    """
    for _ in range(MAX_REDIRECTS + 1):
        conn, target = _connect(url, timeout)
        sent = {"User-Agent": f"tandem/{__version__}", **headers}
        if auth and urlsplit(url).hostname == auth[0]:
            sent["Authorization"] = f"Bearer {auth[1]}"
        try:
            conn.request("GET", target, headers=sent)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            url = urljoin(url, resp.getheader("Location"))
            conn.close()
            continue
        return conn, resp
    raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")
