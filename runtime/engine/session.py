"""One loaded model, owned by one worker thread fed by a queue of requests.

llama.cpp contexts are not thread-safe, so everything that touches the model (load, tokenize,
decode, free) happens on the worker thread. Callers submit messages and get a ReplyStream.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from dataclasses import dataclass, field

from runtime.engine.chat_format import ChatFormatter
from runtime.engine.context import fit_turns
from runtime.engine.native import NativeDecoder
from runtime.engine.params import KV_TYPES, LoadParams, SamplingParams
from runtime.engine.stream import Failed, Finished, ReplyStats, ReplyStream, Started, Token
from runtime.engine.text import StopMatcher, Utf8Stream
from runtime.errors import ContextOverflow, EngineClosed, ModelLoadError, RuntimeFailure
from runtime.gguf import check_model_file


@dataclass
class _Job:
    messages: list[dict]
    sampling: SamplingParams
    stream: ReplyStream
    overflow: str = "refuse"
    submitted: float = field(default_factory=time.perf_counter)


_STOP = object()
OVERFLOW_POLICIES = ("refuse", "drop_turns")


class EngineSession:
    """A model loaded with explicit LoadParams. Use open(); close() frees it."""

    def __init__(self, params: LoadParams):
        self.params = params
        self._jobs: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._load_error: RuntimeFailure | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.load_s: float | None = None
        self.metadata: dict[str, str] = {}
        self._thread = threading.Thread(
            target=self._worker, name=f"engine:{params.path.name}", daemon=True
        )

    @classmethod
    def open(cls, params: LoadParams) -> "EngineSession":
        check_model_file(params.path)
        session = cls(params)
        session._thread.start()
        session._ready.wait()
        if session._load_error is not None:
            session._thread.join()
            raise session._load_error
        return session

    # --- caller side
    def submit(
        self,
        messages: list[dict],
        sampling: SamplingParams | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        overflow: str = "refuse",
    ) -> ReplyStream:
        """Queue a reply. overflow: "refuse" a conversation longer than the context (ContextOverflow),
        or "drop_turns": leave out its oldest whole turns, reported in Started.dropped."""
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        stream = ReplyStream(loop)
        with self._lock:
            if self._closed:
                stream.emit(Failed(EngineClosed("The model was unloaded; send the message again.")))
                return stream
            self._jobs.put(_Job(list(messages), sampling or SamplingParams(), stream, overflow))
        return stream

    def complete(self, messages: list[dict], sampling: SamplingParams | None = None) -> Finished:
        return self.submit(messages, sampling).result()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (the running request ends as cancelled) and free the model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(_STOP)
        self._current_cancel()
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- worker side
    _running: ReplyStream | None = None

    def _current_cancel(self) -> None:
        running = self._running
        if running is not None:
            running.cancel()

    def _worker(self) -> None:
        try:
            llama = self._load()
        except RuntimeFailure as err:
            self._load_error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    break
                self._running = job.stream
                try:
                    self._serve(llama, job)
                except RuntimeFailure as err:
                    job.stream.emit(Failed(err))
                except Exception as err:  # llama.cpp or numpy failure mid-decode
                    job.stream.emit(Failed(RuntimeFailure(f"Generation failed: {err}")))
                finally:
                    self._running = None
        finally:
            while True:  # anything still queued gets a clear answer, not silence
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    job.stream.emit(Failed(EngineClosed("The model was unloaded before this request ran.")))
            llama.close()

    def _load(self):
        import llama_cpp

        p = self.params
        t0 = time.perf_counter()
        try:
            llama = llama_cpp.Llama(
                model_path=str(p.path),
                n_ctx=p.n_ctx,
                n_threads=p.n_threads,
                n_threads_batch=p.n_threads_batch,
                n_gpu_layers=p.n_gpu_layers,
                n_batch=p.n_batch,
                n_ubatch=p.n_ubatch,
                flash_attn=p.flash_attn,
                type_k=KV_TYPES[p.type_k],
                type_v=KV_TYPES[p.type_v],
                offload_kqv=p.offload_kqv,
                swa_full=p.swa_full,
                main_gpu=p.main_gpu,
                tensor_split=list(p.tensor_split) if p.tensor_split else None,
                use_mmap=p.use_mmap,
                verbose=False,
            )
        except Exception as err:
            raise ModelLoadError(
                f"llama.cpp could not load {p.path.name} ({err}). The file may be damaged or "
                "need a newer engine; download it again, or lower the context length."
            ) from err
        self.load_s = time.perf_counter() - t0
        self.metadata = dict(llama.metadata)
        self._formatter = ChatFormatter(llama)
        self._decoder = NativeDecoder(llama)
        self._vocab = llama._model.vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        return llama

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it and ask again
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]

    def _serve(self, llama, job: _Job) -> None:
        stream, sampling = job.stream, job.sampling
        t_start = time.perf_counter()
        if stream.cancelled:
            stream.emit(Finished("", "cancelled", _stats(job, t_start, 0, 0, None, None, None)))
            return
        # llama.cpp may pad the context (64 -> 256), but llama-cpp-python's token buffer keeps
        # the size asked for: the smaller of the two is the real limit.
        n_ctx = min(llama.n_ctx(), len(llama.input_ids))
        messages, dropped = job.messages, ()
        prompt = self._formatter.render(messages)
        if job.overflow == "drop_turns":
            # keep room for a reply: up to a quarter of the context, or max_tokens if smaller
            room = min(sampling.max_tokens or n_ctx, max(16, n_ctx // 4))
            if len(prompt.tokens) > n_ctx - room:
                out, _ = fit_turns(messages, lambda m: len(self._formatter.render(m).tokens), n_ctx - room)
                dropped = tuple(out)
                messages = [m for i, m in enumerate(messages) if i not in set(out)]
                prompt = self._formatter.render(messages)
        n_prompt = len(prompt.tokens)
        if n_prompt >= n_ctx:
            raise ContextOverflow(n_prompt, n_ctx)
        stream.emit(Started(n_prompt, dropped))
        decoder = self._decoder
        cached = decoder.prefill(prompt.tokens)

        room = n_ctx - n_prompt
        limit = min(sampling.max_tokens or room, room)
        stops = StopMatcher(sampling.stop + prompt.stops)
        utf8 = Utf8Stream()
        pieces: list[str] = []
        n_out, t_first, t_last, finish = 0, None, None, "length"

        def show(text: str) -> None:
            if text:
                pieces.append(text)
                stream.emit(Token(text))

        with decoder.sampler(sampling) as sampler:
            while True:
                if stream.cancelled:
                    finish = "cancelled"
                    break
                token = sampler.sample()
                if decoder.is_end(token):
                    finish = "stop"
                    break
                n_out += 1
                t_last = time.perf_counter()
                if t_first is None:
                    t_first = t_last
                show(stops.feed(utf8.feed(self._piece(token))))
                if stops.stopped:
                    finish = "stop"
                    break
                if n_out >= limit:
                    break
                decoder.decode([token])
        show(stops.feed(utf8.flush()))
        show(stops.flush())
        stats = _stats(job, t_start, n_prompt, n_out, t_first, t_last, cached)
        stream.emit(Finished("".join(pieces), finish, stats))


def _stats(job: _Job, t_start: float, n_prompt: int, n_out: int, t_first, t_last, cached) -> ReplyStats:
    now = time.perf_counter()
    decode = None
    if t_first is not None and n_out >= 2 and t_last > t_first:
        decode = (n_out - 1) / (t_last - t_first)
    return ReplyStats(
        prompt_tokens=n_prompt,
        completion_tokens=n_out,
        cached_tokens=cached or 0,
        queue_s=t_start - job.submitted,
        ttft_s=None if t_first is None else t_first - job.submitted,
        decode_tps=decode,
        total_s=now - job.submitted,
    )
