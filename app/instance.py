"""One Tandem per data folder: a lock file naming the running server, so that a second start
brings the first one forward instead of opening the same database twice.

The lock is `tandem.lock` in the data folder, JSON: {"pid", "url", "version", "started_at"}
once the server listens, {"pid", "state": "starting"} before. A lock whose process is gone or
whose server does not answer its health endpoint is stale and replaced.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from tandem.app import __version__
from tandem.app.errors import TandemError

LOCK_NAME = "tandem.lock"
# A model of several GB can take a minute to load before the first server listens.
STARTING_WAIT_S = 120.0
HEALTH_TIMEOUT_S = 3.0

# Loopback requests must not go through a proxy named in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LockUnavailable(TandemError):
    status = 500
    code = "data_dir_unwritable"


@dataclass(frozen=True)
class Running:
    """The Tandem that holds the data folder."""

    pid: int
    url: str  # without the trailing slash

    @property
    def port(self) -> int | None:
        try:
            return int(self.url.rsplit(":", 1)[1].split("/")[0])
        except (IndexError, ValueError):
            return None


def pid_alive(pid: int) -> bool:
    # psutil, not os.kill(pid, 0): on Windows os.kill terminates the process.
    try:
        return pid > 0 and psutil.pid_exists(pid)
    except Exception:  # noqa: BLE001 - an unreadable process table: assume it lives, health decides
        return True


def healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether a Tandem server answers at url (any status: a failed model still is a server)."""
    try:
        with _opener.open(url + "/api/health", timeout=timeout) as r:
            body = json.loads(r.read().decode("utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return isinstance(body, dict) and "status" in body and "version" in body


def post(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    """POST with no body to a loopback URL: (status, JSON body or {})."""
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _opener.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        body = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}


class InstanceLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_NAME
        self.owned = False

    def acquire(self, wait_s: float = STARTING_WAIT_S, on_wait=None) -> Running | None:
        """Claim the data folder for this process (None), or return the Tandem that holds it.

        A Tandem still starting elsewhere is waited for (up to wait_s); on_wait(pid) is called
        once when that happens, so that the person knows why nothing shows yet.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._unwritable(err) from err
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            if self._claim():
                return None
            info, age = self._read()
            pid = info.get("pid") if isinstance(info.get("pid"), int) else None
            if pid is None:
                # Created but not written yet by a process starting this very moment.
                if age is not None and age < 5.0:
                    time.sleep(0.1)
                    continue
                self._remove_stale()
                continue
            if pid == os.getpid() or not pid_alive(pid):
                self._remove_stale()
                continue
            url = info.get("url")
            if isinstance(url, str) and url:
                if healthy(url):
                    return Running(pid, url)
                self._remove_stale()
                continue
            if time.monotonic() > deadline:  # stuck starting: a hung process must not block forever
                self._remove_stale()
                continue
            if not told and on_wait is not None:
                on_wait(pid)
                told = True
            time.sleep(0.25)

    def publish(self, url: str) -> None:
        """Name the listening server in the lock (atomically: a reader never sees half a file)."""
        data = {"pid": os.getpid(), "url": url, "version": __version__, "started_at": time.time()}
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise self._unwritable(err) from err
        self.owned = True

    def release(self) -> None:
        """Remove the lock if it still names this process (a stale-lock takeover may have replaced it)."""
        if not self.owned:
            return
        self.owned = False
        info, _ = self._read()
        if info.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass

    def _claim(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise self._unwritable(err) from err
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "state": "starting", "version": __version__}))
        self.owned = True
        return True

    def _read(self) -> tuple[dict, float | None]:
        try:
            raw = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return {}, None
        try:
            info = json.loads(raw)
        except ValueError:
            return {}, age
        return (info if isinstance(info, dict) else {}), age

    def _remove_stale(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise self._unwritable(err) from err

    def _unwritable(self, err: OSError) -> LockUnavailable:
        return LockUnavailable(
            f"Cannot use the data folder {self.path.parent} ({err.strerror or err}). "
            "Make it writable, or choose another one with --data-dir or TANDEM_DATA_DIR."
        )
