"""Host and Origin normalisation and the guard's decisions, on plain ASGI scopes."""

import asyncio
import threading

import pytest

from tandem.app.security import BodyLimit, HostGuard, cookie_value, hash_key, is_loopback, key_matches, normal_host, origin_parts


@pytest.mark.parametrize(
    "header, expected",
    [
        ("127.0.0.1:8742", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("localhost.", "localhost"),
        ("LocalHost.:8742", "localhost"),
        ("[::1]:8742", "::1"),
        ("[::ffff:127.0.0.1]:8742", "127.0.0.1"),
        ("::ffff:7f00:1", "127.0.0.1"),
        ("evil.example:80", "evil.example"),
        ("", ""),
    ],
)
def test_host_header_is_normalised(header, expected):
    assert normal_host(header) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "LOCALHOST", "localhost.", "::1",
                                  "::ffff:127.0.0.1", "[::1]"])
def test_every_loopback_spelling_is_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "evil.example", "localhost.evil.example", "::", "128.0.0.1", ""])
def test_other_hosts_are_not(host):
    assert not is_loopback(host)


def test_origin_parts():
    assert origin_parts("http://127.0.0.1:8742") == ("http", "127.0.0.1", 8742)
    assert origin_parts("https://Evil.Example") == ("https", "evil.example", 443)
    assert origin_parts("http://localhost") == ("http", "localhost", 80)
    for bad in ("null", "file://", "chrome-extension://abc", "http://[::1", "http://h:99999"):
        assert origin_parts(bad) is None


def run_async(coro):
    """asyncio.run in a thread of its own: a browser test earlier in the session may have left an
    event loop running in this one."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=asyncio.run(coro)))
    thread.start()
    thread.join()
    return box.get("result")


def run(guard, path="/api/health", method="GET", headers=(), client=("127.0.0.1", 5000), port=8742):
    scope = {"type": "http", "method": method, "path": path, "server": ("127.0.0.1", port), "client": client,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    run_async(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"])


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("headers, status", [
    ([("Host", "127.0.0.1:8742")], 200),
    ([("Host", "LOCALHOST:8742")], 200),
    ([("Host", "127.0.0.2:8742")], 200),
    ([("Host", "rebind.evil:8742")], 403),
    ([("Host", "")], 403),
    ([("Host", "127.0.0.1:8742"), ("Origin", "http://127.0.0.1:8742")], 200),
    ([("Host", "127.0.0.1:8742"), ("Origin", "http://localhost:8742")], 200),
    ([("Host", "127.0.0.1:8742"), ("Origin", "http://localhost:9999")], 403),  # another local app
    ([("Host", "127.0.0.1:8742"), ("Origin", "http://evil.example")], 403),
    ([("Host", "127.0.0.1:8742"), ("Origin", "null")], 403),
    ([("Host", "127.0.0.1:8742"), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors")], 403),
    ([("Host", "127.0.0.1:8742"), ("Sec-Fetch-Site", "same-site"), ("Sec-Fetch-Mode", "cors")], 403),
    ([("Host", "127.0.0.1:8742"), ("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "cors")], 200),
])
def test_loopback_guard(headers, status):
    got, sent_headers = run(HostGuard(ok_app), headers=headers)
    assert got == status
    assert sent_headers[b"x-content-type-options"] == b"nosniff"
    assert b"frame-ancestors 'none'" in sent_headers[b"content-security-policy"]
    assert sent_headers[b"referrer-policy"] == b"no-referrer"


def test_a_link_from_another_site_may_open_the_page_but_not_an_api():
    guard = HostGuard(ok_app)
    nav = [("Host", "127.0.0.1:8742"), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate")]
    assert run(guard, path="/", headers=nav)[0] == 200
    assert run(guard, path="/api/models/x/plan", headers=nav)[0] == 403


def test_lan_mode_takes_ip_hosts_and_wants_the_key_from_other_machines():
    key = "k" * 20
    guard = HostGuard(ok_app, allowed_hosts={"tandem.lan"}, lan=True, key_hash=hash_key(key))
    lan_client = ("192.168.1.30", 5000)
    assert run(guard, headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 401
    assert run(guard, headers=[("Host", "192.168.1.5:8742"), ("Authorization", f"Bearer {key}")], client=lan_client)[0] == 200
    assert run(guard, headers=[("Host", "tandem.lan:8742"), ("X-API-Key", key)], client=lan_client)[0] == 200
    assert run(guard, headers=[("Host", "192.168.1.5:8742"), ("Authorization", "Bearer wrong")], client=lan_client)[0] == 401
    assert run(guard, headers=[("Host", "rebind.evil:8742"), ("Authorization", f"Bearer {key}")], client=lan_client)[0] == 403
    assert run(guard, path="/", headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 200  # the page itself
    assert run(guard, headers=[("Host", "127.0.0.1:8742")])[0] == 200  # this machine needs no key
    keyed = [("Host", "192.168.1.5:8742"), ("Authorization", f"Bearer {key}")]
    for path, method in (("/api/settings", "GET"), ("/api/settings/api-key", "POST"), ("/api/hub/import", "POST"),
                         ("/api/hub/models/x", "DELETE")):  # this machine's own business, key or not
        assert run(guard, path=path, method=method, headers=keyed, client=lan_client)[0] == 403
        assert run(guard, path=path, method=method, headers=[("Host", "127.0.0.1:8742")])[0] == 200
    assert run(guard, path="/openapi.json", headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 401
    # a browser signed in sends the key as its cookie; the sign-in itself needs no key
    cookie = [("Host", "192.168.1.5:8742"), ("Cookie", f"theme=dark; tandem_key={cookie_value(key)}")]
    assert run(guard, headers=cookie, client=lan_client)[0] == 200
    assert run(guard, headers=[("Host", "192.168.1.5:8742"), ("Cookie", "tandem_key=wrong")], client=lan_client)[0] == 401
    assert run(guard, path="/api/auth", method="POST", headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 200
    assert run(guard, path="/api/authx", method="POST", headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 401
    for page_file in ("/api.js", "/v1.css", "/docs.html"):  # the page's own files are not the API
        assert run(guard, path=page_file, headers=[("Host", "192.168.1.5:8742")], client=lan_client)[0] == 200


def test_only_the_hash_of_a_key_is_compared():
    assert hash_key("tdm-abc") != "tdm-abc" and len(hash_key("tdm-abc")) == 64
    assert key_matches("tdm-abc", hash_key("tdm-abc"))
    assert not key_matches("tdm-abd", hash_key("tdm-abc"))
    assert not key_matches("", hash_key("")) and not key_matches("x", None)


def test_body_limit_counts_declared_and_chunked_bodies():
    async def read_all(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    def post(chunks, declared=None):
        headers = [(b"content-length", str(declared).encode())] if declared is not None else []
        scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return queue.pop(0)

        async def send(m):
            sent.append(m)

        run_async(BodyLimit(read_all, limit=10)(scope, receive, send))
        return sent[0]["status"], sent[-1]["body"]

    assert post([b"12345"], declared=5) == (200, b"5")
    assert post([b"x" * 11], declared=11)[0] == 413
    assert post([b"12345", b"678"]) == (200, b"8")
    assert post([b"123456", b"789012"])[0] == 413
