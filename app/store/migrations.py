"""Schema migrations: named functions applied once, in order, and recorded in a table.

Never edit a migration that has shipped; add a new one at the end of MIGRATIONS.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from sqlite_utils import Database

MIGRATIONS_TABLE = "_migrations"


def m001_conversations(db: Database) -> None:
    db["conversations"].create(
        {"id": str, "title": str, "created_at": str, "updated_at": str}, pk="id"
    )
    db["messages"].create(
        {"id": int, "conversation_id": str, "role": str, "content": str, "created_at": str},
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
    )
    db["messages"].create_index(["conversation_id", "id"])


def m002_reply_stats(db: Database) -> None:
    messages = db["messages"]
    messages.add_column("status", str, not_null_default="complete")
    messages.add_column("finish_reason", str)
    messages.add_column("model_id", str)
    messages.add_column("prompt_tokens", int)
    messages.add_column("completion_tokens", int)
    messages.add_column("ttft_s", float)
    messages.add_column("decode_tps", float)
    db["conversations"].add_column("model_id", str)


def m003_models(db: Database) -> None:
    db["models"].create(
        {
            "id": str,
            "name": str,
            "path": str,
            "source": str,
            "size_bytes": int,
            "is_default": int,
            "added_at": str,
        },
        pk="id",
        not_null={"name", "path", "source"},
        defaults={"is_default": 0},
    )


def m004_measurements(db: Database) -> None:
    """Measured speed of real generations, for the planner's per-machine calibration."""
    db["measurements"].create(
        {
            "id": int, "created_at": str, "machine_id": str, "model_id": str, "n_ctx": int,
            "n_gpu_layers": int, "n_threads": int, "type_k": str, "completion_tokens": int,
            "predicted_tps": float, "measured_tps": float, "source": str,
        },
        pk="id",
    )
    db["measurements"].create_index(["machine_id", "model_id"])


def m005_evicted(db: Database) -> None:
    """Which earlier messages a reply was written without (left out to fit the context)."""
    db["messages"].add_column("evicted_ids", str)


def m006_context_policy(db: Database) -> None:
    """A conversation's own context policy (NULL: the plan's), and how many tokens a reply did not see."""
    db["conversations"].add_column("context_policy", str)
    db["messages"].add_column("evicted_tokens", int)


def m007_speculative(db: Database) -> None:
    """Speculative decoding per reply: the draft source, tokens drafted and accepted, and the plan's
    predicted plain speed (for the speed-up)."""
    for column, kind in (("spec_source", str), ("drafted_tokens", int), ("accepted_tokens", int),
                         ("predicted_tps", float)):
        db["messages"].add_column(column, kind)


def m008_measurement_share(db: Database) -> None:
    """The predicted share of a token's time on the CPU, so that calibration can correct the CPU
    and the GPU apart."""
    db["measurements"].add_column("cpu_share", float)


def m009_hub(db: Database) -> None:
    """Downloads from the hub (state that survives a restart), their files, headers read from the hub,
    and where a model came from: its repo, quant, SHA-256 and whether Tandem owns its files."""
    db["downloads"].create(
        {
            "id": str, "repo_id": str, "revision": str, "model_key": str, "quant": str, "status": str,
            "error": str, "error_code": str, "total_bytes": int, "done_bytes": int, "model_id": str,
            "created_at": str, "updated_at": str,
        },
        pk="id",
        not_null={"repo_id", "model_key", "status"},
        defaults={"done_bytes": 0},
    )
    db["download_files"].create(
        {"id": int, "download_id": str, "name": str, "size": int, "sha256": str, "done_bytes": int, "status": str},
        pk="id",
        foreign_keys=[("download_id", "downloads", "id")],
        not_null={"download_id", "name"},
        defaults={"done_bytes": 0, "status": "pending"},
    )
    db["download_files"].create_index(["download_id", "name"], unique=True)
    db["hub_headers"].create(
        {"key": str, "repo_id": str, "model_key": str, "size": int, "fetched_bytes": int, "info_json": str,
         "created_at": str},
        pk="key",
    )
    for column, kind in (("repo_id", str), ("quant", str), ("sha256", str), ("owned", int)):
        db["models"].add_column(column, kind)


def m010_conversation_tree(db: Database) -> None:
    """Conversations become trees (an edit or a regenerated reply is a sibling; the active branch ends
    at current_leaf_id), with per-conversation settings, pins, full-text search, saved system-prompt
    presets and app settings."""
    db["messages"].add_column("parent_id", int)
    db.execute(
        "update messages set parent_id = (select max(p.id) from messages p"
        " where p.conversation_id = messages.conversation_id and p.id < messages.id)"
    )
    db["messages"].create_index(["conversation_id", "parent_id"])
    conversations = db["conversations"]
    conversations.add_column("current_leaf_id", int)
    conversations.add_column("pinned", int, not_null_default=0)
    for column, kind in (("system_prompt", str), ("temperature", float), ("top_p", float), ("max_tokens", int)):
        conversations.add_column(column, kind)
    db.execute(
        "update conversations set current_leaf_id = (select max(m.id) from messages m where m.conversation_id = conversations.id)"
    )
    # External-content FTS5 index over message text, kept in step by triggers.
    db.execute("create virtual table messages_fts using fts5(content, content='messages', content_rowid='id',"
               " tokenize='unicode61 remove_diacritics 2')")
    db.execute("insert into messages_fts(messages_fts) values ('rebuild')")
    db.execute("create trigger messages_fts_insert after insert on messages begin"
               " insert into messages_fts(rowid, content) values (new.id, new.content); end")
    db.execute("create trigger messages_fts_delete after delete on messages begin"
               " insert into messages_fts(messages_fts, rowid, content) values ('delete', old.id, old.content); end")
    db.execute("create trigger messages_fts_update after update of content on messages begin"
               " insert into messages_fts(messages_fts, rowid, content) values ('delete', old.id, old.content);"
               " insert into messages_fts(rowid, content) values (new.id, new.content); end")
    db["presets"].create({"id": int, "name": str, "content": str, "created_at": str}, pk="id", not_null={"name", "content"})
    db["presets"].create_index(["name"], unique=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    for name, content in (
        ("Concise", "Answer briefly and directly. Use short sentences and no filler."),
        ("Explain like a teacher", "Explain step by step, with a small example, for someone new to the topic."),
        ("Code helper", "You are a careful programmer. Answer with working code in fenced blocks and say what it does."),
    ):
        db["presets"].insert({"name": name, "content": content, "created_at": stamp})
    db["settings"].create({"key": str, "value": str}, pk="key")


def m011_api_key_hash(db: Database) -> None:
    """The API key is kept as its hash and a short hint; a key kept in full by earlier versions
    becomes both (it keeps working) and is deleted."""
    import json

    from tandem.app.security import hash_key

    row = db.execute("select value from settings where key = 'api_key'").fetchone()
    if row is None:
        return
    try:
        key = json.loads(row[0])
    except (TypeError, ValueError):
        key = None
    if isinstance(key, str) and len(key) >= 16:
        for name, value in (("api_key_hash", hash_key(key)), ("api_key_hint", key[:8] + "…")):
            db.execute("insert or replace into settings (key, value) values (?, ?)", [name, json.dumps(value)])
    db.execute("delete from settings where key = 'api_key'")


def m012_remotes(db: Database) -> None:
    """Remote OpenAI-compatible servers whose models Tandem serves as NAME/model. key: the API key,
    or "keyring" when the OS keyring holds it, or null."""
    db["remotes"].create({"name": str, "url": str, "key": str, "added_at": str}, pk="name")


def m013_pool_workers(db: Database) -> None:
    """Machines running `tandem worker` whose devices may take layers of a model (host:port)."""
    db["pool_workers"].create({"endpoint": str, "added_at": str}, pk="endpoint")


def m014_reply_energy(db: Database) -> None:
    """The joules a reply used where the machine counts them (RAPL, NVML): CPU package and GPUs."""
    for column in ("energy_cpu_j", "energy_gpu_j"):
        db["messages"].add_column(column, float)


MIGRATIONS: list[Callable[[Database], None]] = [
    m001_conversations,
    m002_reply_stats,
    m003_models,
    m004_measurements,
    m005_evicted,
    m006_context_policy,
    m007_speculative,
    m008_measurement_share,
    m009_hub,
    m010_conversation_tree,
    m011_api_key_hash,
    m012_remotes,
    m013_pool_workers,
    m014_reply_energy,
]


def applied(db: Database) -> list[str]:
    if not db[MIGRATIONS_TABLE].exists():
        return []
    return [r["name"] for r in db[MIGRATIONS_TABLE].rows_where(order_by="rowid")]


def migrate(db: Database, upto: str | None = None) -> list[str]:
    """Apply every migration not yet recorded (each in its own savepoint, all under one write lock,
    so that two processes opening the same new database at once apply each migration once).
    Returns their names.

    `upto` stops after the named migration: tests use it to build an older schema.
    """
    names = [m.__name__ for m in MIGRATIONS]
    if db[MIGRATIONS_TABLE].exists() and set(names[: names.index(upto) + 1] if upto else names) <= set(applied(db)):
        return []  # the common case: nothing to do, no write lock taken
    db.conn.execute("BEGIN IMMEDIATE")  # waits (the connection's timeout) for another process's migrations
    try:
        if not db[MIGRATIONS_TABLE].exists():
            db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name")
        done = set(applied(db))  # read again under the lock: another process may have done them
        ran = []
        for migration in MIGRATIONS:
            name = migration.__name__
            if name not in done:
                with db.atomic():
                    migration(db)
                    db[MIGRATIONS_TABLE].insert(
                        {"name": name, "applied_at": datetime.now(timezone.utc).isoformat()}
                    )
                ran.append(name)
            if name == upto:
                break
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    return ran
