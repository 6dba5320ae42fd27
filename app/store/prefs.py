"""Saved system-prompt presets and the app's settings (one JSON value per key)."""

from __future__ import annotations

import json

from tandem.app.errors import Conflict, NotFound


class PrefsStore:
    """Mixin of Store: needs self.db and self._lock."""

    # --- system prompt presets
    def list_presets(self) -> list[dict]:
        with self._lock:
            return list(self.db["presets"].rows_where(select="id, name, content", order_by="name collate nocase"))

    def add_preset(self, name: str, content: str) -> dict:
        from tandem.app.store.store import now_iso

        name = " ".join(name.split())
        with self._lock, self.db.atomic():
            if list(self.db["presets"].rows_where("name = ?", [name])):
                raise Conflict(f"A preset named {name!r} exists already; choose another name or delete that one first.")
            pk = self.db["presets"].insert({"name": name, "content": content, "created_at": now_iso()}).last_pk
            row = self.db["presets"].get(pk)
        return {k: row[k] for k in ("id", "name", "content")}

    def delete_preset(self, preset_id: int) -> None:
        with self._lock, self.db.atomic():
            if self.db.execute("delete from presets where id = ?", [preset_id]).rowcount != 1:
                raise NotFound(f"No preset with id {preset_id}; GET /api/presets lists them.")

    # --- settings
    def saved_settings(self) -> dict:
        with self._lock:
            rows = list(self.db["settings"].rows_where())
        out = {}
        for r in rows:
            try:
                out[r["key"]] = json.loads(r["value"])
            except (TypeError, ValueError):
                continue  # a damaged value falls back to the default
        return out

    def save_settings(self, values: dict) -> None:
        """Set (or with None, clear) settings, all in one transaction."""
        with self._lock, self.db.atomic():
            for key, value in values.items():
                if value is None:
                    self.db.execute("delete from settings where key = ?", [key])
                else:
                    self.db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")
