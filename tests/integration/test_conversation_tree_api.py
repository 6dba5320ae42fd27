"""Branching conversations, fork, search, export/import, presets and settings through the real server."""



from tandem.app.config import DATA_DIR_FILE, config_dir
from tandem.app.server import PortInUse, ServerThread
from tests.conftest import make_settings, read_sse


def new_conversation(client, **body):
    r = client.post("/api/conversations", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def events_of(client, path, **body):
    with client.stream("POST", path, json={"max_tokens": 8, **body}) as r:
        assert r.status_code == 200, r.read()
        return list(read_sse(r))


def say(client, cid, content, **extra):
    return events_of(client, f"/api/conversations/{cid}/messages", content=content, **extra)


def branch(client, cid):
    return client.get(f"/api/conversations/{cid}").json()["messages"]


def test_the_first_message_titles_the_conversation_in_the_start_event(client):
    c = new_conversation(client)
    assert c["title"] == "New chat"
    events = say(client, c["id"], "What is the capital of France?")
    start = dict(events)["start"]
    assert start["title"] == "What is the capital of France?"
    assert start["user_message"]["siblings"] == [start["user_message"]["id"]]
    assert dict(events)["done"]["message"]["parent_id"] == start["user_message"]["id"]


def test_an_edit_keeps_the_old_branch_and_the_arrows_switch_back(client):
    cid = new_conversation(client)["id"]
    say(client, cid, "Name a colour.")
    first = branch(client, cid)
    say(client, cid, "Name another one.")
    old = branch(client, cid)
    events = say(client, cid, "Name a fruit.", edit_of=old[2]["id"])
    start, done = dict(events)["start"], dict(events)["done"]
    assert start["user_message"]["parent_id"] == first[1]["id"]
    assert start["user_message"]["siblings"] == [old[2]["id"], start["user_message"]["id"]]
    now = branch(client, cid)
    assert [m["content"] for m in now[:3]] == ["Name a colour.", first[1]["content"], "Name a fruit."]
    assert now[-1]["id"] == done["message"]["id"]
    # the model saw the edited branch only: the edit's prompt is no longer than the original's
    assert start["prompt_tokens"] <= dict(say(client, new_conversation(client)["id"], "x"))["start"]["prompt_tokens"] + 100
    back = client.post(f"/api/conversations/{cid}/branch", json={"message_id": old[2]["id"]}).json()
    assert [m["id"] for m in back["messages"]] == [m["id"] for m in old]
    assert client.get(f"/api/conversations/{cid}").json()["current_leaf_id"] == old[-1]["id"]
    # editing a reply is refused with what to do instead
    r = client.post(f"/api/conversations/{cid}/messages", json={"content": "x", "edit_of": old[1]["id"]})
    assert r.status_code == 422 and "regenerated" in r.json()["error"]["message"]


def test_regenerate_writes_a_sibling_reply_to_the_same_message(client):
    cid = new_conversation(client)["id"]
    say(client, cid, "Say hello.")
    user, reply = branch(client, cid)
    events = events_of(client, f"/api/conversations/{cid}/regenerate", temperature=1.5, seed=7)
    start, done = dict(events)["start"], dict(events)["done"]
    assert start["user_message"]["id"] == user["id"]
    assert done["message"]["parent_id"] == user["id"]
    assert done["message"]["siblings"] == [reply["id"], done["message"]["id"]]
    assert [m["id"] for m in branch(client, cid)] == [user["id"], done["message"]["id"]]
    # naming the user message, or an older reply, answers the same message again
    again = dict(events_of(client, f"/api/conversations/{cid}/regenerate", message_id=reply["id"]))["done"]["message"]
    assert again["siblings"] == [reply["id"], done["message"]["id"], again["id"]]
    assert len(client.get(f"/api/conversations/{cid}").json()["messages"]) == 2


def test_regenerate_with_nothing_to_answer_says_what_to_do(client):
    cid = new_conversation(client)["id"]
    r = client.post(f"/api/conversations/{cid}/regenerate", json={})
    assert r.status_code == 422 and "send one first" in r.json()["error"]["message"]
    r = client.post(f"/api/conversations/{cid}/regenerate", json={"message_id": 999999})
    assert r.status_code == 404


def test_system_prompt_and_sampling_of_a_conversation_reach_the_model(client):
    cid = new_conversation(client)["id"]
    plain = dict(say(client, cid, "Hi"))["start"]["prompt_tokens"]
    r = client.patch(f"/api/conversations/{cid}", json={"system_prompt": "You are a pirate. " * 20, "max_tokens": 3,
                                                        "temperature": 0.0, "pinned": True})
    c = r.json()
    assert c["pinned"] is True and c["max_tokens"] == 3 and c["system_prompt"].startswith("You are a pirate.")
    cid2 = new_conversation(client)["id"]
    client.patch(f"/api/conversations/{cid2}", json={"system_prompt": "You are a pirate. " * 20, "max_tokens": 3})
    events = dict(events_of(client, f"/api/conversations/{cid2}/messages", content="Hi", max_tokens=None))
    assert events["start"]["prompt_tokens"] > plain + 60  # the system prompt is in the prompt
    assert events["done"]["stats"]["completion_tokens"] <= 3  # the conversation's max_tokens
    assert client.get("/api/conversations").json()[0]["id"] == cid  # pinned first
    r = client.patch(f"/api/conversations/{cid}", json={"system_prompt": "   ", "max_tokens": None})
    assert r.json()["system_prompt"] is None and r.json()["max_tokens"] is None


def test_fork_from_a_message(client):
    cid = new_conversation(client, title="Recipes")["id"]
    say(client, cid, "Give me a soup recipe.")
    say(client, cid, "And a dessert?")
    msgs = branch(client, cid)
    r = client.post(f"/api/conversations/{cid}/fork", json={"message_id": msgs[1]["id"]})
    assert r.status_code == 201
    fork = r.json()
    assert fork["title"] == "Recipes (fork)"
    assert [m["content"] for m in branch(client, fork["id"])] == [m["content"] for m in msgs[:2]]
    assert client.post(f"/api/conversations/{cid}/fork", json={"message_id": 123456789}).status_code == 404


def test_search_finds_messages_and_titles(client):
    cid = new_conversation(client)["id"]
    say(client, cid, "Tell me about axolotls please")
    hits = client.get("/api/search", params={"q": "axolotl"}).json()
    assert {h["conversation_id"] for h in hits} == {cid}
    hit = next(h for h in hits if h["role"] == "user")
    assert any(p["hit"] and p["text"].lower().startswith("axolotl") for p in hit["snippet"])
    for q in ['"', "NEAR(", "a OR", "*"]:
        assert client.get("/api/search", params={"q": q}).status_code == 200
    assert client.get("/api/search", params={"q": "x" * 600}).status_code == 422


def test_export_markdown_and_json_then_import(client):
    cid = new_conversation(client, title="Trip to Oslo / Bergen")["id"]
    say(client, cid, "Plan a day in Oslo.")
    r = client.get(f"/api/conversations/{cid}/export", params={"format": "markdown"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert 'filename="Trip-to-Oslo-Bergen.md"' in r.headers["content-disposition"]
    assert r.text.startswith("# Trip to Oslo / Bergen") and "### You" in r.text and "Plan a day in Oslo." in r.text
    data = client.get(f"/api/conversations/{cid}/export", params={"format": "json"}).json()
    r = client.post("/api/conversations/import", json=data)
    assert r.status_code == 201
    new = r.json()
    assert new["title"] == "Trip to Oslo / Bergen" and new["id"] != cid
    assert [m["content"] for m in branch(client, new["id"])] == [m["content"] for m in branch(client, cid)]
    before = len(client.get("/api/conversations").json())
    for bad in ([1, 2], {"tandem_export": 1, "conversation": {}, "messages": [{"id": 1, "role": "user"}]}):
        r = client.post("/api/conversations/import", json=bad)
        assert r.status_code == 422 and r.json()["error"]["message"]
    r = client.post("/api/conversations/import", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert len(client.get("/api/conversations").json()) == before


def test_presets(client):
    names = [p["name"] for p in client.get("/api/presets").json()]
    assert "Concise" in names
    r = client.post("/api/presets", json={"name": "Haiku", "content": "Answer in a haiku."})
    assert r.status_code == 201
    assert client.post("/api/presets", json={"name": "Haiku", "content": "x"}).status_code == 409
    assert client.delete(f"/api/presets/{r.json()['id']}").status_code == 204
    assert client.delete(f"/api/presets/{r.json()['id']}").status_code == 404


def test_settings_apply_now_or_at_the_next_start(tmp_path):
    data = tmp_path / "data"
    with ServerThread(make_settings(data)) as srv:
        import httpx

        with httpx.Client(base_url=srv.url, timeout=60) as c:
            s = c.get("/api/settings").json()
            assert s["values"]["theme"] == "system" and "port" in s["restart"]
            r = c.patch("/api/settings", json={"theme": "dark", "temperature": 9})
            assert r.status_code == 422 and "temperature" in r.json()["error"]["message"]
            assert c.get("/api/settings").json()["values"]["theme"] == "system"  # nothing half-applied
            r = c.patch("/api/settings", json={"theme": "dark", "system_prompt": "Be brief.", "max_tokens": 4,
                                               "port": 8799, "context_policy": "drop_turns"})
            assert r.status_code == 200, r.text
            v = r.json()["values"]
            assert (v["theme"], v["port"], v["max_tokens"]) == ("dark", 8799, 4)
            assert r.json()["running"]["port"] == srv.port  # the port changes at the next start
            conv = c.post("/api/conversations", json={}).json()
            assert conv["system_prompt"] == "Be brief."  # new conversations take the default
            assert c.get(f"/api/conversations/{conv['id']}/context").json()["source"] == "settings"
            done = dict(events_of(c, f"/api/conversations/{conv['id']}/messages", content="Hi", max_tokens=None))["done"]
            assert done["stats"]["completion_tokens"] <= 4
            assert c.patch("/api/settings", json={"default_model_id": "nope"}).status_code == 404
            assert c.patch("/api/settings", json={"colour": "red"}).status_code == 422
            r = c.patch("/api/settings", json={"data_dir": "relative/path"})
            assert r.status_code == 422 and "absolute" in r.json()["error"]["message"]
            r = c.patch("/api/settings", json={"data_dir": str(tmp_path / "elsewhere")})
            assert r.json()["values"]["data_dir"] == str(tmp_path / "elsewhere")
    assert (config_dir() / DATA_DIR_FILE).read_text().strip() == str(tmp_path / "elsewhere")
    (config_dir() / DATA_DIR_FILE).unlink()
    # the saved port is used when neither --port nor TANDEM_PORT says otherwise
    from tandem.app.config import Settings

    settings = Settings(data_dir=data)
    assert "port" not in settings.model_fields_set
    try:
        srv = ServerThread(settings)
    except PortInUse as err:  # the port may be taken on a shared machine: then the message says so
        assert "8799" in str(err)
        return
    try:
        assert srv.port == 8799
    finally:
        srv.sock.close()
        srv.services.close()
