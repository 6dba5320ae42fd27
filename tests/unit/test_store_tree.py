"""Conversations as trees on a real SQLite file: branches, fork, search, export and import, presets."""

import json

import pytest

from tandem.app.errors import Conflict, InvalidRequest, NotFound
from tandem.app.store import Store


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "t.db")
    yield s
    s.close()


def chat(store, *turns):
    c = store.create_conversation()
    ids = [store.add_message(c["id"], role, text)["id"] for role, text in turns]
    return c["id"], ids


def test_an_edit_is_a_sibling_and_both_branches_stay(store):
    cid, (u1, a1, u2, a2) = chat(store, ("user", "hi"), ("assistant", "hello"), ("user", "tell me a joke"),
                                 ("assistant", "no"))
    edit = store.add_message(cid, "user", "tell me a story", parent_id=a1)
    reply = store.add_message(cid, "assistant", "once upon a time")
    branch = store.branch(cid)
    assert [m["id"] for m in branch] == [u1, a1, edit["id"], reply["id"]]
    assert branch[2]["siblings"] == [u2, edit["id"]]
    assert branch[0]["siblings"] == [u1]
    # switching back to the old branch lands on its latest reply
    store.set_leaf(cid, u2)
    assert [m["id"] for m in store.branch(cid)] == [u1, a1, u2, a2]
    assert len(store.list_messages(cid)) == 6  # nothing was deleted


def test_regenerated_replies_are_siblings_and_the_newest_is_shown(store):
    cid, (u1, a1) = chat(store, ("user", "hi"), ("assistant", "one"))
    a2 = store.add_message(cid, "assistant", "two", parent_id=u1)["id"]
    assert [m["id"] for m in store.branch(cid)] == [u1, a2]
    store.set_leaf(cid, u1)
    assert store.branch(cid)[-1]["id"] == a2  # most recent reply below the user message
    store.set_leaf(cid, a1)
    assert store.branch(cid)[-1]["siblings"] == [a1, a2]


def test_messages_of_another_conversation_are_refused(store):
    cid, (u1,) = chat(store, ("user", "hi"))
    other, (o1,) = chat(store, ("user", "elsewhere"))
    with pytest.raises(NotFound):
        store.add_message(cid, "user", "x", parent_id=o1)
    with pytest.raises(NotFound):
        store.set_leaf(cid, o1)


def test_fork_copies_the_branch_up_to_a_message_with_the_settings(store):
    cid, (u1, a1, u2, a2) = chat(store, ("user", "hi"), ("assistant", "hello"), ("user", "more"), ("assistant", "sure"))
    store.update_conversation(cid, system_prompt="Be brief.", temperature=0.2, title="Greetings")
    fork = store.fork(cid, a1)
    assert fork["title"] == "Greetings (fork)"
    assert fork["system_prompt"] == "Be brief." and fork["temperature"] == 0.2
    assert [m["content"] for m in store.branch(fork["id"])] == ["hi", "hello"]
    assert len(store.list_messages(cid)) == 4  # the original is untouched


def test_search_finds_words_in_messages_and_titles_without_query_syntax(store):
    cid, _ = chat(store, ("user", "How do I bake sourdough bread?"), ("assistant", "Start with a levain."))
    other, _ = chat(store, ("user", "Plan a trip to Lisbon"))
    hits = store.search("sourdough")
    assert [(h["conversation_id"], h["role"]) for h in hits] == [(cid, None), (cid, "user")]  # title, then message
    parts = hits[1]["snippet"]
    assert any(p["hit"] and p["text"].lower() == "sourdough" for p in parts)
    assert "".join(p["text"] for p in parts) == "How do I bake sourdough bread?"
    assert [h["conversation_id"] for h in store.search("levai")] == [cid]  # prefix match
    for hostile in ('"', "AND OR NOT", "a*b(", "NEAR(x y)", "col:thing", "%", "_", "\\", "a\x00b", "\x00", "'"):
        store.search(hostile)  # never an FTS5 syntax error
    assert store.search("   ") == []
    store.delete_conversation(other)
    assert store.search("Lisbon") == []  # deleted messages leave the index


def test_export_then_import_gives_the_same_tree(store):
    cid, (u1, a1) = chat(store, ("user", "hi"), ("assistant", "hello"))
    store.add_message(cid, "assistant", "hey there", parent_id=u1, status="stopped", completion_tokens=2)
    store.set_leaf(cid, a1)
    store.update_conversation(cid, pinned=True, system_prompt="Be kind.")
    data = json.loads(json.dumps(store.export(cid)))
    new = store.import_export(data)
    assert new["id"] != cid and new["pinned"] and new["system_prompt"] == "Be kind."
    assert [m["content"] for m in store.branch(new["id"])] == ["hi", "hello"]  # the same branch is shown
    imported = store.list_messages(new["id"])
    assert [(m["role"], m["content"], m["status"]) for m in imported] == [
        (m["role"], m["content"], m["status"]) for m in store.list_messages(cid)]
    assert imported[2]["parent_id"] == imported[0]["id"]


@pytest.mark.parametrize("data, words", [
    ([], "not a Tandem conversation export"),
    ({"tandem_export": 2}, "not a Tandem conversation export"),
    ({"tandem_export": 1, "conversation": {}, "messages": "x"}, "messages"),
    ({"tandem_export": 1, "conversation": {}, "messages": [{"id": 1, "role": "tool", "content": "x"}]}, "role"),
    ({"tandem_export": 1, "conversation": {}, "messages": [{"id": 1, "role": "user", "content": 5}]}, "content"),
    ({"tandem_export": 1, "conversation": {}, "messages": [{"id": 1, "role": "user", "content": "a"},
                                                          {"id": 1, "role": "user", "content": "b"}]}, "unique"),
    ({"tandem_export": 1, "conversation": {}, "messages": [{"id": 2, "parent_id": 3, "role": "user", "content": "a"}]},
     "does not come before"),
])
def test_a_bad_import_is_refused_whole_and_writes_nothing(store, data, words):
    before = store.list_conversations()
    with pytest.raises(InvalidRequest, match=words):
        store.import_export(data)
    assert store.list_conversations() == before


def test_pinned_conversations_come_first(store):
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    store.update_conversation(a["id"], pinned=True)
    assert [c["title"] for c in store.list_conversations()] == ["a", "b"]
    store.update_conversation(a["id"], pinned=False)
    store.update_conversation(b["id"], touch=True)
    assert [c["title"] for c in store.list_conversations()] == ["b", "a"]


def test_presets_and_settings(store):
    names = [p["name"] for p in store.list_presets()]
    assert "Concise" in names
    p = store.add_preset("  Pirate  ", "Talk like a pirate.")
    assert p["name"] == "Pirate"
    with pytest.raises(Conflict):
        store.add_preset("Pirate", "again")
    store.delete_preset(p["id"])
    with pytest.raises(NotFound):
        store.delete_preset(p["id"])
    store.save_settings({"theme": "dark", "temperature": 0.3})
    assert store.saved_settings() == {"theme": "dark", "temperature": 0.3}
    store.save_settings({"theme": None})
    assert store.saved_settings() == {"temperature": 0.3}


def test_turns_alternate_for_strict_templates():
    from tandem.app.services.chat import alternate

    rows = [{"id": 1, "role": "user", "content": "a"}, {"id": 2, "role": "user", "content": "b"},
            {"id": 3, "role": "assistant", "content": ""}, {"id": 4, "role": "assistant", "content": "c"}]
    ids, messages = alternate(rows)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert ids == [1, None, 2, 3, None, 4]
    ids, messages = alternate([{"id": 9, "role": "system", "content": "s"}, {"id": 5, "role": "assistant", "content": "x"}])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and ids == [9, None, 5]


def test_a_reply_is_written_as_it_grows_and_a_cut_off_one_is_marked(store):
    cid, (u1,) = chat(store, ("user", "hi"))
    row = store.begin_reply(cid, u1, "m")
    assert row["status"] == "writing" and store.branch(cid)[-1]["id"] == row["id"]
    store.write_reply(row["id"], "partial te")
    assert store.mark_interrupted() == 1
    cut = store.get_message(cid, row["id"])
    assert (cut["status"], cut["content"], cut["finish_reason"]) == ("interrupted", "partial te", "interrupted")
    store.write_reply(row["id"], "late write")  # a save after the mark changes nothing
    assert store.get_message(cid, row["id"])["content"] == "partial te"
    store.delete_conversation(cid)
    with pytest.raises(NotFound):
        store.end_reply(row["id"], "x")


def test_an_import_keeps_only_values_that_cannot_break_the_conversation(store):
    data = {"tandem_export": 1,
            "conversation": {"title": "Shared", "temperature": "hot", "top_p": 7, "context_policy": "bogus",
                             "max_tokens": 10**30, "system_prompt": "Be brief."},
            "messages": [{"id": 1, "role": "user", "content": "hi"},
                         {"id": 2, "parent_id": 1, "role": "assistant", "content": "hello", "prompt_tokens": 10**30,
                          "evicted_ids": "x", "status": "writing", "decode_tps": float("nan"), "completion_tokens": 3}]}
    conv = store.import_export(data)
    assert (conv["temperature"], conv["top_p"], conv["context_policy"], conv["max_tokens"]) == (None, None, None, None)
    assert conv["system_prompt"] == "Be brief."
    reply = store.branch(conv["id"])[-1]
    assert reply["prompt_tokens"] is None and reply["evicted_ids"] is None and reply["decode_tps"] is None
    assert reply["status"] == "complete" and reply["completion_tokens"] == 3
