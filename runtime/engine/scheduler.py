"""The scheduler owns every loaded model (ollama's server/sched.go is the model for its shape).

A request asks it for a model by key with `acquire`. When the model is loaded, the request gets
a lease at once; otherwise the scheduler re-reads free memory on every device, asks the caller's
`prepare` for a plan made against the memory that would be free without the idle models, unloads
the least recently used idle models until the plan fits, and loads. Models in use (counted per
lease and per reply stream) are never unloaded: a load that needs their memory waits for them.
Several models stay loaded while they fit together; an idle model is unloaded after its
keep-alive (default 15 minutes; each request may set its own: 0 unloads at once, a negative
value never). One load runs at a time.

Memory is per device ("CPU", "GPU0", ...) in bytes. A loaded model's memory may not show in the
free-memory reading (a memory-mapped file counts as reclaimable cache; allocations can be lazy),
so what a load actually took from the reading is measured and the rest of its plan is still
counted as taken.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tandem.runtime.engine.worker import ModelWorker
from tandem.runtime.errors import Interrupted, ModelUnavailable

log = logging.getLogger("tandem")

DEFAULT_KEEP_ALIVE_S = 15 * 60.0
DEFAULT_WAIT_S = 120.0


@dataclass(frozen=True)
class Prepared:
    """What loading a model will take, and how to load it: `open()` returns (value, worker), the
    value being whatever the caller wants back in the lease (a plan, ids ...)."""

    need: dict[str, int]  # bytes per device the model will hold
    open: Callable[[], tuple[Any, ModelWorker]]
    margin: dict[str, int] = field(default_factory=dict)  # bytes per device to keep free beside it


@dataclass
class _Entry:
    key: str
    value: Any
    worker: ModelWorker
    need: dict[str, int]
    seen: dict[str, int]  # how much of `need` the free-memory reading showed as taken at load
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # idle expiry (monotonic); None: not idle or never
    unload_when_idle: bool = False

    @property
    def usable(self) -> bool:
        return not self.worker.closed


class Lease:
    """A loaded model held for one request. Replies submitted through it hold the model until
    they end; release() (or leaving the with block) gives back the lease's own hold."""

    def __init__(self, scheduler: "Scheduler", entry: _Entry, keep_alive: float | None):
        self._scheduler, self._entry, self._keep_alive = scheduler, entry, keep_alive
        self._released = False

    @property
    def value(self) -> Any:
        return self._entry.value

    @property
    def worker(self) -> ModelWorker:
        return self._entry.worker

    def submit(self, *args, **kwargs):
        """ModelWorker.submit, holding the model until the reply ends."""
        self._scheduler._hold(self._entry)
        stream = self._entry.worker.submit(*args, **kwargs)
        stream.on_end(lambda: self._scheduler._release(self._entry, self._keep_alive))
        return stream

    def embed(self, *args, **kwargs):
        """ModelWorker.embed, holding the model until it ends."""
        self._scheduler._hold(self._entry)
        stream = self._entry.worker.embed(*args, **kwargs)
        stream.on_end(lambda: self._scheduler._release(self._entry, self._keep_alive))
        return stream

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self._entry, self._keep_alive)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Scheduler:
    def __init__(self, free_memory: Callable[[], dict[str, int]], keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
                 budget: dict[str, int] | None = None, wait_s: float = DEFAULT_WAIT_S):
        """free_memory: bytes free now per device, read fresh at each call. budget: the most
        bytes per device that Tandem's models may hold together (None: what is free)."""
        self._free_memory = free_memory
        self.keep_alive_s = keep_alive_s
        self.budget = dict(budget or {})
        self.wait_s = wait_s
        self._entries: dict[str, _Entry] = {}
        self._cond = threading.Condition()
        self._load_lock = threading.Lock()
        self._loading: str | None = None
        self.failures: dict[str, str] = {}  # key -> why its last load failed
        self._closed = False
        self._reaper: threading.Thread | None = None  # started with the first load

    # --- asking for a model
    def acquire(self, key: str, prepare: Callable[[dict[str, int]], Prepared], keep_alive: float | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Lease:
        """The model `key`, loaded if needed. prepare(available) plans it against the bytes per
        device it may take and returns a Prepared; its errors (no such file, does not fit) reach
        the caller. Waits (cancellable) while the memory it needs is held by models in use."""
        deadline = time.monotonic() + self.wait_s
        while True:
            lease = self._lease_loaded(key, keep_alive)
            if lease is not None:
                return lease
            with self._load_lock:
                lease = self._lease_loaded(key, keep_alive)
                if lease is not None:
                    return lease
                if self._closed:
                    raise ModelUnavailable("Tandem is shutting down.")
                self._loading = key
                try:
                    lease = self._load(key, prepare, keep_alive)
                finally:
                    self._loading = None
                if lease is not None:
                    return lease
            with self._cond:  # what it needs is held by models in use: wait for one to be released
                self._cond.wait(0.1)
            if cancelled():
                raise Interrupted("Stopped while waiting for the model.")
            if time.monotonic() > deadline:
                busy = ", ".join(e.key for e in self._entries.values() if e.refs)
                raise ModelUnavailable(
                    f"{key} needs memory that {busy or 'other models'} still use. Stop their replies, "
                    "or try again when they finish.")

    def _lease_loaded(self, key: str, keep_alive: float | None) -> Lease | None:
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not entry.usable:  # its worker failed or was closed under it
                self._entries.pop(key, None)
                if entry.worker.error:
                    self.failures[key] = entry.worker.error
                return None
            self._hold(entry)
            return Lease(self, entry, keep_alive)

    def _load(self, key: str, prepare, keep_alive: float | None) -> Lease | None:
        """Load `key` when it fits (unloading idle models for it); None when models in use hold
        what it needs."""
        idle = self._idle_lru()
        available = self.available()
        freeable = {d: available.get(d, 0) + sum(e.need.get(d, 0) for e in idle) for d in available}
        prepared = prepare(freeable)
        while not self._fits(prepared, self.available()) and idle:
            self._unload(idle.pop(0))
        available = self.available()
        if not self._fits(prepared, available):
            with self._cond:
                others = [e for e in self._entries.values() if e.refs]
            if others:
                return None
            prepared = prepare(available)  # nothing to wait for: plan with what there is
        before = self._free_memory()
        try:
            value, worker = prepared.open()
        except BaseException as err:
            self.failures[key] = str(err)
            raise
        after = self._free_memory()
        seen = {d: max(0, min(prepared.need.get(d, 0), before.get(d, 0) - after.get(d, 0))) for d in prepared.need}
        entry = _Entry(key, value, worker, dict(prepared.need), seen)
        self.failures.pop(key, None)
        with self._cond:
            self._entries[key] = entry
            self._hold(entry)
            self._cond.notify_all()
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="scheduler-expiry", daemon=True)
                self._reaper.start()
        return Lease(self, entry, keep_alive)

    def _fits(self, prepared: Prepared, available: dict[str, int]) -> bool:
        return all(n + prepared.margin.get(d, 0) <= available.get(d, 0) for d, n in prepared.need.items() if n)

    def available(self) -> dict[str, int]:
        """Bytes per device a new model may take now: free memory read fresh, less what loaded
        models' plans hold that the reading does not show, within the budget."""
        free = self._free_memory()
        with self._cond:
            entries = list(self._entries.values())
        out = {}
        for d, n in free.items():
            hidden = sum(max(0, e.need.get(d, 0) - e.seen.get(d, 0)) for e in entries)
            n = n - hidden
            if d in self.budget:
                n = min(n, self.budget[d] - sum(e.need.get(d, 0) for e in entries))
            out[d] = max(0, n)
        return out

    def _idle_lru(self) -> list[_Entry]:
        with self._cond:
            return sorted((e for e in self._entries.values() if e.refs == 0), key=lambda e: e.last_used)

    # --- holds
    def _hold(self, entry: _Entry) -> None:
        with self._cond:
            entry.refs += 1
            entry.last_used = time.monotonic()
            entry.expires_at = None

    def _release(self, entry: _Entry, keep_alive: float | None) -> None:
        close = False
        with self._cond:
            entry.refs -= 1
            entry.last_used = time.monotonic()
            if entry.refs == 0:
                keep = self.keep_alive_s if keep_alive is None else keep_alive
                if entry.unload_when_idle or keep == 0:
                    close = self._entries.get(entry.key) is entry
                    if close:
                        self._entries.pop(entry.key)
                else:
                    entry.expires_at = None if keep < 0 else time.monotonic() + keep
            self._cond.notify_all()
        if close:
            threading.Thread(target=entry.worker.close, name="unload", daemon=True).start()

    # --- unloading
    def _unload(self, entry: _Entry) -> None:
        with self._cond:
            if self._entries.get(entry.key) is not entry or entry.refs:
                return
            self._entries.pop(entry.key)
            self._cond.notify_all()
        log.info("unloading %s", entry.key)
        entry.worker.close()

    def unload(self, key: str) -> bool:
        """Unload `key` now if idle, else as soon as its last reply ends. False when not loaded."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.refs:
                entry.unload_when_idle = True
                return True
        self._unload(entry)
        return True

    def _reap(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [e for e in self._entries.values() if e.refs == 0 and e.expires_at is not None
                       and e.expires_at <= now]
                nxt = min((e.expires_at for e in self._entries.values() if e.expires_at is not None), default=None)
                if not due:
                    self._cond.wait(1.0 if nxt is None else min(1.0, max(0.01, nxt - now)))
                    continue
            for entry in due:
                self._unload(entry)

    # --- reports
    def get(self, key: str) -> Any | None:
        """The value of a loaded model, without holding it."""
        with self._cond:
            entry = self._entries.get(key)
            return entry.value if entry is not None and entry.usable else None

    def loaded(self) -> list[dict]:
        """Each loaded model: key, value, state, holds, queued requests, memory, seconds to expiry."""
        now = time.monotonic()
        with self._cond:
            entries = list(self._entries.values())
            loading = self._loading
        out = [{"key": e.key, "value": e.value, **e.worker.status(), "holds": e.refs, "memory": dict(e.need),
                "expires_in_s": None if e.expires_at is None else round(max(0.0, e.expires_at - now), 1)}
               for e in entries]
        if loading is not None and all(e.key != loading for e in entries):
            out.append({"key": loading, "value": None, "state": "loading", "queued": 0, "running": False,
                        "error": None, "holds": 0, "memory": {}, "expires_in_s": None})
        return out

    def close(self) -> None:
        """Unload everything: running replies end as cancelled, waiting ones get EngineClosed."""
        with self._cond:
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
            self._cond.notify_all()
        for entry in entries:
            entry.worker.close()
