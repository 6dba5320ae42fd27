"""People-facing state in one SQLite file: conversations (store/conversations.py), presets and
settings (store/prefs.py), registered models, measurements, downloads.

One connection shared by the server's threads behind a lock; every write that must not be left
half-done runs in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from tandem.app.errors import NotFound
from tandem.app.store.conversations import DEFAULT_TITLE, ConversationStore  # noqa: F401 (re-exported)
from tandem.app.store.migrations import migrate
from tandem.app.store.prefs import PrefsStore



def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store(ConversationStore, PrefsStore):
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        self.db = Database(conn)
        self.db.execute("PRAGMA foreign_keys = ON")
        self._enable_wal()
        self._lock = threading.RLock()
        with self._lock:
            self.migrations_run = migrate(self.db)

    def _enable_wal(self, attempts: int = 50) -> None:
        """WAL mode. Switching needs the database to itself for a moment, and SQLite does not wait
        for that (no busy handler), so a second process opening it at once retries."""
        for i in range(attempts):
            try:
                self.db.enable_wal()
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or i == attempts - 1:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        with self._lock:
            self.db.close()

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

    def delete_model(self, model_id: str) -> None:
        """Unregister a model; when it was the default, the built-in model becomes the default again."""
        model = self.get_model(model_id)
        with self._lock, self.db.atomic():
            self.db.execute("delete from models where id = ?", [model_id])
            if model["is_default"]:
                self.db.execute("update models set is_default = 1 where source = 'embedded'")

    # --- remote servers
    def add_remote(self, row: dict) -> None:
        with self._lock, self.db.atomic():
            self.db["remotes"].insert(row, pk="name")

    def get_remote(self, name: str) -> dict | None:
        with self._lock:
            rows = list(self.db["remotes"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def list_remotes(self) -> list[dict]:
        with self._lock:
            return list(self.db["remotes"].rows_where(order_by="name"))

    def delete_remote(self, name: str) -> None:
        with self._lock, self.db.atomic():
            self.db.execute("delete from remotes where name = ?", [name])

    # --- pool workers (tandem worker machines)
    def add_pool_worker(self, endpoint: str) -> None:
        with self._lock, self.db.atomic():
            self.db["pool_workers"].insert({"endpoint": endpoint, "added_at": now_iso()}, pk="endpoint", replace=True)

    def list_pool_workers(self) -> list[str]:
        with self._lock:
            return [r["endpoint"] for r in self.db["pool_workers"].rows_where(order_by="added_at")]

    def delete_pool_worker(self, endpoint: str) -> bool:
        with self._lock, self.db.atomic():
            return self.db.execute("delete from pool_workers where endpoint = ?", [endpoint]).rowcount > 0

    # --- hub: headers read from remote files
    def cached_header(self, key: str) -> dict | None:
        with self._lock:
            rows = list(self.db["hub_headers"].rows_where("key = ?", [key]))
        return rows[0] if rows else None

    def cache_header(self, key: str, repo_id: str, model_key: str, size: int, fetched_bytes: int, info_json: str) -> None:
        with self._lock, self.db.atomic():
            self.db["hub_headers"].upsert({"key": key, "repo_id": repo_id, "model_key": model_key, "size": size,
                                           "fetched_bytes": fetched_bytes, "info_json": info_json,
                                           "created_at": now_iso()}, pk="key")

    # --- hub: downloads (state kept so that a download goes on after a restart)
    def create_download(self, row: dict, files: list[dict]) -> dict:
        stamp = now_iso()
        with self._lock, self.db.atomic():
            self.db["downloads"].insert({"created_at": stamp, "updated_at": stamp, "done_bytes": 0, **row})
            for f in files:
                self.db["download_files"].insert({"download_id": row["id"], **f})
        return self.get_download(row["id"])

    def get_download(self, download_id: str) -> dict:
        with self._lock:
            rows = list(self.db["downloads"].rows_where("id = ?", [download_id]))
            if not rows:
                raise NotFound(f"No download with id {download_id!r}; GET /api/hub/downloads lists them.")
            row = rows[0]
            row["files"] = list(self.db["download_files"].rows_where("download_id = ?", [download_id], order_by="id"))
        return row

    def list_downloads(self, statuses: tuple[str, ...] | None = None) -> list[dict]:
        with self._lock:
            if statuses:
                marks = ", ".join("?" for _ in statuses)
                ids = [r["id"] for r in self.db["downloads"].rows_where(
                    f"status in ({marks})", list(statuses), order_by="created_at")]
            else:
                ids = [r["id"] for r in self.db["downloads"].rows_where(order_by="created_at")]
            return [self.get_download(i) for i in ids]

    def find_download(self, repo_id: str, model_key: str, statuses: tuple[str, ...]) -> dict | None:
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = list(self.db["downloads"].rows_where(
                f"repo_id = ? and model_key = ? and status in ({marks})", [repo_id, model_key, *statuses],
                order_by="created_at desc", limit=1))
        return self.get_download(rows[0]["id"]) if rows else None

    def update_download(self, download_id: str, **changes) -> None:
        with self._lock, self.db.atomic():
            self.db["downloads"].update(download_id, {**changes, "updated_at": now_iso()})

    def update_download_file(self, download_id: str, name: str, **changes) -> None:
        with self._lock, self.db.atomic():
            self.db.execute(
                f"update download_files set {', '.join(f'{k} = ?' for k in changes)} where download_id = ? and name = ?",
                [*changes.values(), download_id, name])

    def update_download_file_all(self, download_id: str, **changes) -> None:
        with self._lock, self.db.atomic():
            self.db.execute(f"update download_files set {', '.join(f'{k} = ?' for k in changes)} where download_id = ?",
                            [*changes.values(), download_id])

    def finish_download(self, download_id: str, model: dict) -> bool:
        """Mark a download complete and register its model in one transaction, once: False when
        it was already complete (another worker or an earlier run got there first)."""
        with self._lock, self.db.atomic():
            cur = self.db.execute("update downloads set status = 'complete', error = null, error_code = null,"
                                  " model_id = ?, updated_at = ? where id = ? and status != 'complete'",
                                  [model["id"], now_iso(), download_id])
            if cur.rowcount != 1:
                return False
            self.db["models"].upsert({"added_at": now_iso(), **model}, pk="id")
        return True

    def delete_download(self, download_id: str) -> None:
        with self._lock, self.db.atomic():
            self.db.execute("delete from download_files where download_id = ?", [download_id])
            self.db.execute("delete from downloads where id = ?", [download_id])


def title_from(text: str, limit: int = 60) -> str:
    """A conversation title from its first message: one line, at most `limit` characters."""
    line = " ".join(text.split())
    if not line:
        return DEFAULT_TITLE
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
