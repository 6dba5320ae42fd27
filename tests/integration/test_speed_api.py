"""GET /api/models/{id}/speed: measured reply speeds of a model beside the plan's prediction, from
real replies of the real model stored in a real SQLite file."""

from tests.conftest import read_sse

MODEL = "smollm2-135m-instruct-q4_1"


def reply(client, cid: str, content: str) -> dict:
    with client.stream("POST", f"/api/conversations/{cid}/messages", json={"content": content, "max_tokens": 16}) as r:
        assert r.status_code == 200, r.read()
        events = list(read_sse(r))
    event, data = events[-1]
    assert event == "done", events[-1]
    return data["message"]


def test_speed_of_real_replies(client):
    empty = client.get(f"/api/models/{MODEL}/speed")
    assert empty.status_code == 200
    assert empty.json()["model_id"] == MODEL and empty.json()["replies"] == []

    cid = client.post("/api/conversations", json={}).json()["id"]
    stored = [reply(client, cid, text) for text in ("Name a colour.", "Name a fruit.", "Name a tree.")]

    body = client.get(f"/api/models/{MODEL}/speed").json()
    replies = body["replies"]
    assert len(replies) == 3
    # oldest first, and the numbers are the ones stored with each reply
    assert [r["created_at"] for r in replies] == [m["created_at"] for m in stored]
    for got, m in zip(replies, stored):
        assert got["decode_tps"] == m["decode_tps"] and got["decode_tps"] > 0
        assert got["completion_tokens"] == m["completion_tokens"] and 0 < got["completion_tokens"] <= 16
        assert got["predicted_tps"] == m["predicted_tps"] and got["predicted_tps"] > 0
        assert got["spec_source"] == m.get("spec_source")
        if m.get("drafted_tokens"):
            assert got["acceptance"] == round(m["accepted_tokens"] / m["drafted_tokens"], 4)
        else:
            assert got["acceptance"] is None
    # the model is loaded after those replies: the prediction is its plan's
    plan = client.get(f"/api/models/{MODEL}/plan").json()
    assert body["prediction"] == "plan" and body["predicted_tps"] == plan["decode_tps"]

    # the limit keeps the newest replies, still oldest first
    last_two = client.get(f"/api/models/{MODEL}/speed", params={"limit": 2}).json()["replies"]
    assert [r["created_at"] for r in last_two] == [m["created_at"] for m in stored[1:]]
    assert client.get(f"/api/models/{MODEL}/speed", params={"limit": 0}).status_code == 422


def test_unknown_model_is_a_404(client):
    r = client.get("/api/models/no-such-model/speed")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "no-such-model" in r.json()["error"]["message"]
