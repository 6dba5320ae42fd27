"""The serving core through a real uvicorn server: Stop at any moment, clients that leave,
a bounded queue answered with 429, engine state in health, missing model files, SIGTERM."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tandem.app.server import ServerThread
from tests.conftest import make_settings, read_sse

COUNT = "Count from 1 to 1000, one number per line."


def essay_prompt(words: int = 600, salt: str = "") -> str:
    """A long prompt; a different salt shares nothing with another one beyond the template's start."""
    return f"{salt} Summarise this: " + " ".join(f"word{i % 97}" for i in range(words))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("data"), max_queue=1)) as s:
        yield s


@pytest.fixture()
def api(srv):
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c


def conversation(api) -> str:
    r = api.post("/api/conversations", json={})
    assert r.status_code == 201
    return r.json()["id"]


def cached_after(api, content: str) -> tuple[int, int]:
    """(cached, prompt) tokens of a one-token reply to `content`: what the cache still held."""
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    t = r.json()["tandem"]
    return t["cached_tokens"], t["prompt_tokens"]


def wait_idle(api, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        engine = api.get("/api/health").json()["engine"]
        if all(not m["running"] and not m["queued"] for m in engine["models"]):
            return
        time.sleep(0.05)
    raise AssertionError("the engine stayed busy")


def test_stop_while_the_model_reads_a_long_message(api):
    cid, prompt = conversation(api), essay_prompt()
    events = []
    with api.stream("POST", f"/api/conversations/{cid}/messages", json={"content": prompt, "max_tokens": 8}) as r:
        for event, data in read_sse(r):
            events.append((event, data))
            if event == "start":
                time.sleep(0.3)  # inside the prompt's evaluation (seconds on this machine)
                assert api.post(f"/api/conversations/{cid}/stop").json() == {"stopped": True}
    assert [e for e, _ in events if e != "progress"] == ["start", "done"]
    progress = [d for e, d in events if e == "progress"]
    assert progress and all(p["total"] == events[0][1]["prompt_tokens"] for p in progress)
    assert progress[-1]["done"] < progress[-1]["total"]  # stopped before the whole prompt was read
    done = events[-1][1]
    assert done["message"]["status"] == "stopped" and done["stats"]["completion_tokens"] == 0
    cached, total = cached_after(api, prompt)
    assert cached < total - 1  # the prompt was cut short, not read to the end first
    stored = api.get(f"/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]


def test_stop_while_waiting_for_another_reply(api):
    busy, waiting = conversation(api), conversation(api)
    seen = threading.Event()
    first_events = []

    def long_reply():
        with api.stream("POST", f"/api/conversations/{busy}/messages", json={"content": COUNT, "max_tokens": 400}) as r:
            for event, data in read_sse(r):
                first_events.append(event)
                if event == "token":
                    seen.set()

    t = threading.Thread(target=long_reply)
    t.start()
    assert seen.wait(60)
    events = []
    with api.stream("POST", f"/api/conversations/{waiting}/messages", json={"content": "Hi!"}) as r:
        for event, data in read_sse(r):
            events.append((event, data))
            if event == "queued":
                assert data["position"] == 1
                assert api.post(f"/api/conversations/{waiting}/stop").json() == {"stopped": True}
    assert [e for e, _ in events] == ["queued", "done"] and events[-1][1]["message"] is None
    assert "done" not in first_events  # it left the queue while the other reply was still written
    assert api.get(f"/api/conversations/{waiting}").json()["messages"] == []  # nothing half-stored
    api.post(f"/api/conversations/{busy}/stop")
    t.join(60)
    r = api.post(f"/api/conversations/{waiting}/messages", json={"content": "Hi again!", "max_tokens": 4})
    assert r.status_code == 200 and "event: done" in r.text


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_its_request(api, srv, stream):
    prompt = essay_prompt(590, salt=f"Stream {stream}.")  # nothing cached from other tests
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "stream": stream}
    with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(60, read=1.0)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            if stream:
                with impatient.stream("POST", "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_lines():
                        pass
            else:
                impatient.post("/v1/chat/completions", json=body)
    cached, total = cached_after(api, prompt)
    assert cached < total - 1  # its prompt was abandoned part-way when the client left


def test_past_the_queue_bound_the_answer_is_429_with_retry_after(api, srv):
    running = threading.Event()
    results = {}

    def ask(name, content, max_tokens):
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            with c.stream("POST", "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": True}) as r:
                results[name] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content"' in line:
                        running.set()

    first = threading.Thread(target=ask, args=("first", COUNT, 300))
    first.start()
    assert running.wait(60)
    second = threading.Thread(target=ask, args=("second", "Say hi.", 4))
    second.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = api.get("/api/health").json()["engine"]
        if engine["models"] and engine["models"][0]["queued"] == 1:
            break
        time.sleep(0.02)
    health = api.get("/api/health").json()
    assert health["status"] == "ok" and health["engine"]["state"] == "busy"
    assert health["engine"]["models"][0]["queued"] == 1 and health["engine"]["models"][0]["running"]
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 4})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and "Try again" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "rate_limit_error"
    first.join(120)
    second.join(120)
    assert results == {"first": 200, "second": 200}, api.get("/api/health").json()
    wait_idle(api)
    assert api.get("/api/health").json()["engine"]["state"] == "idle"


def test_max_tokens_has_an_upper_bound(api, srv):
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**9})
    assert r.status_code == 400 and "at most 8192" in r.json()["error"]["message"]


def test_a_model_whose_file_was_deleted_is_reported_not_crashed_on(api, srv, model_path, tmp_path):
    copy = tmp_path / "doomed.gguf"
    shutil.copyfile(model_path, copy)
    store = srv.server.config.app.state.store
    store.upsert_model({"id": "doomed", "name": "doomed.gguf", "path": str(copy), "source": "local",
                        "size_bytes": copy.stat().st_size, "is_default": 0})
    copy.unlink()
    r = api.post("/v1/chat/completions", json={"model": "doomed", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 409
    assert "doomed.gguf" in r.json()["error"]["message"] and "not found" in r.json()["error"]["message"]
    assert api.get("/api/health").json()["status"] == "ok"
    assert any(m["id"] == "doomed" for m in api.get("/api/models").json())
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200  # the default model still answers


def test_sigterm_ends_the_server_cleanly_mid_reply(tmp_path):
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp_path), "TANDEM_TEMPERATURE": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "running at" in line, line + proc.stderr.read()
        url = line.split("running at ")[1].split()[0].rstrip("/")
        streaming = threading.Event()

        def reply():
            try:
                with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, json={
                        "messages": [{"role": "user", "content": COUNT}], "max_tokens": 500, "stream": True}) as r:
                    for _ in r.iter_lines():
                        streaming.set()
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=reply, daemon=True)
        t.start()
        assert streaming.wait(60)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    assert "Traceback" not in err, err


def test_only_plain_replies_calibrate_the_plain_speed(srv):
    from dataclasses import replace

    from tandem.runtime.engine import ReplyStats

    models = srv.services.models
    with models.acquire() as lease:
        served = lease.value
    machine = served.hardware.machine_id
    before = len(models.store.measurements(machine))
    plain = ReplyStats(prompt_tokens=20, completion_tokens=64, cached_tokens=0, queue_s=0.0, ttft_s=0.05,
                       decode_tps=90.0, total_s=0.8)
    models.record(served, replace(plain, spec_source="prompt_lookup", drafted_tokens=40, accepted_tokens=30), "chat")
    assert len(models.store.measurements(machine)) == before  # drafted tokens: not a plain speed
    models.record(served, plain, "chat")
    rows = models.store.measurements(machine)
    assert len(rows) == before + 1 and rows[-1]["measured_tps"] == 90.0


def test_a_default_model_that_no_longer_loads_gives_way_to_the_built_in_one(tmp_path):
    from tandem.app.services import Services
    from tandem.app.store import Store
    from tests.unit.test_gguf import gguf_bytes

    odd = tmp_path / "odd.gguf"  # a valid GGUF container, but no model llama.cpp knows
    odd.write_bytes(gguf_bytes([("w", (32,), 0, 0)], data=b"\0" * 128))
    settings = make_settings(tmp_path / "data")
    Services.open(settings).close()
    store = Store(settings.db_path)
    store.upsert_model({"id": "odd", "name": "odd.gguf", "path": str(odd), "source": "local",
                        "size_bytes": odd.stat().st_size, "is_default": 1})
    store.close()
    services = Services.open(settings)  # starts, with the built-in model
    try:
        [loaded] = services.models.loaded_models()
        assert loaded.id == "smollm2-135m-instruct-q4_1"
        defaults = [m["id"] for m in services.store.list_models() if m["is_default"]]
        assert defaults == ["smollm2-135m-instruct-q4_1"]
        assert "odd" in services.models.status()["failures"]
    finally:
        services.close()


def test_stop_pressed_before_the_reply_reaches_the_engine(api, srv, monkeypatch):
    """Stop lands while the request is still on its way (here: held at the model's lease)."""
    cid = conversation(api)
    models = srv.services.models
    real_acquire, arrived, go = models.acquire, threading.Event(), threading.Event()

    def slow_acquire(*args, **kwargs):
        arrived.set()
        go.wait(30)
        return real_acquire(*args, **kwargs)

    monkeypatch.setattr(models, "acquire", slow_acquire)
    events = []

    def post():
        with api.stream("POST", f"/api/conversations/{cid}/messages", json={"content": COUNT}) as r:
            events.extend(read_sse(r))

    t = threading.Thread(target=post)
    t.start()
    assert arrived.wait(30)
    assert api.post(f"/api/conversations/{cid}/stop").json() == {"stopped": True}
    go.set()
    t.join(60)
    assert [e for e, _ in events] == ["done"] and events[0][1]["message"] is None
    assert api.get(f"/api/conversations/{cid}").json()["messages"] == []  # nothing stored, nothing written
    monkeypatch.undo()
    r = api.post(f"/api/conversations/{cid}/messages", json={"content": "Hi", "max_tokens": 4})
    assert r.status_code == 200 and "event: done" in r.text
