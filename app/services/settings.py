"""The app's settings as the Settings page edits them.

Two kinds:
- live ones (theme, the defaults of new conversations, the default model) apply at once and are
  kept in the database;
- start-up ones (port, saved-cache size, LAN access, data folder) apply at the next start. Port,
  cache size and LAN access (with its API key, made when it is first turned on) are kept in the
  database and used when neither a command-line option nor a TANDEM_* variable sets them; the data folder cannot live inside itself, so it is kept in a small file in
  the user's config folder (TANDEM_CONFIG_DIR), read when TANDEM_DATA_DIR and --data-dir are unset.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from pathlib import Path

from tandem.app.config import DATA_DIR_FILE, Settings, config_dir
from tandem.app.errors import InvalidRequest
from tandem.app.store import Store
from tandem.runtime.engine.context import POLICIES

THEMES = ("system", "light", "dark")
LIVE = ("theme", "default_model_id", "system_prompt", "temperature", "top_p", "max_tokens", "context_policy")
AT_START = ("port", "context_cache_mb", "data_dir", "lan_access")
MAX_SYSTEM_PROMPT = 20_000


class SettingsService:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.running_port: int | None = None  # the port bound (settings.port may be 0: any free one)

    def values(self) -> dict:
        saved = self.store.saved_settings()
        s = self.settings
        default = next((m for m in self.store.list_models() if m["is_default"]), None)
        return {
            "theme": saved.get("theme", "system"),
            "default_model_id": default["id"] if default else None,
            **self._reply_defaults(saved),
            # start-up settings: what the next start uses (this run's value is in `running`)
            "port": saved.get("port", s.port),
            "context_cache_mb": saved.get("context_cache_mb", s.context_cache_mb),
            "data_dir": str(_saved_data_dir() or s.data_dir),
            # other devices on the network may use the API, with this key (the settings are this machine's only)
            "lan_access": bool(saved.get("lan_access", not s.loopback)),
            # the key itself is shown once, when made; what is kept is its hash and a hint to recognise it
            "api_key_set": bool(saved.get("api_key_hash") or s.api_key),
            "api_key_hint": saved.get("api_key_hint") or (key_hint(s.api_key) if s.api_key else None),
        }

    def describe(self) -> dict:
        s = self.settings
        return {
            "values": self.values(),
            "restart": list(AT_START),
            "running": {"port": self.running_port or s.port, "context_cache_mb": s.context_cache_mb,
                        "data_dir": str(s.data_dir), "lan_access": not s.loopback},
            "choices": {"theme": list(THEMES), "context_policy": [None, *POLICIES]},
        }

    def update(self, changes: dict) -> dict:
        """Check every change first, then save them together; a bad value changes nothing."""
        unknown = sorted(set(changes) - set(LIVE) - set(AT_START))
        if unknown:
            raise InvalidRequest(f"Unknown setting {unknown[0]!r}; the settings are {', '.join(LIVE + AT_START)}.")
        clean = {k: _check(k, v, self.settings) for k, v in changes.items()}
        if "default_model_id" in clean:
            model = self.store.get_model(clean.pop("default_model_id"))  # NotFound: a clear 404
            self.store.upsert_model({**model, "is_default": 1})
        if "data_dir" in clean:
            _save_data_dir(clean.pop("data_dir"))
        made = None
        if clean.get("lan_access") and not self.store.saved_settings().get("api_key_hash"):
            # a key of its own, never only TANDEM_API_KEY: a later start without it must still have one
            made = new_api_key()
            clean.update(key_settings(made))
        self.store.save_settings(clean)
        return self._with_key(made)

    def renew_api_key(self) -> dict:
        """A new key for other devices (the old one stops working at the next start); the answer
        is the only place the key is ever shown."""
        key = new_api_key()
        self.store.save_settings(key_settings(key))
        return self._with_key(key)

    def _with_key(self, key: str | None) -> dict:
        out = self.describe()
        if key is not None:
            out["new_api_key"] = key
        return out

    # --- what a reply or a new conversation uses (read per request: only the saved settings)
    def _reply_defaults(self, saved: dict) -> dict:
        s = self.settings
        return {
            "system_prompt": saved.get("system_prompt"),
            "temperature": saved.get("temperature", s.temperature),
            "top_p": saved.get("top_p", 0.95),
            "max_tokens": saved.get("max_tokens", s.max_tokens),
            "context_policy": saved.get("context_policy"),
        }

    def conversation_defaults(self) -> dict:
        prompt = self._reply_defaults(self.store.saved_settings())["system_prompt"]
        return {"system_prompt": prompt} if prompt else {}

    def sampling_defaults(self) -> dict:
        v = self._reply_defaults(self.store.saved_settings())
        return {"temperature": v["temperature"], "top_p": v["top_p"], "max_tokens": v["max_tokens"]}

    def context_policy(self) -> str | None:
        return self._reply_defaults(self.store.saved_settings())["context_policy"]


def apply_saved_start_settings(settings: Settings, store: Store) -> None:
    """The saved cache size, where no option or TANDEM_* variable set it for this run (the port:
    saved_start_values, before the server binds)."""
    saved = store.saved_settings()
    for key in ("context_cache_mb",):
        if key in saved and key not in settings.model_fields_set:
            try:
                setattr(settings, key, _check(key, saved[key], settings))
            except InvalidRequest:
                continue  # a damaged saved value: keep the default


def _check(key: str, value, settings: Settings):
    def number(lo: float, hi: float, integer: bool = False):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not lo <= value <= hi or (integer and value != int(value)):
            kind = "a whole number" if integer else "a number"
            raise InvalidRequest(f"{key} must be {kind} from {lo:g} to {hi:g}; got {value!r}.")
        return int(value) if integer else float(value)

    if key == "theme":
        if value not in THEMES:
            raise InvalidRequest(f"theme must be one of {', '.join(THEMES)}; got {value!r}.")
        return value
    if key == "default_model_id":
        if value is None:  # back to the built-in model
            from tandem.runtime import embedded

            return embedded.MODEL_ID
        if not isinstance(value, str) or not value:
            raise InvalidRequest("default_model_id must be an installed model's id (GET /api/models lists them).")
        return value
    if key == "system_prompt":
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or len(value) > MAX_SYSTEM_PROMPT:
            raise InvalidRequest(f"system_prompt must be text of at most {MAX_SYSTEM_PROMPT} characters.")
        return value
    if key == "context_policy":
        if value is not None and value not in POLICIES:
            raise InvalidRequest(f"context_policy must be one of {', '.join(POLICIES)}, or null for the plan's choice.")
        return value
    if key == "temperature":
        return number(0.0, 5.0)
    if key == "top_p":
        return number(0.01, 1.0)
    if key == "max_tokens":
        return number(1, settings.max_reply_tokens, integer=True)
    if key == "port":
        return number(1, 65535, integer=True)
    if key == "lan_access":
        if not isinstance(value, bool):
            raise InvalidRequest(f"lan_access must be true or false; got {value!r}.")
        return value
    if key == "context_cache_mb":
        return number(0, 1024 * 1024, integer=True)
    if key == "data_dir":
        return _check_folder(value)
    raise InvalidRequest(f"Unknown setting {key!r}.")


def _check_folder(value) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("data_dir must be a folder path.")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        raise InvalidRequest(f"data_dir must be an absolute path (like /home/you/tandem-data); got {value!r}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tandem-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise InvalidRequest(f"Tandem cannot write to {path} ({err.strerror or err}); choose a folder you own.") from err
    return path


def _saved_data_dir() -> Path | None:
    try:
        text = (config_dir() / DATA_DIR_FILE).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def new_api_key() -> str:
    return "tdm-" + secrets.token_urlsafe(24)


def key_hint(key: str) -> str:
    """Enough of a key to tell which one it is, not enough to use it."""
    return key[:8] + "…"


def key_settings(key: str) -> dict:
    """What is saved of a key: its hash and its hint."""
    from tandem.app.security import hash_key

    return {"api_key_hash": hash_key(key), "api_key_hint": key_hint(key)}


def saved_start_values(db_path: Path) -> dict:
    """Port, LAN access and API key saved on the Settings page, read before the server binds
    (without opening the store: its migrations may not have run yet). Unusable values are left out."""
    import json
    import sqlite3

    if not db_path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "select key, value from settings where key in ('port', 'lan_access', 'api_key', 'api_key_hash')").fetchall()
        finally:
            conn.close()
        saved = {k: json.loads(v) for k, v in rows}
    except (sqlite3.Error, ValueError, TypeError):
        return {}
    out = {}
    port = saved.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        out["port"] = port
    if isinstance(saved.get("lan_access"), bool):
        out["lan_access"] = saved["lan_access"]
    key_hash = saved.get("api_key_hash")
    if isinstance(key_hash, str) and re.fullmatch(r"[0-9a-f]{64}", key_hash):
        out["api_key_hash"] = key_hash
    elif isinstance(saved.get("api_key"), str) and len(saved["api_key"]) >= 16:  # kept in full by earlier versions
        from tandem.app.security import hash_key

        out["api_key_hash"] = hash_key(saved["api_key"])
    return out


def _save_data_dir(path: Path) -> None:
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (DATA_DIR_FILE + ".tmp")
    tmp.write_text(str(path) + "\n")
    os.replace(tmp, folder / DATA_DIR_FILE)
