"""The guards on a real server: rebinding, foreign origins, framing, oversized bodies, LAN without a key."""

import json
import socket
import sqlite3

import httpx
import pytest

from tandem.app.errors import TandemError
from tandem.app.security import hash_key
from tandem.app.server import ServerThread
from tests.conftest import make_settings


def test_a_loopback_name_in_any_spelling_keeps_the_guard_on(tmp_path):
    with ServerThread(make_settings(tmp_path, host="LOCALHOST")) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        with httpx.Client(timeout=30) as c:
            assert c.get(url + "/api/health").status_code == 200
            r = c.post(url + "/api/conversations", json={}, headers={"Host": "rebind.evil", "Origin": "http://evil.example"})
            assert r.status_code == 403 and "not allowed" in r.json()["error"]["message"]
            r = c.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       headers={"Origin": "http://localhost:9999"})
            assert r.status_code == 403  # another program's page on this machine
            r = c.get(url + "/api/hardware", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
            assert r.status_code == 403
            ok = c.post(url + "/api/conversations", json={}, headers={"Origin": f"http://localhost:{srv.port}"})
            assert ok.status_code == 201


def test_every_response_carries_the_security_headers(server):
    with httpx.Client(timeout=30) as c:
        for path in ("/", "/app.js", "/api/health", "/api/conversations/nope", "/no-such-file"):
            r = c.get(server.url + path)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert "'unsafe-inline'" not in r.headers["content-security-policy"]


def test_an_oversized_body_is_refused_before_it_is_read(server):
    huge = b'{"messages": [' + b'{"role": "user", "content": "x"},' * 1_100_000 + b'{"role": "user", "content": "x"}]}'
    assert len(huge) > 32 * 1024 * 1024
    with httpx.Client(timeout=60) as c:
        r = c.post(server.url + "/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "TANDEM_MAX_BODY_MB" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/api/health").status_code == 200


def test_serving_beyond_this_machine_needs_an_api_key(tmp_path):
    with pytest.raises(TandemError, match="TANDEM_API_KEY"):
        ServerThread(make_settings(tmp_path, host="0.0.0.0"))
    key = "a-long-enough-secret-key"
    with ServerThread(make_settings(tmp_path, host="0.0.0.0", api_key=key)) as srv:
        with httpx.Client(timeout=30) as c:  # this machine itself needs no key
            assert c.get(f"http://127.0.0.1:{srv.port}/api/health").status_code == 200
            assert c.get(f"http://127.0.0.1:{srv.port}/api/health", headers={"Host": "rebind.evil"}).status_code == 403


def test_request_limits_answer_400_with_the_limit(server):
    url = server.url + "/v1/chat/completions"
    one = {"role": "user", "content": "hi"}
    cases = [
        ({"messages": [one] * 5000}, "messages"),
        ({"messages": [one], "stop": ["x"] * 17}, "stop"),
        ({"messages": [one], "stop": ["x" * 300]}, "stop"),
        ({"messages": [{"role": "user", "content": "x" * 1_000_001}]}, "content"),
        ({"messages": [one], "max_tokens": 10**9}, "max_tokens"),
    ]
    with httpx.Client(timeout=60) as c:
        for body, word in cases:
            r = c.post(url, json=body)
            assert r.status_code == 400, (word, r.status_code)  # OpenAI's status for an invalid request
            message = r.json()["error"]["message"]
            assert word in message and len(message) < 2000, message
        ok = c.post(url, json={"messages": [one], "stop": ["x"] * 16, "max_tokens": 2})
        assert ok.status_code == 200


def lan_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_network_access_from_the_settings_page_applies_at_the_next_start(tmp_path):
    with ServerThread(make_settings(tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        s = c.patch("/api/settings", json={"lan_access": True}).json()
        key = s["new_api_key"]  # shown in this answer only
        assert s["values"]["lan_access"] and key.startswith("tdm-") and len(key) > 30
        assert s["values"]["api_key_set"] and s["values"]["api_key_hint"] == key[:8] + "…"
        assert s["running"]["lan_access"] is False and "lan_access" in s["restart"]
        again = c.get("/api/settings").json()
        assert "new_api_key" not in again and key not in json.dumps(again)
        assert "new_api_key" not in c.patch("/api/settings", json={"lan_access": True}).json()  # one key, made once
        assert c.patch("/api/settings", json={"lan_access": "yes"}).status_code == 422
    with sqlite3.connect(tmp_path / "tandem.db") as db:  # kept as its hash only
        stored = dict(db.execute("select key, value from settings").fetchall())
    assert key not in json.dumps(stored) and json.loads(stored["api_key_hash"]) == hash_key(key)
    with ServerThread(make_settings(tmp_path)) as srv:  # the next start listens on the network, with the key
        assert srv.settings.host == "0.0.0.0" and srv.settings.key_hash == hash_key(key)
        url = f"http://127.0.0.1:{srv.port}"
        with httpx.Client(timeout=30) as c:
            assert c.get(url + "/api/health", headers={"Host": "192.168.1.5"}).status_code == 200
            assert c.get(url + "/api/health", headers={"Host": "rebind.evil"}).status_code == 403
            renewed = c.post(url + "/api/settings/api-key").json()["new_api_key"]
            assert renewed != key
            c.patch(url + "/api/settings", json={"lan_access": False})
    with ServerThread(make_settings(tmp_path)) as srv:
        assert srv.settings.loopback
        httpx.patch(srv.url + "/api/settings", json={"lan_access": True})
    with ServerThread(make_settings(tmp_path, host="127.0.0.1")) as srv:  # an explicit --host wins
        assert srv.settings.host == "127.0.0.1"


def test_a_key_kept_in_full_by_an_earlier_version_becomes_its_hash_and_still_works(tmp_path):
    key = "tdm-" + "x" * 32
    with ServerThread(make_settings(tmp_path)):
        pass
    with sqlite3.connect(tmp_path / "tandem.db") as db:  # as version 0.x kept it
        db.execute("delete from _migrations where name = 'm011_api_key_hash'")
        db.execute("insert into settings (key, value) values ('api_key', ?)", [json.dumps(key)])
    with ServerThread(make_settings(tmp_path, host="0.0.0.0")) as srv:
        assert srv.settings.key_hash == hash_key(key)
    with sqlite3.connect(tmp_path / "tandem.db") as db:
        stored = dict(db.execute("select key, value from settings").fetchall())
    assert "api_key" not in stored and key not in json.dumps(stored)
    assert json.loads(stored["api_key_hint"]) == key[:8] + "…"


@pytest.mark.skipif(lan_address() is None, reason="this machine has no network address besides loopback")
def test_lan_clients_need_the_key_and_a_browser_signs_in_for_a_cookie(tmp_path):
    key = "q8Zk/a long,secret+key=="  # characters a cookie value cannot hold as they are
    with ServerThread(make_settings(tmp_path, host="0.0.0.0", api_key=key)) as srv:
        lan = f"http://{lan_address()}:{srv.port}"
        with httpx.Client(base_url=lan, timeout=60) as c:  # from the network address: not this machine's loopback
            r = c.get("/v1/models")
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            assert c.get("/").status_code == 200  # the page itself, which then asks for the key
            r = c.post("/api/auth", json={"key": "wrong-key-wrong-key"})
            assert r.status_code == 401 and "Settings page" in r.json()["error"]["message"]
            r = c.post("/api/auth", json={"key": key})
            assert r.status_code == 204
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert c.get("/api/health").status_code == 200  # the cookie goes with every request now
            assert c.get("/api/settings").status_code == 403  # still this machine's own business
        with httpx.Client(timeout=30) as c:
            assert c.get(f"http://127.0.0.1:{srv.port}/v1/models").status_code == 200  # this machine: no key


def test_the_api_key_command_prints_a_key_once_and_keeps_its_hash(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tandem.app", "--data-dir", str(tmp_path), "api-key"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("tdm-") and "only time" in out.stderr
    with sqlite3.connect(tmp_path / "tandem.db") as db:
        stored = dict(db.execute("select key, value from settings").fetchall())
    assert key not in json.dumps(stored) and json.loads(stored["api_key_hash"]) == hash_key(key)
    with ServerThread(make_settings(tmp_path, host="0.0.0.0")) as srv:  # serving the network now has a key
        assert srv.settings.key_hash == hash_key(key)
