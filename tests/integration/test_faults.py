"""Faults a person's machine has: the server killed (SIGKILL) mid-download and while it saves
caches, and a full disk under the data folder. Nothing saved earlier is lost; the app goes on."""

import signal
import sqlite3
import time

import httpx

from tests.conftest import read_sse, start_server_process as start
from tests.fixtures.hubserver import Fault, HubServer

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def intact(data_dir):
    db = sqlite3.connect(data_dir / "tandem.db")
    try:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def wait_for(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_sigkill_mid_download_resumes_after_the_restart(tmp_path, model_path):
    with HubServer() as hub:
        hub.add_repo(SMOL, {FILE: model_path})
        hub.file(SMOL, FILE).fault = Fault(throttle_bps=10_000_000)
        env = {"HF_ENDPOINT": hub.url}
        proc, url = start(tmp_path, **env)
        try:
            r = httpx.post(url + "/api/hub/downloads", json={"repo_id": SMOL, "file": FILE}, timeout=60)
            assert r.status_code in (200, 201, 202), r.text
            download = r.json()["id"]
            wait_for(lambda: httpx.get(f"{url}/api/hub/downloads/{download}").json()["done_bytes"] > 5_000_000)
            kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        intact(tmp_path)
        hub.file(SMOL, FILE).fault = Fault()
        proc, url = start(tmp_path, **env)
        try:
            done = wait_for(lambda: (lambda d: d if d["status"] in ("complete", "failed") else None)(
                httpx.get(f"{url}/api/hub/downloads/{download}").json()), timeout=120)
            assert done["status"] == "complete", done
            assert sum(m["id"] == done["model_id"] for m in httpx.get(url + "/api/models").json()) == 1
            # the second process went on from the bytes the first had written, not from the start
            ranges = [g["range"] for g in hub.cdn_gets(FILE) if not g["range"] or g["range"].endswith("-")]
            assert ranges[-1] and ranges[-1] != "bytes=0-", ranges
        finally:
            stop(proc)


def test_sigkill_while_caches_are_saved_leaves_nothing_broken(tmp_path):
    for round_ in range(3):
        proc, url = start(tmp_path)
        try:
            with httpx.Client(base_url=url, timeout=120) as c:
                ids = [c.post("/api/conversations", json={}).json()["id"] for _ in range(2)]
                for cid in ids:  # switching conversations saves the previous one's cache
                    with c.stream("POST", f"/api/conversations/{cid}/messages",
                                  json={"content": "Tell me about rivers. " * 40, "max_tokens": 4}) as r:
                        list(read_sse(r))
                with c.stream("POST", f"/api/conversations/{ids[0]}/messages",
                              json={"content": "And lakes?", "max_tokens": 4}) as r:
                    for event, _ in read_sse(r):
                        if event == "start":  # the other conversation's cache is being saved about now
                            kill(proc)
                            break
        except httpx.HTTPError:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
        intact(tmp_path)
    proc, url = start(tmp_path)
    try:
        contexts = tmp_path / "contexts"
        assert not list(contexts.glob("*.tmp"))  # a killed writer's temporary files are gone
        with httpx.Client(base_url=url, timeout=120) as c:
            for conv in c.get("/api/conversations").json():  # every conversation goes on
                with c.stream("POST", f"/api/conversations/{conv['id']}/messages",
                              json={"content": "Thanks.", "max_tokens": 2}) as r:
                    assert dict(read_sse(r))["done"]["message"]["status"] == "complete"
    finally:
        stop(proc)


def fill(folder):
    """Take all the space of a filesystem; returns the filler file."""
    filler = folder / "other-program.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\1" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_reported_and_earlier_data_stays(small_disk):
    data = small_disk / "data"
    proc, url = start(data)
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            cid = c.post("/api/conversations", json={"title": "Before the disk filled"}).json()["id"]
            with c.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Hi", "max_tokens": 4}) as r:
                assert dict(read_sse(r))["done"]["message"]["status"] == "complete"
            filler = fill(small_disk)
            r = c.post(f"/api/conversations/{cid}/messages", json={"content": "Hello again " * 300, "max_tokens": 4})
            assert r.status_code == 507, r.text
            assert "full" in r.json()["error"]["message"] and "Free some space" in r.json()["error"]["message"]
            assert c.get("/api/health").json()["status"] == "ok"
            filler.unlink()
            msgs = c.get(f"/api/conversations/{cid}").json()["messages"]
            assert [m["content"] for m in msgs][:1] == ["Hi"] and msgs[1]["status"] == "complete"
            with c.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Again", "max_tokens": 4}) as r:
                assert dict(read_sse(r))["done"]["message"]["status"] == "complete"
    finally:
        stop(proc)
    intact(data)
