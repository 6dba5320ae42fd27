"""A model pooled over ggml-rpc workers, as the scheduler and the routes see a loaded one: the
model lives in a pool host process (runtime.pool.host); this side streams its events back.

When the host ends (a worker went away: ggml-rpc ends the process that used it), every running
reply fails with what happened, the worker counts as closed, and the next request loads the model
again, planned without the worker when it no longer answers.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from tandem.runtime.engine import Failed, ReplyStream, SamplingParams
from tandem.runtime.engine.context import POLICIES, ContextPolicy
from tandem.runtime.engine.worker import SPECULATIVE
from tandem.runtime.engine.params import LoadParams
from tandem.runtime.errors import EngineClosed, ModelLoadError, PoolFailure
from tandem.runtime.pool import network
from tandem.runtime.pool.wire import decode_error, decode_event

log = logging.getLogger("tandem.pool")


class PooledWorker:
    def __init__(self, params: LoadParams, proc: subprocess.Popen):
        self.params = params
        self._proc = proc
        self._lock = threading.Lock()
        self._streams: dict[int, ReplyStream] = {}
        self._ids = itertools.count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._stderr_done = threading.Event()
        self._hello: dict = {}
        self._last_event = time.monotonic()
        self._stall = ""
        self.closed = False
        self.state = "loading"
        self.error: str | None = None
        self.load_s: float | None = None
        self.metadata: dict[str, str] = {}
        self.n_ctx: int | None = None
        self.supports_tools = False

    @classmethod
    def open(cls, params: LoadParams, max_queue: int = 16, max_reply: int = 8192,
             load_timeout_s: float = 600.0, stall_s: float = 120.0, saved_states: Path | None = None,
             saved_cap_bytes: int | None = None) -> "PooledWorker":
        """Start a pool host and load the model there; ModelLoadError when it cannot (the workers'
        own words included). stall_s: a reply that sends nothing for this long (a worker gone
        without a reset, e.g. a pulled cable) ends the host, and with it the reply. saved_states,
        saved_cap_bytes: where the host keeps conversations' caches, as ModelWorker.open."""
        t0 = time.perf_counter()
        # ggml's abort would attach a debugger for a backtrace: its last words are enough
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
        frozen = getattr(sys, "frozen", False)  # the packaged app: its executable is the tandem command
        command = [sys.executable, "_pool-host"] if frozen else [sys.executable, "-m", "tandem.runtime.pool.host"]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                errors="replace", bufsize=1, env=env)
        self = cls(params, proc)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        spec = {"params": {**asdict(params), "path": str(params.path)}, "max_queue": max_queue,
                "max_reply": max_reply, "saved_states": str(saved_states) if saved_states else None,
                "saved_cap_bytes": saved_cap_bytes}
        try:
            self._send(spec)
        except (OSError, ValueError):
            pass  # the host ended at once: its last words are read below
        if not self._ready.wait(load_timeout_s) or self._hello.get("op") != "ready":
            err = self._hello.get("error")
            self.close()
            if err:
                failure = decode_error(err)
                raise ModelLoadError(f"Pooled over {', '.join(params.rpc)}: {failure}") from failure
            raise ModelLoadError(f"Loading {params.path.name} over the workers {', '.join(params.rpc)} failed: "
                                 f"{self._last_words() or 'the pool host ended'}. Is each `tandem worker` running "
                                 "with this machine's address allowed?")
        self.n_ctx = self._hello.get("n_ctx")
        self.metadata = self._hello.get("metadata") or {}
        self.supports_tools = bool(self._hello.get("supports_tools"))
        self.load_s = time.perf_counter() - t0
        self.state = "idle"
        threading.Thread(target=self._watch, args=(stall_s,), daemon=True).start()
        return self

    # --- what the scheduler asks of a worker
    def status(self) -> dict:
        with self._lock:
            running = len(self._streams)
        return {"state": self.state if self.state in ("failed", "closed", "loading") else ("busy" if running else "idle"),
                "queued": max(0, running - 1), "running": running > 0, "error": self.error}

    def close(self, timeout: float = 10.0) -> None:
        if self.closed and self._proc.poll() is not None:
            return
        self.closed = True
        if self.state != "failed":
            self.state = "closed"
        try:
            self._proc.stdin.close()  # the host unloads and ends
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)

    def forget(self, key: str) -> None:
        self._send({"op": "forget", "key": key}, quiet=True)

    def submit(self, messages: list[dict], sampling: SamplingParams | None = None, loop=None,
               overflow: str | ContextPolicy = "stop", key: str | None = None, evicted=(),
               speculative: str = "off", raw: bool = False, tools: list[dict] | None = None) -> ReplyStream:
        if speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}, got {speculative!r}")
        if isinstance(overflow, str) and overflow not in POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(POLICIES)}, got {overflow!r}")
        policy = ContextPolicy(overflow) if isinstance(overflow, str) else overflow
        return self._request(loop, {"op": "submit", "messages": list(messages),
                                    "sampling": asdict(sampling or SamplingParams()), "policy": asdict(policy),
                                    "key": key, "evicted": list(evicted), "speculative": speculative, "raw": raw,
                                    "tools": list(tools) if tools else None})

    def embed(self, texts: list[str], loop=None, truncate: bool = False) -> ReplyStream:
        """Embeddings from the pooled model (the pool host's ModelWorker.embed)."""
        return self._request(loop, {"op": "embed", "texts": [str(t) for t in texts], "truncate": bool(truncate)})

    def _request(self, loop, msg: dict) -> ReplyStream:
        stream = ReplyStream(loop)
        rid = next(self._ids)
        with self._lock:  # registered before the host can end, or refused: never left without an end
            if self.closed:
                stream.emit(Failed(EngineClosed(self.error or "This pooled model was unloaded.")))
                return stream
            self._streams[rid] = stream
            self._last_event = max(self._last_event, time.monotonic())
        stream.on_end(lambda: self._drop(rid))
        stream.on_cancel(lambda: self._send({"op": "cancel", "id": rid}, quiet=True))
        self._send({**msg, "id": rid}, quiet=True)
        return stream

    def complete(self, messages: list[dict], sampling: SamplingParams | None = None):
        return self.submit(messages, sampling).result()

    # --- the host's side
    def _send(self, obj: dict, quiet: bool = False) -> None:
        try:
            with self._lock:
                self._proc.stdin.write(json.dumps(obj) + "\n")
                self._proc.stdin.flush()
        except (OSError, ValueError):
            if not quiet:
                raise

    def _drop(self, rid: int) -> None:
        with self._lock:
            self._streams.pop(rid, None)

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            line = line.rstrip()
            if line:
                self._stderr.append(line)
                log.debug("pool host: %s", line)
        self._stderr_done.set()

    def _last_words(self) -> str:
        """What llama.cpp said last before the host ended (its abort message), if anything."""
        for line in reversed(self._stderr):
            if any(w in line.lower() for w in ("error", "failed", "crashed", "abort")):
                return re.sub(r"^\S*ggml-rpc\.cpp:\d+: ", "", line.strip())[:300]  # not the build's path
        return ""

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") in ("ready", "error"):
                self._hello = msg
                self._ready.set()
            elif msg.get("op") == "event":
                self._last_event = time.monotonic()
                with self._lock:
                    stream = self._streams.get(msg.get("id"))
                if stream is not None:
                    try:
                        event = decode_event(msg["event"])
                    except (KeyError, TypeError, ValueError) as err:
                        event = Failed(PoolFailure(f"The pooled model sent an event this version cannot read ({err})."))
                    stream.emit(event)
        self._proc.wait()
        self._stderr_done.wait(5)  # its last words (llama.cpp's abort message) are read first
        self._ready.set()
        self._ended()

    def _ended(self) -> None:
        """The host is gone: fail what was running, and never lease this worker again."""
        with self._lock:
            was_closing, was_loading = self.closed, self.state == "loading"
            self.closed = True
            pending = list(self._streams.values())
            self._streams.clear()
        for ep in self.params.rpc:  # the next plan probes the workers again
            network.forget(ep)
        if was_closing or was_loading:  # unloaded, or a failed load (open() reports it)
            failure = EngineClosed("The model was unloaded before this reply ended.")
        else:
            self.state = "failed"
            words = self._stall or self._last_words()
            self.error = (f"A worker of this pooled model ({', '.join(self.params.rpc)}) stopped answering"
                          f"{' (' + words + ')' if words else ''}. The model is loaded again on your next message, "
                          "without the workers that no longer answer.")
            log.warning("%s", self.error)
            failure = PoolFailure(self.error)
        for stream in pending:
            stream.emit(Failed(failure))

    def _watch(self, stall_s: float) -> None:
        """A running reply that hears nothing for stall_s: the host is stuck on a worker that went
        away without a word (no reset): end it, and with it the reply."""
        while self._proc.poll() is None:
            time.sleep(min(5.0, stall_s / 4))
            with self._lock:
                running = bool(self._streams)
            if running and time.monotonic() - self._last_event > stall_s and self._proc.poll() is None:
                self._stall = f"nothing for {stall_s:.0f} s"
                self._proc.kill()
                return
