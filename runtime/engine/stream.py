"""Events a generation produces, and the per-request stream that carries them to the caller.

The worker thread emits; the caller iterates (blocking, or async on an event loop). Every
request ends with exactly one terminal event: Finished or Failed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Union

from tandem.runtime.errors import RuntimeFailure


@dataclass(frozen=True)
class ReplyStats:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache of the previous request
    queue_s: float  # waiting for the worker (another request was running)
    ttft_s: float | None  # submission to first token, None when no token came
    decode_tps: float | None  # tokens/s after the first token, None with fewer than 2 tokens
    total_s: float
    evicted_tokens: int = 0  # tokens of the conversation the model did not see (left out to fit)
    shifted_tokens: int = 0  # cached tokens removed by shifting the rest into place (no re-evaluation)
    restored_tokens: int = 0  # tokens whose cache came back from a saved state instead of evaluation
    spec_source: str = "none"  # speculative decoding: none, prompt_lookup or draft:<model>
    drafted_tokens: int = 0  # tokens proposed by the draft source and verified
    accepted_tokens: int = 0  # of those, the ones the model agreed with
    # joules the CPU package (RAPL) and the GPUs (NVML) used during the reply, whole devices; None
    # where this machine does not let them be read (runtime.hardware.energy)
    energy_cpu_j: float | None = None
    energy_gpu_j: float | None = None

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def energy_j(self) -> float | None:
        parts = [j for j in (self.energy_cpu_j, self.energy_gpu_j) if j is not None]
        return sum(parts) if parts else None

    @property
    def joules_per_token(self) -> float | None:
        """The reply's energy (its prompt's reading included) per token it wrote."""
        e = self.energy_j
        return e / self.completion_tokens if e is not None and self.completion_tokens else None

    def as_dict(self) -> dict:
        return {
            "evicted_tokens": self.evicted_tokens,
            "shifted_tokens": self.shifted_tokens,
            "restored_tokens": self.restored_tokens,
            "spec_source": self.spec_source,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance": None if self.acceptance is None else round(self.acceptance, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "queue_s": round(self.queue_s, 4),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 4),
            "decode_tps": None if self.decode_tps is None else round(self.decode_tps, 2),
            "total_s": round(self.total_s, 4),
            "energy_cpu_j": None if self.energy_cpu_j is None else round(self.energy_cpu_j, 3),
            "energy_gpu_j": None if self.energy_gpu_j is None else round(self.energy_gpu_j, 3),
            "joules_per_token": None if self.joules_per_token is None else round(self.joules_per_token, 4),
        }


@dataclass(frozen=True)
class Started:
    """The prompt fits and generation begins. dropped: indices of the submitted messages left out
    to fit the context; evicted_tokens: how many tokens of the conversation that left out."""

    prompt_tokens: int
    dropped: tuple[int, ...] = ()
    evicted_tokens: int = 0
    policy: str = "stop"


@dataclass(frozen=True)
class Progress:
    """Reading a long prompt: `done` of its `total` tokens are in the cache (reused ones included)."""

    done: int
    total: int


@dataclass(frozen=True)
class Queued:
    """The request waits for the model: `position` requests run or wait ahead of it (1: next).
    Sent when it is queued behind another and again each time it moves up."""

    position: int


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Finished:
    """finish_reason: "stop" (end of turn or stop string), "length" (max_tokens or the context
    is full) or "cancelled" (the caller stopped it; text holds what was produced).
    dropped: messages left out while the reply was written (the context filled up and shifted)."""

    text: str
    finish_reason: str
    stats: ReplyStats
    dropped: tuple[int, ...] = ()
    tokens: tuple[int, ...] = ()  # the reply's token ids
    logprobs: tuple["TokenLogprob", ...] | None = None  # when the sampling asked for them


@dataclass(frozen=True)
class TokenLogprob:
    """One reply token's log-probability under the model, and the most likely alternatives."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True)
class Failed:
    error: RuntimeFailure


@dataclass(frozen=True)
class Embedded:
    """The end of an embedding request: one unit-length vector per input, and the tokens read."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


TERMINAL = (Finished, Failed, Embedded)
Event = Union[Queued, Started, Token, Finished, Failed, Embedded]


class ReplyStream:
    """One request's events. Iterate it (sync or async); cancel() stops generation within a token."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop
        self._cancel = threading.Event()
        self._hooks_lock = threading.Lock()
        self._on_cancel: list[Callable[[], None]] = []
        self._on_end: list[Callable[[], None]] = []
        self._ended = False
        self._sync_q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._async_q: asyncio.Queue[Event] | None = asyncio.Queue() if loop else None
        self.done = False

    # --- worker side
    def emit(self, event: Event) -> None:
        terminal = isinstance(event, TERMINAL)
        if terminal:
            with self._hooks_lock:
                if self._ended:  # exactly one terminal event per request
                    return
                self._ended = True
                hooks, self._on_end, self._on_cancel = self._on_end, [], []
            for hook in hooks:  # before the caller sees the end: what it does next finds them done
                hook()
        if self._async_q is None:
            self._sync_q.put(event)
        else:
            try:
                self._loop.call_soon_threadsafe(self._async_q.put_nowait, event)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                self.cancel()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call `hook` (on the cancelling thread) when the request is cancelled before it ends:
        a queued request leaves its queue, a running one interrupts llama.cpp."""
        with self._hooks_lock:
            if self._ended:
                return
            if not self._cancel.is_set():
                self._on_cancel.append(hook)
                return
        hook()  # cancelled already

    def on_end(self, hook: Callable[[], None]) -> None:
        """Call `hook` when the terminal event is emitted, before the caller can read it (at once
        if it was emitted already)."""
        with self._hooks_lock:
            if not self._ended:
                self._on_end.append(hook)
                return
        hook()

    @property
    def ended(self) -> bool:
        """The terminal event was emitted (the caller may not have read it yet)."""
        return self._ended

    # --- caller side
    def cancel(self) -> None:
        with self._hooks_lock:
            if self._cancel.is_set():
                return
            self._cancel.set()
            hooks = list(self._on_cancel)
        for hook in hooks:
            hook()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[Event]:
        if self._async_q is not None:
            raise TypeError("this stream was opened for an event loop: use 'async for'")
        while not self.done:
            event = self._sync_q.get()
            self.done = isinstance(event, TERMINAL)
            yield event

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._async_q is None:
            raise TypeError("this stream was opened without an event loop: use 'for'")
        while not self.done:
            event = await self._async_q.get()
            self.done = isinstance(event, TERMINAL)
            yield event

    async def next_event(self) -> Event:
        """The next event (async streams only), for callers that must see the first ones early."""
        event = await self._async_q.get()
        self.done = isinstance(event, TERMINAL)
        return event

    def result(self) -> Finished:
        """Block until the end; return Finished or raise the failure (sync streams only)."""
        for event in self:
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise event.error
        raise AssertionError("stream ended without a terminal event")
