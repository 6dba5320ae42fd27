"""Remote servers as models: a second real `tandem serve` as the remote, and a test server that
fails the ways remotes fail (refused, 401, an error mid-stream, a stall)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from tandem.app.server import ServerThread
from tests.conftest import make_settings, read_sse, start_server_process
from tests.integration.test_security_api import lan_address

MODEL = "smollm2-135m-instruct-q4_1"
KEY = "remote-secret-key-0123456789"
ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Another Tandem that needs its key from anywhere but its own loopback."""
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    proc, url = start_server_process(tmp_path_factory.mktemp("remote"), TANDEM_HOST="0.0.0.0", TANDEM_API_KEY=KEY)
    port = url.rsplit(":", 1)[1]
    yield f"http://{address}:{port}/v1"
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("main"), remote_timeout_s=3)) as srv:
        yield srv


@pytest.fixture()
def api(main):
    with httpx.Client(base_url=main.url, timeout=120) as c:
        yield c


def test_a_remote_needs_its_key_and_then_lists_its_models_here(api, remote, main):
    r = api.post("/api/remotes", json={"name": "box", "url": remote})
    assert r.status_code == 422 and "refused the key (HTTP 401)" in r.json()["error"]["message"]
    r = api.post("/api/remotes", json={"name": "box", "url": remote, "key": KEY})
    assert r.status_code == 201, r.text
    assert r.json()["models"] == [f"box/{MODEL}"] and r.json()["has_key"] and KEY not in r.text
    assert api.post("/api/remotes", json={"name": "box", "url": remote}).status_code == 409
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert ids == [MODEL, f"box/{MODEL}"]
    assert api.get(f"/v1/models/box/{MODEL}").json()["owned_by"] == "box"
    listed = api.get("/api/remotes").json()
    assert listed[0]["status"] == "ok" and KEY not in json.dumps(listed)
    picker = [m for m in api.get("/api/models").json() if m.get("remote")]
    assert [(m["id"], m["remote"]) for m in picker] == [(f"box/{MODEL}", "box")]


def test_chat_through_the_remote_is_the_remotes_own_reply_with_stats(api, remote, main):
    oai = openai.OpenAI(base_url=main.url + "/v1", api_key="none", max_retries=0)
    direct = openai.OpenAI(base_url=remote, api_key=KEY, max_retries=0)
    args = dict(messages=ASK, max_tokens=24, temperature=0)
    mine = direct.chat.completions.create(model=MODEL, **args).choices[0].message.content
    via = oai.chat.completions.create(model=f"box/{MODEL}", **args)
    assert via.choices[0].message.content == mine and via.model == f"box/{MODEL}"
    stats = via.model_extra["tandem"]
    assert stats["spec_source"] == "remote" and stats["ttft_s"] > 0 and stats["completion_tokens"] == via.usage.completion_tokens
    chunks = list(oai.chat.completions.create(model=f"box/{MODEL}", stream=True, **args))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mine
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="box/nope", **args)
    assert "It has: " + MODEL in info.value.body["message"]


def test_a_conversation_with_a_remote_model_streams_and_is_stored(api, remote, main):
    cid = api.post("/api/conversations", json={"model_id": f"box/{MODEL}"}).json()["id"]
    with api.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Say hi.", "max_tokens": 12}) as r:
        assert r.status_code == 200
        events = dict(read_sse(r))
    assert "error" not in events, events.get("error")
    done = events["done"]["message"]
    assert done["status"] == "complete" and done["model_id"] == f"box/{MODEL}" and done["content"]
    assert api.get(f"/api/conversations/{cid}/context").json()["source"] == "remote"
    assert api.post("/api/conversations", json={"model_id": "nobox/x"}).status_code == 404


def test_stop_closes_the_remote_request(api, remote, main):
    body = {"model": f"box/{MODEL}", "messages": [{"role": "user", "content": "Count from 1 to 500."}],
            "max_tokens": 600, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", main.url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content": ""' not in line:
                break  # the client leaves mid-reply
    health = remote.replace("/v1", "/api/health")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the remote stops writing: its model goes idle long before 600 tokens
        state = httpx.get(health, headers={"Authorization": f"Bearer {KEY}"}).json()["engine"]["state"]
        if state == "idle":
            break
        time.sleep(0.1)
    assert state == "idle"


# --- a server that fails
class Failing(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list = []  # the Authorization header of each POST

    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.headers.get("Authorization"))
        mode = type(self).mode
        if mode == "401":
            return self._json(401, {"error": {"message": "bad key"}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if mode == "ok":
            self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
        self.wfile.flush()
        if mode == "500":
            self.wfile.write(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
        elif mode == "garbage":
            self.wfile.write(b'data: 5\n\ndata: {"choices": [{"delta": {"content": [1, 2]}}]}\n\ndata: [[[[\n\n')
        elif mode == "huge":
            self.wfile.write(b"data: " + b"x" * (2 << 20))
        elif mode == "stall":
            time.sleep(8)
        elif mode == "cut":
            self.connection.shutdown(2)
            return
        self.wfile.flush()


@pytest.fixture(scope="module")
def failing():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("mode, words", [("401", "refused the key"), ("500", "CUDA out of memory"),
                                         ("stall", "went silent"), ("cut", "broke off"),
                                         ("garbage", "not a reply chunk"), ("huge", "longer than 1 MiB")])
def test_a_failing_remote_is_a_clear_error_and_the_server_goes_on(api, failing, mode, words):
    Failing.mode = "ok"
    if not any(r["name"] == "flaky" for r in api.get("/api/remotes").json()):
        url = f"http://127.0.0.1:{failing.server_address[1]}/v1"
        assert api.post("/api/remotes", json={"name": "flaky", "url": url, "key": "k" * 20}).status_code == 201
    Failing.mode = mode
    t0 = time.monotonic()
    r = api.post("/v1/chat/completions", json={"model": "flaky/m", "messages": ASK, "max_tokens": 5})
    assert r.status_code == 502 and words in r.json()["error"]["message"], r.text
    assert "k" * 20 not in r.text and time.monotonic() - t0 < 30
    listed = {x["name"]: x for x in api.get("/api/remotes").json()}
    assert "flaky" in listed
    assert api.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2}).status_code == 200


def test_what_tandem_itself_enforces_is_refused_for_a_remote_model_by_name(api, failing):
    Failing.mode = "ok"
    if not any(r["name"] == "flaky" for r in api.get("/api/remotes").json()):
        url = f"http://127.0.0.1:{failing.server_address[1]}/v1"
        assert api.post("/api/remotes", json={"name": "flaky", "url": url, "key": "k" * 20}).status_code == 201
    tool = {"type": "function", "function": {"name": "f"}}
    for extra, param in (({"tools": [tool]}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"logprobs": True}, "logprobs"), ({"logit_bias": {"5": 1}}, "logit_bias")):
        r = api.post("/v1/chat/completions", json={"model": "flaky/m", "messages": ASK, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = api.post("/api/chat", json={"model": "flaky/m", "messages": ASK, "format": "json", "stream": False})
    assert r.status_code == 400 and "format" in r.json()["error"]
    r = api.post("/api/chat", json={"model": "flaky/m", "messages": ASK, "stream": False})
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hello"  # the Ollama API reaches it too
    for method, path in (("POST", "/api/show"), ("DELETE", "/api/delete")):
        r = api.request(method, path, json={"model": "flaky/m"})
        assert r.status_code == 404 and "another server" in r.json()["error"]


def test_a_remote_added_again_with_another_key_is_not_served_by_the_old_one(api, failing):
    Failing.mode = "ok"
    url = f"http://127.0.0.1:{failing.server_address[1]}/v1"
    assert api.post("/api/remotes", json={"name": "again", "url": url, "key": "old-key-0123456789"}).status_code == 201
    assert api.post("/v1/chat/completions", json={"model": "again/m", "messages": ASK}).status_code == 200
    assert api.delete("/api/remotes/again").status_code == 204
    assert api.post("/api/remotes", json={"name": "again", "url": url, "key": "new-key-0123456789"}).status_code == 201
    Failing.seen.clear()
    assert api.post("/v1/chat/completions", json={"model": "again/m", "messages": ASK}).status_code == 200
    assert Failing.seen == ["Bearer new-key-0123456789"]
    for key in ("has space inside", "line\nbreak-0123456789"):
        r = api.post("/api/remotes", json={"name": "spaces", "url": url, "key": key})
        assert r.status_code == 422 and "one line" in r.json()["error"]["message"]
    r = api.post("/api/remotes", json={"name": "query", "url": url + "?x=1"})
    assert r.status_code == 422 and "query" in r.json()["error"]["message"]


def test_a_remote_that_stopped_answering_is_shown_so_and_can_be_removed(api, failing):
    port = failing.server_address[1]
    if not any(r["name"] == "gone" for r in api.get("/api/remotes").json()):
        assert api.post("/api/remotes", json={"name": "gone", "url": f"http://127.0.0.1:{port}"}).status_code == 201
    api.delete("/api/remotes/gone")
    assert api.post("/api/remotes", json={"name": "gone", "url": "http://127.0.0.1:9"}).status_code == 422
    assert api.delete("/api/remotes/gone").status_code == 404
    for bad in ({"name": "Bad Name", "url": "http://x"}, {"name": "ok", "url": "ftp://x"},
                {"name": "ok", "url": "http://user:pw@x/v1"}):
        assert api.post("/api/remotes", json=bad).status_code == 422


def test_the_remote_command(tmp_path, failing):
    run = lambda *a: subprocess.run([sys.executable, "-m", "tandem.app", "--data-dir", str(tmp_path), "remote", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    Failing.mode = "ok"
    out = run("add", "lab", f"http://127.0.0.1:{failing.server_address[1]}/v1")
    assert out.returncode == 0 and "lab/m" in out.stdout, out.stderr
    out = run("list")
    assert "lab" in out.stdout and "answers" in out.stdout and "lab/m" in out.stdout
    out = run("add", "bad", "http://127.0.0.1:9/v1")
    assert out.returncode == 1 and "could not be reached" in out.stderr
    assert run("rm", "lab").returncode == 0 and "No remote servers" in run("list").stdout


def test_a_model_too_big_here_names_the_tandem_where_it_would_run(tmp_path, model_path):
    from pathlib import Path

    from tandem.runtime.synth import preset, write_model
    from tests.fixtures.hubserver import HubServer

    fixtures = Path(__file__).parent.parent / "fixtures" / "hardware"
    big = write_model(tmp_path / "Big-8B.Q4_0.gguf", preset("8b"), fill="zeros")  # sparse: nothing to read
    with HubServer() as hub:
        hub.add_repo("test/Big-8B-GGUF", {big.name: big}, sha256={big.name: "0" * 64})
        proc, url = start_server_process(tmp_path / "desktop", HF_ENDPOINT=hub.url,
                                         TANDEM_HARDWARE_PROFILE=str(fixtures / "h200-16core-host.json"))
        try:
            mp = pytest.MonkeyPatch()
            mp.setenv("HF_ENDPOINT", hub.url)
            settings = make_settings(tmp_path / "laptop", hardware_profile=fixtures / "cpu-only-8gb-laptop.json")
            with ServerThread(settings) as laptop, httpx.Client(base_url=laptop.url, timeout=120) as c:
                assert c.post("/api/remotes", json={"name": "desktop", "url": url}).status_code == 201
                [entry] = c.get("/api/hub/repos/test/Big-8B-GGUF").json()["models"]
            mp.undo()
        finally:
            proc.terminate()
            proc.wait(30)
    assert entry["verdict"]["fit"] == "too_big"
    [there] = entry["elsewhere"]
    assert there["remote"] == "desktop" and there["fit"] in ("gpu", "split") and there["decode_tps"] > 0
