"""The registry of remote servers: name, URL and key, their models (asked for and cached), and
the lookup from NAME/model to a server.

Keys go to the OS keyring when the `keyring` package has a usable backend there; otherwise they
are kept in Tandem's database (a file only this user can read, like the rest of its data). A key
is never written to a log or an error message.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from tandem.app.errors import Conflict, InvalidRequest, NotFound
from tandem.app.remote.worker import RemoteFailure, RemoteServed, RemoteWorker, _body, _reason, _refusal, tls_context

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
        if key is not None:
            key = key.strip() or None
        if key is not None and (len(key) > 500 or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key)):
            raise InvalidRequest("An API key is one line with no spaces; check what was pasted.")
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
            try:
                return ring.get_password(KEYRING_SERVICE, row["name"]) if ring is not None else None
            except Exception as err:  # noqa: BLE001 - a locked keyring: say so, do not fail the page
                raise RemoteFailure(f"The key of {row['name']} is in the OS keyring, which refused it "
                                    f"({type(err).__name__}); unlock the keyring.") from None
        return key

    def signature(self, row: dict) -> str:
        """What a loaded remote model was made from: a new URL or key (remove and add) makes a new one."""
        return f"{row['url']}|{row['added_at']}|{row.get('key') or ''}"

    # --- what each server has
    def _ask(self, name: str, url: str, key: str | None) -> tuple[list[str], str | None]:
        where = f"{name} ({url})"
        try:
            with httpx.Client(timeout=httpx.Timeout(min(10.0, self.timeout_s)), verify=tls_context()) as client:
                with client.stream("GET", url + "/models",
                                   headers={"Authorization": f"Bearer {key}"} if key else {}) as resp:
                    if resp.status_code != 200:
                        return [], _scrub(_refusal(where, resp), key)
                    body = json.loads(_body(resp, 4 << 20))
            data = body.get("data") if isinstance(body, dict) else None
            ids = [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)
                   and 0 < len(m["id"]) <= 200 and m["id"].isprintable()]
            return ids, None
        except Exception as err:  # noqa: BLE001 - whatever it answered, it is not a server to use
            return [], _scrub(f"{where} could not be reached: {_reason(err)}.", key)

    def models(self, name: str, fresh: bool = False) -> tuple[list[str], str | None]:
        """(model ids, error): asked again after MODELS_TTL_S or when fresh."""
        with self._lock:
            cached = self._models.get(name)
        if cached and not fresh and time.monotonic() - cached[0] < MODELS_TTL_S:
            return cached[1], cached[2]
        row = self.store.get_remote(name)
        if row is None:
            return [], f"No remote is named {name!r}."
        try:
            ids, error = self._ask(name, row["url"], self._key(row))
        except RemoteFailure as err:
            ids, error = [], str(err)
        if error is not None and cached:  # keep what it had; say it is not answering now
            ids = cached[1]
        with self._lock:
            if self.store.get_remote(name) is not None:  # not removed meanwhile
                self._models[name] = (time.monotonic(), ids, error)
        return ids, error

    def describe(self, name: str, fresh: bool = False) -> dict | None:
        row = self.store.get_remote(name)
        if row is None:  # removed meanwhile
            return None
        ids, error = self.models(name, fresh)
        return {"name": name, "url": row["url"], "has_key": bool(row.get("key")), "added_at": row["added_at"],
                "models": [f"{name}/{m}" for m in ids], "status": "failed" if error else "ok", "error": error}

    def list(self, fresh: bool = False) -> list[dict]:
        return [d for r in self.store.list_remotes() if (d := self.describe(r["name"], fresh)) is not None]

    # --- other machines' planners
    def verdicts_elsewhere(self, repo_id: str, timeout_s: float = 8.0) -> dict[str, list[dict]]:
        """For each model file of a hub repo, where it would run among the registered servers that
        are Tandems, as their own planners judge it: {key: [{remote, fit, label, decode_tps, n_ctx}]}.
        All are asked at once; servers that are not Tandems, or do not answer in time, are left out."""
        from concurrent.futures import ThreadPoolExecutor

        rows = self.store.list_remotes()
        out: dict[str, list[dict]] = {}
        if not rows:
            return out
        with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
            answers = list(pool.map(lambda row: (row, self._verdicts_of(row, repo_id, timeout_s)), rows))
        for row, entries in answers:
            for key, v in entries:
                out.setdefault(key, []).append({"remote": row["name"], **v})
        return out

    def _verdicts_of(self, row: dict, repo_id: str, timeout_s: float) -> list[tuple[str, dict]]:
        root = row["url"][: -len("/v1")] if row["url"].endswith("/v1") else row["url"]
        try:
            key = self._key(row)
            with httpx.Client(timeout=httpx.Timeout(timeout_s), verify=tls_context()) as client:
                with client.stream("GET", f"{root}/api/hub/repos/{repo_id}",
                                   headers={"Authorization": f"Bearer {key}"} if key else {}) as resp:
                    if resp.status_code != 200:
                        return []
                    body = json.loads(_body(resp, 8 << 20))
            found = []
            for entry in body.get("models", []) if isinstance(body, dict) else []:
                v = entry.get("verdict") if isinstance(entry, dict) else None
                if not isinstance(v, dict) or not isinstance(entry.get("key"), str):
                    continue
                fit, label, tps, n_ctx = v.get("fit"), v.get("label"), v.get("decode_tps"), v.get("n_ctx")
                if fit in ("gpu", "split", "cpu") and isinstance(label, str):
                    found.append((entry["key"], {
                        "fit": fit, "label": label[:80],
                        "decode_tps": float(tps) if isinstance(tps, (int, float)) and not isinstance(tps, bool) else None,
                        "n_ctx": n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) else None}))
            return found
        except Exception as err:  # noqa: BLE001 - not a Tandem, or not answering: nothing to say
            log.info("could not ask %s about %s: %s", row["name"], repo_id, _reason(err))
            return []

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
        worker.signature = self.signature(row)
        return RemoteServed(f"{row['name']}/{model}", f"{model} on {row['name']}", worker, row["name"]), worker


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


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
    if parts.query or parts.fragment:
        raise InvalidRequest("A server address has no ?query or #fragment; write it like http://192.168.1.20:8742/v1.")
    return url if parts.path not in ("", "/") else url + "/v1"
