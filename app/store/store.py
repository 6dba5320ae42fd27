"""People-facing state in one SQLite file: conversations, messages, registered models.

One connection shared by the server's threads behind a lock; every write that must not be left
half-done runs in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from app.errors import NotFound
from app.store.migrations import migrate

DEFAULT_TITLE = "New chat"
REPLY_FIELDS = ("status", "finish_reason", "model_id", "prompt_tokens", "completion_tokens", "ttft_s", "decode_tps",
                "evicted_ids", "evicted_tokens", "spec_source", "drafted_tokens", "accepted_tokens", "predicted_tps")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        self.db = Database(conn)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.enable_wal()
        self._lock = threading.RLock()
        with self._lock:
            self.migrations_run = migrate(self.db)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # --- conversations
    def create_conversation(self, title: str | None = None, model_id: str | None = None) -> dict:
        stamp = now_iso()
        row = {
            "id": uuid.uuid4().hex,
            "title": (title or "").strip() or DEFAULT_TITLE,
            "model_id": model_id,
            "context_policy": None,
            "created_at": stamp,
            "updated_at": stamp,
        }
        with self._lock, self.db.atomic():
            self.db["conversations"].insert(row)
        return row

    def list_conversations(self) -> list[dict]:
        with self._lock:
            return list(
                self.db.query(
                    "select c.*, (select count(*) from messages m where m.conversation_id = c.id)"
                    " as message_count from conversations c order by c.updated_at desc, c.rowid desc"
                )
            )

    def get_conversation(self, conversation_id: str) -> dict:
        with self._lock:
            rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise NotFound(
                f"No conversation with id {conversation_id!r}. It may have been deleted; "
                "list conversations with GET /api/conversations."
            )
        return rows[0]

    def rename_conversation(self, conversation_id: str, title: str) -> dict:
        self.get_conversation(conversation_id)
        with self._lock, self.db.atomic():
            self.db["conversations"].update(
                conversation_id, {"title": title.strip() or DEFAULT_TITLE, "updated_at": now_iso()}
            )
        return self.get_conversation(conversation_id)

    def set_context_policy(self, conversation_id: str, policy: str | None) -> dict:
        self.get_conversation(conversation_id)
        with self._lock, self.db.atomic():
            self.db["conversations"].update(conversation_id, {"context_policy": policy})
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> None:
        self.get_conversation(conversation_id)
        with self._lock, self.db.atomic():
            self.db.execute("delete from messages where conversation_id = ?", [conversation_id])
            self.db.execute("delete from conversations where id = ?", [conversation_id])

    # --- messages
    def list_messages(self, conversation_id: str) -> list[dict]:
        self.get_conversation(conversation_id)
        with self._lock:
            return list(
                self.db["messages"].rows_where("conversation_id = ?", [conversation_id], order_by="id")
            )

    def add_message(self, conversation_id: str, role: str, content: str, **reply: object) -> dict:
        """Append one message; the conversation's updated_at (and a default title) move with it."""
        unknown = set(reply) - set(REPLY_FIELDS)
        if unknown:
            raise ValueError(f"unknown message fields: {sorted(unknown)}")
        conv = self.get_conversation(conversation_id)
        stamp = now_iso()
        row = {"conversation_id": conversation_id, "role": role, "content": content, "created_at": stamp}
        row.update({k: v for k, v in reply.items() if v is not None})
        changes: dict = {"updated_at": stamp}
        if role == "user" and conv["title"] == DEFAULT_TITLE:
            changes["title"] = title_from(content)
        with self._lock, self.db.atomic():
            table = self.db["messages"].insert(row)
            row["id"] = table.last_pk
            self.db["conversations"].update(conversation_id, changes)
            return self.db["messages"].get(row["id"])

    # --- speed measurements (planner calibration)
    def add_measurement(self, **row) -> None:
        with self._lock, self.db.atomic():
            self.db["measurements"].insert({"created_at": now_iso(), **row})

    def measurements(self, machine_id: str | None, limit: int = 500) -> list[dict]:
        with self._lock:
            return list(self.db["measurements"].rows_where(
                "machine_id = ?", [machine_id], order_by="id desc", limit=limit))[::-1]

    def acceptance(self, model_id: str, spec_source: str, min_drafted: int = 50) -> float | None:
        """Accepted / drafted tokens over the replies of a model with one draft source (None: too few)."""
        with self._lock:
            row = next(self.db.query(
                "select sum(accepted_tokens) as a, sum(drafted_tokens) as d from messages"
                " where model_id = ? and spec_source = ?", [model_id, spec_source]))
        return row["a"] / row["d"] if row["d"] and row["d"] >= min_drafted else None

    # --- models
    def upsert_model(self, model: dict) -> dict:
        with self._lock, self.db.atomic():
            if model.get("is_default"):
                self.db.execute("update models set is_default = 0 where id != ?", [model["id"]])
            self.db["models"].upsert({"added_at": now_iso(), **model}, pk="id")
        return self.get_model(model["id"])

    def list_models(self) -> list[dict]:
        with self._lock:
            return list(self.db["models"].rows_where(order_by="is_default desc, name"))

    def get_model(self, model_id: str) -> dict:
        with self._lock:
            rows = list(self.db["models"].rows_where("id = ?", [model_id]))
        if not rows:
            raise NotFound(f"No model with id {model_id!r}; GET /v1/models lists the models Tandem has.")
        return rows[0]


def title_from(text: str, limit: int = 60) -> str:
    """A conversation title from its first message: one line, at most `limit` characters."""
    line = " ".join(text.split())
    if not line:
        return DEFAULT_TITLE
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
