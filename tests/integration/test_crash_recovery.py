"""A server killed mid-reply (SIGKILL: no chance to clean up) loses nothing that was streamed."""

import signal
import sqlite3
import time

import httpx

from tests.conftest import read_sse, start_server_process as start


def test_sigkill_mid_reply_keeps_the_streamed_text_marked_interrupted(tmp_path):
    proc, url = start(tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            cid = c.post("/api/conversations", json={}).json()["id"]
            shown = []
            body = {"content": "Write a 1000-word essay about the history of the bicycle.", "max_tokens": 3000}
            with c.stream("POST", f"/api/conversations/{cid}/messages", json=body) as r:
                for event, data in read_sse(r):
                    if event == "token":
                        shown.append(data["text"])
                    if len("".join(shown)) > 200:  # then a second more: past an interim save (every 0.5 s)
                        time.sleep(1.0)
                        proc.send_signal(signal.SIGKILL)
                        break
            assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    db = sqlite3.connect(tmp_path / "tandem.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    db.close()

    proc, url = start(tmp_path)  # the next start marks the cut-off reply
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            user, reply = c.get(f"/api/conversations/{cid}").json()["messages"]
            assert reply["status"] == "interrupted" and reply["role"] == "assistant"
            assert len(reply["content"]) >= 150 and "".join(shown).startswith(reply["content"][:100])
            # the conversation goes on: the cut-off reply is an assistant turn, so turns still alternate
            with c.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Thanks", "max_tokens": 4}) as r:
                events = dict(read_sse(r))
            assert events["done"]["message"]["status"] == "complete"
            assert [m["role"] for m in c.get(f"/api/conversations/{cid}").json()["messages"]] == [
                "user", "assistant", "user", "assistant"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
