"""The registry of remote servers: name, URL and key, their models (asked for and cached), and
the lookup from NAME/model to a server.

Keys go to the OS keyring when the `keyring` package has a usable backend there; otherwise they
are kept in Tandem's database (a file only this user can read, like the rest of its data). A key
is never written to a log or an error message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from tandem.app.errors import Conflict, InvalidRequest, NotFound
from tandem.app.remote.worker import RemoteServed, RemoteWorker, _reason, _refusal

log = logging.getLogger("tandem")

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
KEYRING_SERVICE = "tandem-remote"
IN_KEYRING = "keyring"  # the key column's value when the key is in the keyring
MODELS_TTL_S = 30.0


def _keyring():
    """The keyring module when it has a real backend here, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except Exception:  # noqa: BLE001 - not installed, or broken: keep keys in the database
        return None
    try:
        return None if isinstance(keyring.get_keyring(), fail.Keyring) else keyring
    except Exception:  # noqa: BLE001
        return None


class RemoteService:
    def __init__(self, store, timeout_s: float = 60.0):
        self.store = store
        self.timeout_s = timeout_s
        self._models: dict[str, tuple[float, list[str], str | None]] = {}  # name -> (when, ids, error)
        self._lock = threading.Lock()

    # --- the registry
    def add(self, name: str, url: str, key: str | None = None) -> dict:
        """Register a server after asking it for its models (so a typo is caught now)."""
        name = name.strip().lower()
        if not NAME.fullmatch(name):
            raise InvalidRequest("A remote's name is 1 to 32 lower-case letters, digits, - or _, starting with a "
                                 "letter or digit (it prefixes its models: NAME/model).")
        url = normal_url(url)
        if self.store.get_remote(name) is not None:
            raise Conflict(f"A remote named {name!r} exists; remove it first or pick another name.")
        ids, error = self._ask(name, url, key)
        if error is not None:
            raise InvalidRequest(f"{error} Nothing was registered.")
        stored = None
        if key:
            ring = _keyring()
            if ring is not None:
                ring.set_password(KEYRING_SERVICE, name, key)
                stored = IN_KEYRING
            else:
                stored = key
        self.store.add_remote({"name": name, "url": url, "key": stored,
                               "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        with self._lock:
            self._models[name] = (time.monotonic(), ids, None)
        return self.describe(name)

    def remove(self, name: str) -> None:
        row = self.store.get_remote(name)
        if row is None:
            raise NotFound(f"No remote is named {name!r}.")
        if row.get("key") == IN_KEYRING and (ring := _keyring()) is not None:
            try:
                ring.delete_password(KEYRING_SERVICE, name)
            except Exception:  # noqa: BLE001 - gone already
                pass
        self.store.delete_remote(name)
        with self._lock:
            self._models.pop(name, None)

    def _key(self, row: dict) -> str | None:
        key = row.get("key")
        if key == IN_KEYRING:
            ring = _keyring()
            return ring.get_password(KEYRING_SERVICE, row["name"]) if ring is not None else None
        return key

    # --- what each server has
    def _ask(self, name: str, url: str, key: str | None) -> tuple[list[str], str | None]:
        where = f"{name} ({url})"
        try:
            with httpx.Client(timeout=httpx.Timeout(min(10.0, self.timeout_s))) as client:
                resp = client.get(url + "/models", headers={"Authorization": f"Bearer {key}"} if key else {})
            if resp.status_code != 200:
                return [], _refusal(where, resp)
            data = resp.json().get("data")
            ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
            return ids, None
        except (httpx.HTTPError, ValueError, TypeError, AttributeError, OSError) as err:
            return [], f"{where} could not be reached: {_reason(err)}."

    def models(self, name: str, fresh: bool = False) -> tuple[list[str], str | None]:
        """(model ids, error): asked again after MODELS_TTL_S or when fresh."""
        with self._lock:
            cached = self._models.get(name)
        if cached and not fresh and time.monotonic() - cached[0] < MODELS_TTL_S:
            return cached[1], cached[2]
        row = self.store.get_remote(name)
        if row is None:
            return [], f"No remote is named {name!r}."
        ids, error = self._ask(name, row["url"], self._key(row))
        if error is not None and cached:  # keep what it had; say it is not answering now
            ids = cached[1]
        with self._lock:
            self._models[name] = (time.monotonic(), ids, error)
        return ids, error

    def describe(self, name: str, fresh: bool = False) -> dict:
        row = self.store.get_remote(name)
        ids, error = self.models(name, fresh)
        return {"name": name, "url": row["url"], "has_key": bool(row.get("key")), "added_at": row["added_at"],
                "models": [f"{name}/{m}" for m in ids], "status": "failed" if error else "ok", "error": error}

    def list(self, fresh: bool = False) -> list[dict]:
        return [self.describe(r["name"], fresh) for r in self.store.list_remotes()]

    # --- other machines' planners
    def verdicts_elsewhere(self, repo_id: str) -> dict[str, list[dict]]:
        """For each model file of a hub repo, where it would run among the registered servers that
        are Tandems, as their own planners judge it: {key: [{remote, fit, label, decode_tps, n_ctx}]}.
        Servers that are not Tandems, or do not answer within a few seconds, are left out."""
        out: dict[str, list[dict]] = {}
        for row in self.store.list_remotes():
            root = row["url"][: -len("/v1")] if row["url"].endswith("/v1") else row["url"]
            key = self._key(row)
            try:
                with httpx.Client(timeout=httpx.Timeout(min(20.0, self.timeout_s))) as client:
                    resp = client.get(f"{root}/api/hub/repos/{repo_id}",
                                      headers={"Authorization": f"Bearer {key}"} if key else {})
                if resp.status_code != 200:
                    continue
                for entry in resp.json().get("models", []):
                    v = entry.get("verdict")
                    if isinstance(v, dict) and v.get("fit") not in (None, "too_big") and isinstance(entry.get("key"), str):
                        out.setdefault(entry["key"], []).append({
                            "remote": row["name"], "fit": v.get("fit"), "label": v.get("label"),
                            "decode_tps": v.get("decode_tps"), "n_ctx": v.get("n_ctx")})
            except (httpx.HTTPError, ValueError, TypeError, AttributeError, OSError) as err:
                log.info("could not ask %s about %s: %s", row["name"], repo_id, _reason(err))
        return out

    # --- NAME/model
    def split(self, model: str | None) -> tuple[dict, str] | None:
        """(the remote's row, its model id) when `model` names a registered remote's model."""
        if not model or "/" not in model:
            return None
        name, _, rest = model.partition("/")
        row = self.store.get_remote(name)
        return (row, rest) if row is not None and rest else None

    def open(self, row: dict, model: str) -> tuple[RemoteServed, RemoteWorker]:
        worker = RemoteWorker(row["name"], row["url"], model, self._key(row), self.timeout_s)
        return RemoteServed(f"{row['name']}/{model}", f"{model} on {row['name']}", worker, row["name"]), worker


def normal_url(url: str) -> str:
    """An OpenAI base URL: http(s)://host[:port][/path], /v1 added when no path is given."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{url[:200]!r} is not a server address; write it like http://192.168.1.20:8742/v1.")
    if parts.username or parts.password:
        raise InvalidRequest("Put the key in the key field, not in the URL.")
    return url if parts.path not in ("", "/") else url + "/v1"
