"""The JSON API and reply streaming against real uvicorn, the real model and a real SQLite file."""

import json
import time

import httpx

from tandem.app.server import ServerThread
from tests.conftest import make_settings, read_sse

LONG = "Count from 1 to 500, one number per line."


def new_conversation(client, **body):
    r = client.post("/api/conversations", json=body)
    assert r.status_code == 201
    return r.json()


def post_and_collect(client, cid, content, **extra):
    with client.stream("POST", f"/api/conversations/{cid}/messages", json={"content": content, **extra}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(read_sse(r))


def test_health_names_the_loaded_model(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["version"]
    assert h["model"]["id"] == "smollm2-135m-instruct-q4_1"
    assert h["model"]["n_threads"] >= 1 and h["model"]["n_ctx"] == 4096


def test_builtin_model_is_registered_as_default(client):
    [m] = client.get("/api/models").json()
    assert m["source"] == "embedded" and m["is_default"] and m["loaded"]


def test_conversation_crud(client):
    c = new_conversation(client, title="Plans")
    assert c["title"] == "Plans"
    assert any(x["id"] == c["id"] for x in client.get("/api/conversations").json())
    r = client.patch(f"/api/conversations/{c['id']}", json={"title": "Holiday plans"})
    assert r.json()["title"] == "Holiday plans"
    assert client.delete(f"/api/conversations/{c['id']}").status_code == 204
    r = client.get(f"/api/conversations/{c['id']}")
    assert r.status_code == 404
    assert "No conversation" in r.json()["error"]["message"]


def test_streamed_reply_is_stored_with_its_stats(client):
    c = new_conversation(client)
    events = post_and_collect(client, c["id"], "What is 2 + 2?")
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "done" and "token" in names
    text = "".join(d["text"] for e, d in events if e == "token")
    done = events[-1][1]
    assert done["message"]["content"] == text
    assert done["message"]["status"] == "complete"
    assert done["stats"]["completion_tokens"] >= 1

    stored = client.get(f"/api/conversations/{c['id']}").json()
    assert stored["title"] == "What is 2 + 2?"
    user, reply = stored["messages"]
    assert (user["role"], user["content"]) == ("user", "What is 2 + 2?")
    assert reply["content"] == text and reply["prompt_tokens"] == events[0][1]["prompt_tokens"]
    assert reply["decode_tps"] is None or reply["decode_tps"] > 0

    # the second turn sees the first: its prompt is longer and reuses the cached prefix
    events2 = post_and_collect(client, c["id"], "And 3 + 3?")
    assert events2[0][1]["prompt_tokens"] > events[0][1]["prompt_tokens"]
    assert events2[-1][1]["stats"]["cached_tokens"] > 0


def test_stop_half_way_keeps_the_partial_reply_marked_stopped(client, server):
    c = new_conversation(client)
    seen = []
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with client.stream("POST", f"/api/conversations/{c['id']}/messages", json={"content": LONG, "max_tokens": 400}) as r:
            for event, data in read_sse(r):
                if event == "token":
                    seen.append(data["text"])
                    if len(seen) == 5:
                        assert other.post(f"/api/conversations/{c['id']}/stop").json() == {"stopped": True}
                if event == "done":
                    done = data
    assert done["message"]["status"] == "stopped"
    assert done["message"]["finish_reason"] == "cancelled"
    assert done["message"]["content"] == "".join(seen)
    assert len(seen) < 20
    reply = client.get(f"/api/conversations/{c['id']}").json()["messages"][-1]
    assert reply["status"] == "stopped" and reply["content"] == "".join(seen)
    # nothing is running any more
    assert client.post(f"/api/conversations/{c['id']}/stop").json() == {"stopped": False}


def test_client_disconnect_stops_generation_and_stores_what_was_sent(client):
    c = new_conversation(client)
    seen = []
    with client.stream("POST", f"/api/conversations/{c['id']}/messages", json={"content": LONG, "max_tokens": 400}) as r:
        for event, data in read_sse(r):
            if event == "token":
                seen.append(data["text"])
                if len(seen) == 3:
                    break
    deadline = time.time() + 20
    while time.time() < deadline:
        messages = client.get(f"/api/conversations/{c['id']}").json()["messages"]
        if len(messages) == 2:
            break
        time.sleep(0.1)
    reply = messages[-1]
    assert reply["role"] == "assistant" and reply["status"] == "stopped"
    assert reply["content"].startswith("".join(seen))
    # the engine is free again: the next message is answered
    events = post_and_collect(client, c["id"], "Thanks!")
    assert events[-1][0] == "done"


def test_second_message_while_replying_is_a_conflict(client, server):
    c = new_conversation(client)
    with client.stream("POST", f"/api/conversations/{c['id']}/messages", json={"content": LONG, "max_tokens": 300}) as r:
        events = read_sse(r)
        assert next(events)[0] == "start"
        with httpx.Client(base_url=server.url, timeout=60) as other:
            busy = other.post(f"/api/conversations/{c['id']}/messages", json={"content": "hello?"})
            assert busy.status_code == 409
            assert "still being written" in busy.json()["error"]["message"]
            other.post(f"/api/conversations/{c['id']}/stop")
        assert [e for e, _ in events][-1] == "done"


def test_unknown_conversation(client):
    r = client.post("/api/conversations/does-not-exist/messages", json={"content": "hi"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_malformed_and_invalid_bodies(client):
    c = new_conversation(client)
    r = client.post(f"/api/conversations/{c['id']}/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]["message"]
    r = client.post(f"/api/conversations/{c['id']}/messages", json={"content": ""})
    assert r.status_code == 422 and "content" in r.json()["error"]["message"]
    r = client.post(f"/api/conversations/{c['id']}/messages", json={"content": "x", "temperature": -3})
    assert r.status_code == 422
    assert client.get(f"/api/conversations/{c['id']}").json()["messages"] == []


def test_unknown_endpoint_is_json(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "No such endpoint: GET /api/nothing-here."


def test_prompt_longer_than_context_is_refused_and_nothing_is_stored(tmp_path):
    with ServerThread(make_settings(tmp_path, n_ctx=128)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        for policy in ("stop", "drop_turns"):  # neither can cut inside a message
            c = new_conversation(client)
            assert client.patch(f"/api/conversations/{c['id']}", json={"context_policy": policy}).status_code == 200
            r = client.post(f"/api/conversations/{c['id']}/messages", json={"content": "word " * 300})
            assert r.status_code == 400
            err = r.json()["error"]
            assert err["code"] == "context_overflow"
            assert "Start a new conversation" in err["message"]
            assert client.get(f"/api/conversations/{c['id']}").json()["messages"] == []


def test_a_message_longer_than_the_window_keeps_its_start_and_end_visibly(tmp_path):
    with ServerThread(make_settings(tmp_path, n_ctx=128, max_tokens=8)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        c = new_conversation(client)
        assert client.get(f"/api/conversations/{c['id']}/context").json()["policy"] == "sink_window"
        events = post_and_collect(client, c["id"], "word " * 300, temperature=0)
        start, done = events[0][1], events[-1][1]
        assert start["context_policy"] == "sink_window"
        assert start["evicted_tokens"] > 200 and start["prompt_tokens"] < 128
        assert done["message"]["status"] == "complete"
        assert done["message"]["evicted_tokens"] == start["evicted_tokens"]


def test_conversations_survive_a_restart(tmp_path):
    with ServerThread(make_settings(tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        c = new_conversation(client)
        events = post_and_collect(client, c["id"], "Name a colour.")
        reply = events[-1][1]["message"]["content"]
    with ServerThread(make_settings(tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        stored = client.get(f"/api/conversations/{c['id']}").json()
        assert [m["content"] for m in stored["messages"]] == ["Name a colour.", reply]


def test_foreign_host_and_origin_are_refused(server):
    with httpx.Client(timeout=10) as raw:
        r = raw.get(server.url + "/api/health", headers={"Host": "evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = raw.post(server.url + "/api/conversations", json={}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        r = raw.get(server.url + "/api/health", headers={"Origin": server.url})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers


def test_ui_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>Tandem</title>" in r.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")


def test_hardware_of_this_machine(client):
    hw = client.get("/api/hardware").json()
    assert hw["cpu"]["physical_cores"] >= 1
    assert hw["memory"]["total_bytes"] > 0
    assert hw["memory"]["read_bandwidth_gbps"] > 0
    assert hw["engine"]["supports_gpu_offload"] in (True, False)


def test_model_info(client):
    info = client.get("/api/models/smollm2-135m-instruct-q4_1/info").json()
    assert info["architecture"] == "llama" and info["n_layer"] == 30 and info["weight_bytes"] > 0
    assert client.get("/api/models/nope/info").status_code == 404


def test_a_conversation_longer_than_the_context_leaves_out_its_oldest_turns_visibly(tmp_path):
    with ServerThread(make_settings(tmp_path, n_ctx=256, max_tokens=48)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        c = new_conversation(client)
        starts = []
        for i in range(6):
            events = post_and_collect(client, c["id"], f"Question {i}: tell me a fact about the number {i}.")
            assert events[-1][0] == "done", events[-1]
            starts.append(events[0][1])
        messages = client.get(f"/api/conversations/{c['id']}").json()["messages"]
        assert len(messages) == 12  # nothing is deleted from the conversation
        evicted = [s["evicted_message_ids"] for s in starts if s["evicted_message_ids"]]
        assert evicted, "the conversation outgrew 256 tokens, so some turns must have been left out"
        first_ids = [m["id"] for m in messages[:2]]
        assert evicted[-1][:2] == first_ids  # the oldest turn goes first, user message and reply together
        assert all(s["prompt_tokens"] < 256 for s in starts)
        last_reply = messages[-1]
        assert json.loads(last_reply["evicted_ids"]) == evicted[-1]


def test_context_policy_per_conversation(client):
    default = client.get("/api/context").json()
    assert default["policy"] == default["plan_policy"] == "sink_window" and default["source"] == "plan"
    assert {c["id"] for c in default["choices"]} == {"sink_window", "drop_turns", "stop"}
    c = new_conversation(client)
    r = client.patch(f"/api/conversations/{c['id']}", json={"context_policy": "truncate"})
    assert r.status_code == 422
    assert client.patch(f"/api/conversations/{c['id']}", json={"context_policy": "drop_turns"}).json()["context_policy"] == "drop_turns"
    info = client.get(f"/api/conversations/{c['id']}/context").json()
    assert info["policy"] == "drop_turns" and info["source"] == "conversation"
    # a rename leaves the policy alone; null goes back to the plan's
    assert client.patch(f"/api/conversations/{c['id']}", json={"title": "Renamed"}).json()["context_policy"] == "drop_turns"
    assert client.patch(f"/api/conversations/{c['id']}", json={"context_policy": None}).json()["context_policy"] is None
    assert client.get(f"/api/conversations/{c['id']}/context").json()["source"] == "plan"


def test_a_long_conversation_records_what_each_reply_did_not_see(tmp_path):
    with ServerThread(make_settings(tmp_path, n_ctx=256, max_tokens=16)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        for policy in ("sink_window", "drop_turns"):
            c = new_conversation(client)
            client.patch(f"/api/conversations/{c['id']}", json={"context_policy": policy})
            starts = []
            for i in range(14):
                events = post_and_collect(client, c["id"], f"Note {i}: door {i} opens with the word river{i}. Which word?")
                starts.append(events[0][1])
                assert events[-1][0] == "done"
            assert {s["context_policy"] for s in starts} == {policy}
            stored = client.get(f"/api/conversations/{c['id']}").json()["messages"]
            last = stored[-1]
            evicted = json.loads(last["evicted_ids"])
            assert evicted == starts[-1]["evicted_message_ids"] and last["evicted_tokens"] > 256
            first_user = stored[0]["id"]
            assert first_user in evicted and stored[-2]["id"] not in evicted  # oldest out, latest in
            # eviction only moves forward: what an earlier reply did not see, later ones do not either
            seen = [set(s["evicted_message_ids"]) for s in starts]
            assert all(a <= b for a, b in zip(seen, seen[1:]))


def test_switching_conversations_restores_the_saved_cache_and_deleting_removes_it(tmp_path):
    with ServerThread(make_settings(tmp_path, max_tokens=16)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        a, b = new_conversation(client), new_conversation(client)
        post_and_collect(client, a["id"], "Describe the planet Mars in three sentences. " * 8)
        post_and_collect(client, b["id"], "Hello")  # b takes the model: a's cache is saved
        saved = list((tmp_path / "contexts").glob("*.kvstate"))
        assert len(saved) == 1
        done = post_and_collect(client, a["id"], "And Venus?")[-1][1]
        assert done["stats"]["restored_tokens"] > 100
        post_and_collect(client, b["id"], "Hello again")  # a saved again, b restored
        assert client.delete(f"/api/conversations/{a['id']}").status_code == 204
        post_and_collect(client, b["id"], "Bye")
        names = {p.name for p in (tmp_path / "contexts").glob("*.kvstate")}
        assert saved[0].name not in names
