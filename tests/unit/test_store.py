"""Storage on a real SQLite file: from a blank database and from the previous schema."""

import sqlite3

import pytest
from sqlite_utils import Database

from tandem.app.errors import NotFound
from tandem.app.store import Store
from tandem.app.store.migrations import MIGRATIONS, applied, migrate
from tandem.app.store.store import DEFAULT_TITLE, title_from


def test_blank_database_gets_every_migration_once(tmp_path):
    store = Store(tmp_path / "t.db")
    names = [m.__name__ for m in MIGRATIONS]
    assert store.migrations_run == names
    store.close()
    again = Store(tmp_path / "t.db")
    assert again.migrations_run == []
    assert applied(again.db) == names
    again.close()


def test_upgrade_from_the_first_schema_keeps_existing_conversations(tmp_path):
    path = tmp_path / "old.db"
    old = Database(sqlite3.connect(path))
    migrate(old, upto="m001_conversations")
    assert applied(old) == ["m001_conversations"]
    old["conversations"].insert({"id": "c1", "title": "Old chat", "created_at": "2025-01-01", "updated_at": "2025-01-01"})
    old["messages"].insert({"conversation_id": "c1", "role": "user", "content": "hello from v1", "created_at": "2025-01-01"})
    old.conn.commit()
    old.close()

    store = Store(path)
    assert store.migrations_run == ["m002_reply_stats", "m003_models", "m004_measurements", "m005_evicted",
                                   "m006_context_policy", "m007_speculative", "m008_measurement_share", "m009_hub",
                                   "m010_conversation_tree", "m011_api_key_hash", "m012_remotes",
                                   "m013_pool_workers", "m014_reply_energy"]
    [msg] = store.list_messages("c1")
    assert msg["content"] == "hello from v1"
    assert msg["status"] == "complete"  # rows written before m002 get the default
    reply = store.add_message("c1", "assistant", "hi", status="stopped", completion_tokens=3)
    assert reply["status"] == "stopped" and reply["completion_tokens"] == 3
    assert reply["parent_id"] == msg["id"]  # the old message became the root of the branch
    assert [m["id"] for m in store.branch("c1")] == [msg["id"], reply["id"]]
    assert [r["message_id"] for r in store.search("from v1")] == [msg["id"]]  # indexed by the migration
    store.close()


def test_upgrade_from_the_hub_schema_makes_linear_trees(tmp_path):
    path = tmp_path / "v9.db"
    old = Database(sqlite3.connect(path))
    migrate(old, upto="m009_hub")
    for cid in ("a", "b"):
        old["conversations"].insert({"id": cid, "title": cid, "created_at": "2025-01-01", "updated_at": "2025-01-01"})
    for i, cid in enumerate(["a", "b", "a", "b", "a"]):  # interleaved ids across two conversations
        old["messages"].insert({"conversation_id": cid, "role": "user" if i < 2 else "assistant",
                                "content": f"m{i}", "created_at": "2025-01-01"})
    old.conn.commit()
    old.close()
    store = Store(path)
    a = store.branch("a")
    assert [m["content"] for m in a] == ["m0", "m2", "m4"]
    assert [m["parent_id"] for m in a] == [None, a[0]["id"], a[1]["id"]]
    assert [m["content"] for m in store.branch("b")] == ["m1", "m3"]
    store.close()


def test_conversation_lifecycle(tmp_path):
    store = Store(tmp_path / "t.db")
    c = store.create_conversation()
    assert c["title"] == DEFAULT_TITLE
    store.add_message(c["id"], "user", "  What is   the capital\nof France?  ")
    assert store.get_conversation(c["id"])["title"] == "What is the capital of France?"
    store.add_message(c["id"], "assistant", "Paris.", status="complete", prompt_tokens=20)
    assert [m["role"] for m in store.list_messages(c["id"])] == ["user", "assistant"]
    listed = store.list_conversations()
    assert listed[0]["id"] == c["id"] and listed[0]["message_count"] == 2

    renamed = store.rename_conversation(c["id"], "Geography")
    assert renamed["title"] == "Geography"
    store.add_message(c["id"], "user", "And of Spain?")
    assert store.get_conversation(c["id"])["title"] == "Geography"  # a chosen title stays

    store.delete_conversation(c["id"])
    assert store.list_conversations() == []
    assert store.db.execute("select count(*) from messages").fetchone()[0] == 0
    store.close()


def test_unknown_conversation_is_a_clear_not_found(tmp_path):
    store = Store(tmp_path / "t.db")
    for call in (
        lambda: store.get_conversation("nope"),
        lambda: store.list_messages("nope"),
        lambda: store.add_message("nope", "user", "x"),
        lambda: store.delete_conversation("nope"),
    ):
        with pytest.raises(NotFound, match="No conversation with id 'nope'"):
            call()
    store.close()


def test_unknown_message_fields_are_refused(tmp_path):
    store = Store(tmp_path / "t.db")
    c = store.create_conversation()
    with pytest.raises(ValueError, match="unknown message fields"):
        store.add_message(c["id"], "assistant", "x", colour="red")
    assert store.list_messages(c["id"]) == []
    store.close()


def test_only_one_default_model(tmp_path):
    store = Store(tmp_path / "t.db")
    store.upsert_model({"id": "a", "name": "A", "path": "/a", "source": "local", "is_default": 1})
    store.upsert_model({"id": "b", "name": "B", "path": "/b", "source": "local", "is_default": 1})
    assert [(m["id"], m["is_default"]) for m in store.list_models()] == [("b", 1), ("a", 0)]
    with pytest.raises(NotFound):
        store.get_model("c")
    store.close()


def test_title_from_long_text():
    assert title_from("x" * 100) == "x" * 59 + "…"
    assert title_from("   ") == DEFAULT_TITLE


def test_processes_opening_a_new_database_at_once_each_apply_nothing_twice(tmp_path):
    import subprocess
    import sys

    for round_ in range(3):
        path = tmp_path / f"race{round_}.db"
        code = f"from tandem.app.store import Store; Store({str(path)!r}).close()"
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        db = Database(sqlite3.connect(path))
        assert applied(db) == [m.__name__ for m in MIGRATIONS]
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
        db.close()
