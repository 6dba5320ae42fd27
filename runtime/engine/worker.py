"""A worker owns one loaded model: its thread, its bounded queue, its saved caches.

llama.cpp contexts are not thread-safe, so everything that touches the model (load, tokenize,
decode, free) happens on the worker's thread; callers submit messages and get a ReplyStream.
The queue is first come, first served and bounded: past `max_queue` waiting requests a new one
fails at once with QueueFull (the server answers 429 with Retry-After). A waiting request that
is cancelled leaves the queue at once; a running one is interrupted inside llama.cpp (the abort
switch), during the prompt as during the reply. Any failure, in load or in a request, ends in a
load error or a Failed event: never a hang.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.runtime.engine.context import POLICIES, ContextPolicy
from tandem.runtime.engine.generate import Request, generate
from tandem.runtime.engine.kvstate import KVStateStore, binding_for
from tandem.runtime.engine.model import LoadedModel
from tandem.runtime.engine.params import LoadParams, SamplingParams
from tandem.runtime.engine.stream import Embedded, Failed, Finished, Progress, Queued, ReplyStats, ReplyStream
from tandem.runtime.errors import ContextOverflow, EngineClosed, Interrupted, ModelLoadError, QueueFull, RuntimeFailure
from tandem.runtime.gguf import check_model_file

log = logging.getLogger("tandem")

SPECULATIVE = ("off", "lookup", "draft", "auto")
DEFAULT_STATE_CAP = 2 * 1024**3
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_REPLY = 8192  # tokens a reply may have when the context shifts (it never fills up)


class ModelWorker:
    """A model loaded with explicit LoadParams, served by one thread. Use open(); close() frees it."""

    def __init__(self, params: LoadParams, saved_states: Path | None = None,
                 saved_cap_bytes: int = DEFAULT_STATE_CAP, idle_save_s: float = 10.0,
                 draft: LoadParams | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_reply: int = DEFAULT_MAX_REPLY):
        self.params = params
        self.draft_params = draft
        self.max_queue = max_queue
        self.max_reply = max_reply
        self._states = KVStateStore(saved_states, binding_for(params), saved_cap_bytes) if saved_states else None
        self._idle_save_s = idle_save_s
        self._owner: str | None = None  # the conversation whose cache the decoder holds
        self._dirty = False  # the owner's cache changed since it was last saved
        self._forgotten: set[str] = set()
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._running: Request | None = None
        self._closed = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._model: LoadedModel | None = None
        self._recent_s: collections.deque[float] = collections.deque(maxlen=8)  # last replies' durations
        self.state = "loading"  # loading, idle, busy, failed, closed
        self.error: str | None = None
        self.load_s: float | None = None
        self.metadata: dict[str, str] = {}
        self.n_ctx: int | None = None
        self.supports_tools = False  # the model's chat template lays out tool definitions
        self._thread = threading.Thread(target=self._work, name=f"engine:{params.path.name}", daemon=True)

    @classmethod
    def open(cls, params: LoadParams, saved_states: Path | None = None, saved_cap_bytes: int = DEFAULT_STATE_CAP,
             idle_save_s: float = 10.0, draft: LoadParams | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
             max_reply: int = DEFAULT_MAX_REPLY) -> "ModelWorker":
        """Load the model. saved_states: a directory where conversations' caches are kept (at most
        saved_cap_bytes) when another conversation takes the model, when idle for idle_save_s, and
        at close; None: no saved states. draft: a smaller model with the same vocabulary to draft
        tokens for speculative decoding (loaded on the same worker thread). max_queue: requests
        that may wait while one runs. max_reply: the most tokens of a reply under a shifting policy."""
        check_model_file(params.path)
        if draft is not None:
            check_model_file(draft.path)
        worker = cls(params, saved_states, saved_cap_bytes, idle_save_s, draft, max_queue, max_reply)
        worker._thread.start()
        while not worker._ready.wait(0.5):
            if not worker._thread.is_alive():  # died without a word: never wait forever
                break
        if worker._load_error is not None or worker._model is None:
            worker._thread.join(5)
            err = worker._load_error
            if isinstance(err, RuntimeFailure):
                raise err
            raise ModelLoadError(f"{params.path.name} could not be loaded: {err or 'the engine thread ended'}") from err
        return worker

    # --- caller side
    def submit(
        self,
        messages: list[dict],
        sampling: SamplingParams | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        overflow: str | ContextPolicy = "stop",
        key: str | None = None,
        evicted: tuple[int, ...] | list[int] = (),
        speculative: str = "off",
        raw: bool = False,
        tools: list[dict] | None = None,
    ) -> ReplyStream:
        """Queue a reply.

        overflow: what to do when the conversation outgrows the context (a ContextPolicy or its
            name: "stop", "drop_turns", "sink_window"); what was left out is in Started.dropped.
        key: the conversation; its cache is saved when another one takes the model and restored
            when it comes back. evicted: indices of messages left out before, which stay out.
        speculative: "off"; "lookup" (drafts from n-grams of the prompt and reply), "draft" (the
            draft model loaded with the worker), "auto" (the draft model if any, else lookup);
            drafting runs only while it measures faster than plain decoding.
        raw: messages is one message whose content is the whole prompt (a completion: no chat
            template). tools: tool definitions handed to the model's chat template.
        A request queued behind others gets Queued events with its position.
        """
        if speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}, got {speculative!r}")
        if isinstance(overflow, str):
            if overflow not in POLICIES:
                raise ValueError(f"overflow must be one of {', '.join(POLICIES)}, got {overflow!r}")
            overflow = ContextPolicy(overflow)
        stream = ReplyStream(loop)
        sampling = sampling or SamplingParams()
        try:
            messages, evicted, unseen = self._bound(list(messages), overflow, tuple(evicted), sampling)
        except RuntimeFailure as err:
            stream.emit(Failed(err))
            return stream
        req = Request(messages, sampling, stream, overflow, key, evicted, speculative, self.max_reply, unseen,
                      raw=raw, tools=tuple(tools) if tools else None)
        return self._enqueue(req)

    def embed(self, texts: list[str], loop: asyncio.AbstractEventLoop | None = None,
              truncate: bool = False) -> ReplyStream:
        """Queue an embedding of each text (mean-pooled over its tokens, unit length): the stream
        ends with Embedded, or Failed (ContextOverflow names a text too long for the model, unless
        truncate: then such a text keeps its start)."""
        stream = ReplyStream(loop)
        return self._enqueue(EmbedRequest(list(texts), stream, truncate))

    def _enqueue(self, req) -> ReplyStream:
        stream = req.stream
        with self._cond:
            if self._closed:
                stream.emit(Failed(EngineClosed("The model was unloaded; send the message again.")))
                return stream
            if len(self._waiting) >= self.max_queue:
                stream.emit(Failed(QueueFull(len(self._waiting), self._retry_after())))
                return stream
            self._waiting.append(req)
            ahead = len(self._waiting) - 1 + (self._running is not None)
            self._cond.notify()
        if ahead:
            stream.emit(Queued(ahead))
        stream.on_cancel(lambda: self._cancelled(req))
        return stream

    def _bound(self, messages: list[dict], policy: ContextPolicy, evicted: tuple[int, ...],
               sampling: SamplingParams) -> tuple[list[dict], tuple[int, ...], frozenset[int]]:
        """Keep the work of a request bounded before anything is rendered or tokenized: a prompt
        of B bytes is at least B / (the longest token's bytes) tokens. Under `stop` a conversation
        that cannot fit is refused at once; under a shifting policy the oldest turns that could
        never fit are left out before rendering (and a message longer than the whole context keeps
        its end). Returns (messages, evicted, the indices left out unrendered)."""
        model = self._model
        if model is None or not messages:
            return messages, evicted, frozenset()
        n_ctx = model.n_ctx
        sizes = [len(m["content"].encode("utf-8", "surrogatepass")) if isinstance(m, dict) and
                 isinstance(m.get("content"), str) else 0 for m in messages]
        if sum(sizes) < n_ctx and len(messages) <= n_ctx:
            return messages, evicted, frozenset()  # fewer bytes than the context has tokens: nothing to bound
        longest = model.max_piece_bytes
        if policy.policy == "stop":
            at_least = -(-sum(sizes) // longest)
            if at_least >= n_ctx:
                raise ContextOverflow(at_least, n_ctx, at_least=True)
            return messages, evicted, frozenset()
        cap = n_ctx * longest  # no more bytes than this can be in the context
        keep_from, total, count = len(messages), 0, 0
        while keep_from > 0 and total + sizes[keep_from - 1] <= cap and count < n_ctx:
            keep_from -= 1  # every message takes at least one token
            total += sizes[keep_from]
            count += 1
        while 0 < keep_from < len(messages) - 1 and messages[keep_from].get("role") != "user":
            keep_from += 1  # whole turns: what is kept starts with a user message
        out = [i for i in range(keep_from) if messages[i].get("role") != "system"]
        if keep_from == len(messages):  # the latest message alone is longer than the context
            last = dict(messages[-1])
            last["content"] = last["content"][-cap:]
            messages = messages[:-1] + [last]
        return messages, tuple(sorted(set(evicted) | set(out))), frozenset(out)

    def _retry_after(self) -> int:
        per = sorted(self._recent_s)[len(self._recent_s) // 2] if self._recent_s else 5.0
        return max(1, math.ceil(per * (len(self._waiting) + 1)))

    def _cancelled(self, req: Request) -> None:
        """A request was cancelled: out of the queue at once, or llama.cpp interrupted if it runs."""
        with self._cond:
            if self._running is req:
                self._model.decoder.abort.set()
                return
            try:
                self._waiting.remove(req)
            except ValueError:
                return  # taken or finished meanwhile
            positions = self._positions()
        req.stream.emit(Finished("", "cancelled", _empty_stats(req)))
        self._announce(positions)

    def _positions(self) -> list[tuple[Request, int]]:
        base = 1 if self._running is not None else 0
        return [(r, base + i) for i, r in enumerate(self._waiting)]

    @staticmethod
    def _announce(positions: list[tuple[Request, int]]) -> None:
        for r, pos in positions:
            r.stream.emit(Queued(pos))

    def forget(self, key: str) -> None:
        """A conversation was deleted: never save its cache again, and delete the saved one."""
        self._forgotten.add(key)
        if self._states is not None:
            self._states.discard(key)

    def complete(self, messages: list[dict], sampling: SamplingParams | None = None) -> Finished:
        return self.submit(messages, sampling).result()

    def status(self) -> dict:
        """The engine's state for health reports: loading, idle, busy (with the queue), failed, closed."""
        return {"state": self.state, "queued": len(self._waiting), "running": self._running is not None,
                "error": self.error}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: the running request ends as cancelled, waiting ones get EngineClosed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = self._running
            if running is not None and self._model is not None:
                self._model.decoder.abort.set()
            self._cond.notify_all()
        if running is not None:
            running.stream.cancel()
        for req in waiting:
            req.stream.emit(Failed(EngineClosed("The model was unloaded before this request ran; send it again.")))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- worker side
    def _work(self) -> None:
        try:
            self._model = LoadedModel.load(self.params, self.draft_params)
        except BaseException as err:  # whatever it is, open() must hear of it
            self._load_error = err
            self.state, self.error = "failed", str(err)
            self._ready.set()
            return
        self.load_s, self.metadata, self.n_ctx = self._model.load_s, self._model.metadata, self._model.n_ctx
        self.supports_tools = self._model.formatter.supports_tools
        self.state = "idle"
        self._ready.set()
        try:
            self._serve_queue()
        except BaseException as err:
            log.exception("the engine worker for %s stopped", self.params.path.name)
            self.state, self.error = "failed", f"The engine stopped: {err}"
        finally:
            with self._cond:
                self._closed = True
                waiting, self._waiting = list(self._waiting), collections.deque()
            for req in waiting:
                req.stream.emit(Failed(EngineClosed("The model was unloaded before this request ran.")))
            try:
                self._save_owner()
            finally:
                self._model.close()
                if self.state != "failed":
                    self.state = "closed"

    def _serve_queue(self) -> None:
        model = self._model
        while True:
            with self._cond:
                idle = not self._waiting and not self._closed and not self._cond.wait(self._idle_save_s)
                if self._closed:
                    return
                if not self._waiting:
                    req = None
                else:
                    req = self._running = self._waiting.popleft()
                    model.decoder.abort.clear()
                    self.state = "busy"
                    positions = self._positions()
            if req is None:
                if idle and not self._waiting:
                    self._save_owner()  # idle: keep the current conversation's cache (outside the lock)
                continue
            self._announce(positions)
            t0 = time.perf_counter()
            req.stream.on_end(lambda req=req, t0=t0: self._ended(req, t0))
            try:
                if isinstance(req, EmbedRequest):
                    self._embed(req)
                else:
                    generate(model, req, self._take)
            finally:
                req.stream.emit(Failed(RuntimeFailure("The reply ended without a result.")))  # no-op when ended

    def _ended(self, req: Request, t0: float) -> None:
        """The running reply emits its terminal event: the worker is free before the caller hears."""
        with self._cond:
            if self._running is req:
                self._running = None
                self._model.decoder.abort.clear()
                self.state = "busy" if self._waiting else "idle"
        self._recent_s.append(time.perf_counter() - t0)

    def _embed(self, req: "EmbedRequest") -> None:
        if req.stream.cancelled:
            req.stream.emit(Finished("", "cancelled", _empty_stats(req)))
            return
        done = [0]

        def between() -> bool:  # before each text: how many are done (a pooled model's host shows it lives)
            if done[0]:
                req.stream.emit(Progress(done[0], len(req.texts)))
            done[0] += 1
            return req.stream.cancelled

        try:
            vectors, n_tokens = self._model.embed(req.texts, between, req.truncate)
        except Interrupted:
            req.stream.emit(Finished("", "cancelled", _empty_stats(req)))
        except RuntimeFailure as err:
            req.stream.emit(Failed(err))
        except Exception as err:  # llama.cpp or numpy failure
            log.exception("embedding failed")
            req.stream.emit(Failed(RuntimeFailure(f"Embedding failed: {err}")))
        else:
            req.stream.emit(Embedded(vectors, n_tokens))

    # --- saved caches
    def _save_owner(self) -> None:
        """Write the current conversation's cache to its state file, if it changed since."""
        key, decoder = self._owner, self._model.decoder
        if self._states is None or key is None or not self._dirty or key in self._forgotten:
            return
        try:
            if decoder.cached:
                epoch = self._states.epoch(key)  # before the state is read: a delete meanwhile wins
                if key not in self._forgotten:  # deleted between the first look and the epoch
                    self._states.save(key, decoder.cached, decoder.state(), epoch=epoch)
            self._dirty = False
        except OSError as err:  # a full disk must not cost the reply
            log.warning("could not save the context of conversation %s: %s", key, err)

    def _take(self, key: str | None) -> int:
        """Make the cache the one of conversation `key`; returns how many tokens came from its
        saved state (0 when it was already there, has none, or it is not usable)."""
        restored = self._restore(key)
        self._dirty = True
        return restored

    def _restore(self, key: str | None) -> int:
        if key == self._owner:
            return 0
        self._save_owner()
        self._owner, self._dirty = key, False
        if key is None or self._states is None:
            return 0
        saved = self._states.load(key)
        if saved is None or len(saved.tokens) >= self._model.n_ctx:
            return 0
        if not self._model.decoder.restore(saved.tokens, saved.data):
            log.warning("llama.cpp refused the saved context of conversation %s; evaluating it again", key)
            self._states.discard(key)
            return 0
        return len(saved.tokens)


@dataclass
class EmbedRequest:
    texts: list[str]
    stream: ReplyStream
    truncate: bool = False
    submitted: float = field(default_factory=time.perf_counter)


def _empty_stats(req) -> ReplyStats:
    waited = time.perf_counter() - req.submitted
    return ReplyStats(prompt_tokens=0, completion_tokens=0, cached_tokens=0, queue_s=waited, ttft_s=None,
                      decode_tps=None, total_s=waited)
