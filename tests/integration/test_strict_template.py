"""A conversation is never bricked by its own history: with a template that refuses turns that do
not alternate (as Gemma's and Mistral's do), a conversation goes on after a reply stopped before
its first token, a failed reply, and history with two user turns in a row (written by earlier
versions when the server was killed mid-reply)."""

import httpx

from tandem.app.store import Store
from tandem.runtime.synth import preset, write_model
from tests.conftest import read_sse

STRICT = (
    "{% set start = 1 if messages[0]['role'] == 'system' else 0 %}"
    "{% for m in messages[start:] %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_strict_template_conversation_goes_on_after_stopped_failed_and_doubled_turns(client, server, tmp_path):
    path = write_model(tmp_path / "strict.gguf", preset("tiny"), chat_template=STRICT)
    strict = client.post("/api/hub/import", json={"path": str(path)}, timeout=120).json()["registered"][0]["id"]
    cid = client.post("/api/conversations", json={"model_id": strict}).json()["id"]
    store = Store(server.settings.db_path)  # history as earlier versions and faults left it
    u1 = store.add_message(cid, "user", "Hello!")
    store.add_message(cid, "assistant", "", status="stopped", finish_reason="cancelled", parent_id=u1["id"])
    store.add_message(cid, "user", "Are you there?")
    store.add_message(cid, "assistant", "", status="error", finish_reason="error")
    store.add_message(cid, "user", "Hello again?")
    store.add_message(cid, "user", "Anyone?")  # two user turns in a row
    store.close()
    with client.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Say hi.", "max_tokens": 4},
                       timeout=httpx.Timeout(120)) as r:
        assert r.status_code == 200, r.read()
        events = dict(read_sse(r))
    assert "error" not in events, events.get("error")
    assert events["done"]["message"]["status"] == "complete" and events["done"]["message"]["model_id"] == strict
    # the same history sent as it is, through /v1, is refused by the template with its own words
    r = client.post("/v1/chat/completions", json={"model": strict, "max_tokens": 2, "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    assert r.status_code == 400 and "alternate" in r.json()["error"]["message"]
