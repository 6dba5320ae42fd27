"""Conversations as trees of messages.

Every message has a parent (None: the first message). Editing a message or regenerating a reply
adds a sibling, so no branch is ever lost; the conversation's current_leaf_id says which branch is
shown and continued. Full-text search runs on SQLite FTS5 (messages_fts, kept by triggers).
"""

from __future__ import annotations

import json
import uuid

from tandem.app.errors import InvalidRequest, NotFound

DEFAULT_TITLE = "New chat"
REPLY_FIELDS = ("status", "finish_reason", "model_id", "prompt_tokens", "completion_tokens", "ttft_s", "decode_tps",
                "evicted_ids", "evicted_tokens", "spec_source", "drafted_tokens", "accepted_tokens", "predicted_tps",
                "energy_cpu_j", "energy_gpu_j")
# Per-conversation settings; None means "the app's default".
SETTING_FIELDS = ("model_id", "context_policy", "system_prompt", "temperature", "top_p", "max_tokens")
LEAF = object()  # add_message's parent default: the end of the active branch
EXPORT_VERSION = 1
ROLES = ("system", "user", "assistant")


class ConversationStore:
    """Mixin of Store: needs self.db, self._lock and now_iso."""

    # --- conversations
    def create_conversation(self, title: str | None = None, model_id: str | None = None, **settings) -> dict:
        from tandem.app.store.store import now_iso

        unknown = set(settings) - set(SETTING_FIELDS)
        if unknown:
            raise ValueError(f"unknown conversation settings: {sorted(unknown)}")
        stamp = now_iso()
        row = {
            "id": uuid.uuid4().hex,
            "title": (title or "").strip() or DEFAULT_TITLE,
            "model_id": model_id,
            "context_policy": None,
            "pinned": 0,
            "current_leaf_id": None,
            "created_at": stamp,
            "updated_at": stamp,
            **{k: v for k, v in settings.items() if v is not None},
        }
        with self._lock, self.db.atomic():
            self.db["conversations"].insert(row)
        return self.get_conversation(row["id"])

    def list_conversations(self) -> list[dict]:
        with self._lock:
            rows = list(
                self.db.query(
                    "select c.*, (select count(*) from messages m where m.conversation_id = c.id)"
                    " as message_count from conversations c order by c.pinned desc, c.updated_at desc, c.rowid desc"
                )
            )
        return [_conversation(r) for r in rows]

    def get_conversation(self, conversation_id: str) -> dict:
        with self._lock:
            rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise NotFound(
                f"No conversation with id {conversation_id!r}. It may have been deleted; "
                "list conversations with GET /api/conversations."
            )
        return _conversation(rows[0])

    def update_conversation(self, conversation_id: str, touch: bool = False, **changes) -> dict:
        """Change title, pinned or settings; touch moves it to the top of the list."""
        from tandem.app.store.store import now_iso

        allowed = {"title", "pinned", *SETTING_FIELDS}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown conversation fields: {sorted(unknown)}")
        self.get_conversation(conversation_id)
        if "title" in changes:
            changes["title"] = (changes["title"] or "").strip() or DEFAULT_TITLE
        if "pinned" in changes:
            changes["pinned"] = 1 if changes["pinned"] else 0
        if touch:
            changes["updated_at"] = now_iso()
        if changes:
            with self._lock, self.db.atomic():
                self.db["conversations"].update(conversation_id, changes)
        return self.get_conversation(conversation_id)

    def rename_conversation(self, conversation_id: str, title: str) -> dict:
        return self.update_conversation(conversation_id, touch=True, title=title)

    def set_conversation_model(self, conversation_id: str, model_id: str | None) -> dict:
        """The model the conversation is answered with; None: the default model."""
        return self.update_conversation(conversation_id, touch=True, model_id=model_id)

    def set_context_policy(self, conversation_id: str, policy: str | None) -> dict:
        return self.update_conversation(conversation_id, context_policy=policy)

    def delete_conversation(self, conversation_id: str) -> None:
        self.get_conversation(conversation_id)
        with self._lock, self.db.atomic():
            self.db.execute("delete from messages where conversation_id = ?", [conversation_id])
            self.db.execute("delete from conversations where id = ?", [conversation_id])

    # --- messages
    def list_messages(self, conversation_id: str) -> list[dict]:
        """Every message of the conversation, all branches, oldest first."""
        self.get_conversation(conversation_id)
        with self._lock:
            return list(self.db["messages"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))

    def get_message(self, conversation_id: str, message_id: int) -> dict:
        with self._lock:
            rows = list(self.db["messages"].rows_where("id = ? and conversation_id = ?", [message_id, conversation_id]))
        if not rows:
            raise NotFound(f"No message {message_id} in conversation {conversation_id!r}; it may have been deleted.")
        return rows[0]

    def branch(self, conversation_id: str, leaf_id: int | None | object = LEAF) -> list[dict]:
        """The messages from the first to leaf_id (default: the active branch's end), each with
        `siblings`: the ids sharing its parent, oldest first, itself included."""
        conv = self.get_conversation(conversation_id)
        leaf = conv["current_leaf_id"] if leaf_id is LEAF else leaf_id
        rows = self.list_messages(conversation_id)
        by_id = {m["id"]: m for m in rows}
        children: dict[int | None, list[int]] = {}
        for m in rows:
            children.setdefault(m["parent_id"], []).append(m["id"])
        path = []
        seen = set()
        node = by_id.get(leaf) if leaf is not None else None
        while node is not None and node["id"] not in seen:  # seen: a cycle would be a damaged file
            seen.add(node["id"])
            path.append({**node, "siblings": children.get(node["parent_id"], [node["id"]])})
            node = by_id.get(node["parent_id"]) if node["parent_id"] is not None else None
        return path[::-1]

    def latest_leaf(self, conversation_id: str, message_id: int) -> int:
        """The end of the most recent branch below message_id (itself when it has no replies)."""
        with self._lock:
            return self._latest_leaf_locked(conversation_id, message_id)

    def set_leaf(self, conversation_id: str, message_id: int) -> dict:
        """Show the branch through message_id, down to its most recent reply."""
        self.get_message(conversation_id, message_id)
        leaf = self.latest_leaf(conversation_id, message_id)
        with self._lock, self.db.atomic():
            self.db["conversations"].update(conversation_id, {"current_leaf_id": leaf})
        return self.get_conversation(conversation_id)

    def add_message(self, conversation_id: str, role: str, content: str, parent_id: int | None | object = LEAF,
                    **reply: object) -> dict:
        """Add one message below parent_id (default: the end of the active branch) and make it the
        active branch's end; the conversation's updated_at (and a default title) move with it."""
        from tandem.app.store.store import now_iso, title_from

        unknown = set(reply) - set(REPLY_FIELDS)
        if unknown:
            raise ValueError(f"unknown message fields: {sorted(unknown)}")
        conv = self.get_conversation(conversation_id)
        parent = conv["current_leaf_id"] if parent_id is LEAF else parent_id
        if parent is not None:
            self.get_message(conversation_id, parent)
        stamp = now_iso()
        row = {"conversation_id": conversation_id, "parent_id": parent, "role": role, "content": content,
               "created_at": stamp}
        row.update({k: v for k, v in reply.items() if v is not None})
        changes: dict = {"updated_at": stamp}
        if role == "user" and conv["title"] == DEFAULT_TITLE:
            changes["title"] = title_from(content)
        with self._lock, self.db.atomic():
            table = self.db["messages"].insert(row)
            row["id"] = table.last_pk
            changes["current_leaf_id"] = row["id"]
            self.db["conversations"].update(conversation_id, changes)
            return self.db["messages"].get(row["id"])

    # --- a reply as it is written: created when it starts, its text saved as it grows
    def begin_reply(self, conversation_id: str, parent_id: int, model_id: str) -> dict:
        """An empty assistant message with status 'writing' below parent_id (a process killed
        mid-reply leaves it there: mark_interrupted() marks it at the next start)."""
        return self.add_message(conversation_id, "assistant", "", parent_id=parent_id, status="writing",
                                model_id=model_id)

    def write_reply(self, message_id: int, content: str) -> None:
        with self._lock, self.db.atomic():
            self.db.execute("update messages set content = ? where id = ? and status = 'writing'", [content, message_id])

    def end_reply(self, message_id: int, content: str, **fields) -> dict:
        """The reply's final text and stats; NotFound when its conversation was deleted meanwhile."""
        from tandem.app.store.store import now_iso

        unknown = set(fields) - set(REPLY_FIELDS)
        if unknown:
            raise ValueError(f"unknown message fields: {sorted(unknown)}")
        with self._lock, self.db.atomic():
            rows = list(self.db["messages"].rows_where("id = ?", [message_id]))
            if not rows:
                raise NotFound(f"Message {message_id} no longer exists; its conversation was deleted.")
            self.db["messages"].update(message_id, {"content": content, **fields})
            self.db["conversations"].update(rows[0]["conversation_id"], {"updated_at": now_iso()})
            return self.db["messages"].get(message_id)

    def mark_interrupted(self) -> int:
        """Replies still 'writing' when the app starts were cut off by a crash or a kill: they keep
        the text saved so far, marked interrupted."""
        with self._lock, self.db.atomic():
            return self.db.execute("update messages set status = 'interrupted', finish_reason = 'interrupted'"
                                   " where status = 'writing'").rowcount

    def with_siblings(self, message: dict) -> dict:
        with self._lock:
            ids = [r["id"] for r in self.db.query(
                "select id from messages where conversation_id = ? and parent_id is ? order by id",
                [message["conversation_id"], message["parent_id"]])]
        return {**message, "siblings": ids}

    # --- fork, search, export and import
    def fork(self, conversation_id: str, message_id: int) -> dict:
        """A new conversation holding the branch up to and including message_id, with the same settings."""
        conv = self.get_conversation(conversation_id)
        path = self.branch(conversation_id, message_id)
        if not path:
            raise NotFound(f"No message {message_id} in conversation {conversation_id!r}.")
        settings = {k: conv[k] for k in SETTING_FIELDS}
        return self._insert_tree(f"{conv['title']} (fork)", settings, path, leaf=path[-1]["id"])

    def search(self, query: str, limit: int = 30) -> list[dict]:
        """Conversations whose title or messages match; message hits with a snippet (FTS5 ranking)."""
        # Printable characters only: FTS5 reads a NUL as the end of the query string.
        clean = "".join(ch if ch.isprintable() and ch != '"' else " " for ch in query)
        words = clean.split()
        if not words:
            return []
        # Each word as a quoted prefix term: user text never reaches FTS5's query syntax.
        match = " ".join(f'"{w}"*' for w in words)
        out: list[dict] = []
        with self._lock:
            like = "%" + query.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            for r in self.db.query(
                "select id, title, pinned from conversations where title like ? escape '\\'"
                " order by updated_at desc limit ?", [like, limit]):
                out.append({"conversation_id": r["id"], "title": r["title"], "pinned": bool(r["pinned"]),
                            "message_id": None, "role": None, "snippet": [{"text": r["title"], "hit": True}]})
            rows = list(self.db.query(
                "select m.id, m.role, m.conversation_id, c.title, c.pinned,"
                " snippet(messages_fts, 0, char(2), char(3), '…', 12) as snip"
                " from messages_fts join messages m on m.id = messages_fts.rowid"
                " join conversations c on c.id = m.conversation_id"
                " where messages_fts match ? order by rank limit ?", [match, limit]))
        for r in rows:
            out.append({"conversation_id": r["conversation_id"], "title": r["title"], "pinned": bool(r["pinned"]),
                        "message_id": r["id"], "role": r["role"], "snippet": _snippet_parts(r["snip"])})
        return out[:limit]

    def export(self, conversation_id: str) -> dict:
        conv = self.get_conversation(conversation_id)
        keep = ("id", "parent_id", "role", "content", "created_at", *REPLY_FIELDS)
        return {
            "tandem_export": EXPORT_VERSION,
            "conversation": {k: conv[k] for k in ("title", "pinned", "created_at", "current_leaf_id", *SETTING_FIELDS)},
            "messages": [{k: m.get(k) for k in keep} for m in self.list_messages(conversation_id)],
        }

    def import_export(self, data: object) -> dict:
        """A conversation from export()'s JSON, checked whole before anything is written."""
        if not isinstance(data, dict) or data.get("tandem_export") != EXPORT_VERSION:
            raise InvalidRequest("This is not a Tandem conversation export (it lacks \"tandem_export\": 1). "
                                 "Export a conversation from Tandem and import that file.")
        conv, messages = data.get("conversation"), data.get("messages")
        if not isinstance(conv, dict) or not isinstance(messages, list):
            raise InvalidRequest("The export needs a \"conversation\" object and a \"messages\" list.")
        ids: set = set()
        clean = []
        for i, m in enumerate(messages):
            where = f"Message {i + 1} of the export"
            if not isinstance(m, dict):
                raise InvalidRequest(f"{where} is not an object.")
            if m.get("role") not in ROLES:
                raise InvalidRequest(f"{where} has role {m.get('role')!r}; use one of {', '.join(ROLES)}.")
            if not isinstance(m.get("content"), str):
                raise InvalidRequest(f"{where} has no text \"content\".")
            mid, parent = m.get("id"), m.get("parent_id")
            if not isinstance(mid, int) or isinstance(mid, bool) or mid in ids:
                raise InvalidRequest(f"{where} needs a unique integer \"id\".")
            if parent is not None and parent not in ids:
                raise InvalidRequest(f"{where} answers message {parent!r}, which does not come before it in the file.")
            ids.add(mid)
            row = {"id": mid, "parent_id": parent, "role": m["role"], "content": m["content"],
                   "created_at": m.get("created_at") if isinstance(m.get("created_at"), str) else None}
            row.update(_reply_fields(m))
            clean.append(row)
        settings = _settings(conv)
        if settings.get("model_id") is not None:
            with self._lock:
                if not list(self.db["models"].rows_where("id = ?", [settings["model_id"]])):
                    settings["model_id"] = None  # a model this machine does not have: the default answers
        leaf = conv.get("current_leaf_id")
        title = conv.get("title") if isinstance(conv.get("title"), str) else None
        conversation = self._insert_tree(title, settings, clean, leaf=leaf if leaf in ids else None)
        if conv.get("pinned"):
            conversation = self.update_conversation(conversation["id"], pinned=True)
        return conversation

    def _insert_tree(self, title: str | None, settings: dict, messages: list[dict], leaf: int | None) -> dict:
        """Insert messages (parents first) under new ids, in one transaction."""
        from tandem.app.store.store import now_iso

        stamp = now_iso()
        conv_id = uuid.uuid4().hex
        new_ids: dict[int, int] = {}
        with self._lock, self.db.atomic():
            self.db["conversations"].insert({
                "id": conv_id, "title": ((title or "").strip() or DEFAULT_TITLE)[:200], "pinned": 0,
                "created_at": stamp, "updated_at": stamp, "current_leaf_id": None,
                **{k: settings.get(k) for k in SETTING_FIELDS},
            })
            for m in messages:
                row = {k: v for k, v in m.items() if k not in ("id", "siblings", "conversation_id")}
                row.update(conversation_id=conv_id, parent_id=new_ids.get(m["parent_id"]),
                           created_at=m.get("created_at") or stamp)
                new_ids[m["id"]] = self.db["messages"].insert(row).last_pk
            last = new_ids.get(leaf) if leaf is not None else (max(new_ids.values()) if new_ids else None)
            if last is not None:
                last = self._latest_leaf_locked(conv_id, last)
            self.db["conversations"].update(conv_id, {"current_leaf_id": last})
        return self.get_conversation(conv_id)

    def _latest_leaf_locked(self, conversation_id: str, node: int) -> int:
        while True:
            row = next(self.db.query(
                "select max(id) as id from messages where conversation_id = ? and parent_id = ?", [conversation_id, node]))
            if row["id"] is None:
                return node
            node = row["id"]


# What an imported file may say of a reply and of the conversation's settings; anything else (or a
# value out of range) is left out, so a shared file cannot store what later breaks the conversation.
_STATUSES = {"complete", "stopped", "error", "interrupted"}
_FINISHES = {"stop", "length", "cancelled", "error", "interrupted"}
_COUNTS = ("prompt_tokens", "completion_tokens", "evicted_tokens", "drafted_tokens", "accepted_tokens")
_RATES = ("ttft_s", "decode_tps", "predicted_tps", "energy_cpu_j", "energy_gpu_j")
_BIG = 2**53


def _reply_fields(m: dict) -> dict:
    out: dict = {}
    if m.get("status") in _STATUSES:
        out["status"] = m["status"]
    if m.get("finish_reason") in _FINISHES:
        out["finish_reason"] = m["finish_reason"]
    for k in ("model_id", "spec_source"):
        if isinstance(m.get(k), str) and len(m[k]) <= 200:
            out[k] = m[k]
    for k in _COUNTS:
        v = m.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _BIG:
            out[k] = v
    for k in _RATES:
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < _BIG:
            out[k] = float(v)
    ev = m.get("evicted_ids")
    try:
        parsed = json.loads(ev) if isinstance(ev, str) else None
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in parsed):
        out["evicted_ids"] = ev
    return out


def _settings(conv: dict) -> dict:
    from tandem.runtime.engine.context import POLICIES

    out: dict = {}
    checks = {
        "model_id": lambda v: isinstance(v, str) and len(v) <= 200,
        "context_policy": lambda v: v in POLICIES,
        "system_prompt": lambda v: isinstance(v, str) and len(v) <= 20_000,
        "temperature": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5,
        "top_p": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.01 <= v <= 1,
        "max_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31,
    }
    for k, ok in checks.items():
        if conv.get(k) is not None and ok(conv[k]):
            out[k] = conv[k]
    return out


def _conversation(row: dict) -> dict:
    return {**row, "pinned": bool(row.get("pinned"))}


def _snippet_parts(snip: str) -> list[dict]:
    """FTS5's snippet with \\x02 / \\x03 around matches -> [{text, hit}] (the page builds <mark> from it)."""
    parts = []
    hit = False
    for piece in snip.replace("\x03", "\x02").split("\x02"):
        if piece:
            parts.append({"text": piece, "hit": hit})
        hit = not hit
    return parts
