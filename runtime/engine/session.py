"""One loaded model, owned by one worker thread fed by a queue of requests.

llama.cpp contexts are not thread-safe, so everything that touches the model (load, tokenize,
decode, free) happens on the worker thread. Callers submit messages and get a ReplyStream.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.engine.chat_format import ChatFormatter
from runtime.engine.context import POLICIES, ContextPolicy, fit_conversation
from runtime.engine.kvstate import KVStateStore, binding_for
from runtime.engine.native import NativeDecoder
from runtime.engine.speculative import Controller, DraftModel, PromptLookup, SpecStats
from runtime.engine.params import KV_TYPES, LoadParams, SamplingParams
from runtime.engine.stream import Failed, Finished, ReplyStats, ReplyStream, Started, Token
from runtime.engine.text import StopMatcher, Utf8Stream
from runtime.errors import ContextOverflow, DraftModelError, EngineClosed, ModelLoadError, RuntimeFailure
from runtime.gguf import check_model_file


log = logging.getLogger("tandem")


@dataclass
class _Job:
    messages: list[dict]
    sampling: SamplingParams
    stream: ReplyStream
    context: ContextPolicy = field(default_factory=ContextPolicy)
    key: str | None = None  # the conversation: its cache is saved and restored under this key
    evicted: tuple[int, ...] = ()  # messages left out before: they stay out
    speculative: str = "off"  # off, lookup, draft, auto
    submitted: float = field(default_factory=time.perf_counter)


_STOP = object()
SPECULATIVE = ("off", "lookup", "draft", "auto")
DEFAULT_STATE_CAP = 2 * 1024**3


class EngineSession:
    """A model loaded with explicit LoadParams. Use open(); close() frees it."""

    def __init__(self, params: LoadParams, saved_states: Path | None = None,
                 saved_cap_bytes: int = DEFAULT_STATE_CAP, idle_save_s: float = 10.0,
                 draft: LoadParams | None = None):
        self.params = params
        self.draft_params = draft
        self._states = KVStateStore(saved_states, binding_for(params), saved_cap_bytes) if saved_states else None
        self._idle_save_s = idle_save_s
        self._owner: str | None = None  # the conversation whose cache the decoder holds
        self._dirty = False  # the owner's cache changed since it was last saved
        self._forgotten: set[str] = set()
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
    def open(cls, params: LoadParams, saved_states: Path | None = None,
             saved_cap_bytes: int = DEFAULT_STATE_CAP, idle_save_s: float = 10.0,
             draft: LoadParams | None = None) -> "EngineSession":
        """Load the model. saved_states: a directory where conversations' caches are kept (at most
        saved_cap_bytes) when another conversation takes the model, when idle for idle_save_s, and
        at close; None: no saved states. draft: a smaller model with the same vocabulary to draft
        tokens for speculative decoding (loaded on the same worker thread)."""
        check_model_file(params.path)
        if draft is not None:
            check_model_file(draft.path)
        session = cls(params, saved_states, saved_cap_bytes, idle_save_s, draft)
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
        overflow: str | ContextPolicy = "stop",
        key: str | None = None,
        evicted: tuple[int, ...] | list[int] = (),
        speculative: str = "off",
    ) -> ReplyStream:
        """Queue a reply.

        overflow: what to do when the conversation outgrows the context (a ContextPolicy or its
            name: "stop", "drop_turns", "sink_window"); what was left out is in Started.dropped.
        key: the conversation; its cache is saved when another one takes the model and restored
            when it comes back. evicted: indices of messages left out before, which stay out.
        speculative: "off"; "lookup" (drafts from n-grams of the prompt and reply), "draft" (the
            draft model loaded with the session), "auto" (the draft model if any, else lookup);
            drafting runs only while it measures faster than plain decoding.
        """
        if speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}, got {speculative!r}")
        if isinstance(overflow, str):
            if overflow not in POLICIES:
                raise ValueError(f"overflow must be one of {', '.join(POLICIES)}, got {overflow!r}")
            overflow = ContextPolicy(overflow)
        stream = ReplyStream(loop)
        with self._lock:
            if self._closed:
                stream.emit(Failed(EngineClosed("The model was unloaded; send the message again.")))
                return stream
            self._jobs.put(_Job(list(messages), sampling or SamplingParams(), stream, overflow, key, tuple(evicted),
                                speculative))
        return stream

    def forget(self, key: str) -> None:
        """A conversation was deleted: never save its cache again, and delete the saved one."""
        self._forgotten.add(key)
        if self._states is not None:
            self._states.discard(key)

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
                try:
                    job = self._jobs.get(timeout=self._idle_save_s)
                except queue.Empty:
                    self._save_owner()  # idle: keep the current conversation's cache
                    continue
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
            self._save_owner()
            self._decoder.close()
            if self._draft is not None:
                self._draft.close()
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
        self._lookup = PromptLookup()
        self._controllers: dict = {}
        self._draft = None
        if self.draft_params is not None:
            self._draft = self._load_draft(llama, self.draft_params)
        self._vocab = llama._model.vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        return llama

    def _load_draft(self, llama, p: LoadParams) -> DraftModel:
        import llama_cpp

        try:
            draft = llama_cpp.Llama(
                model_path=str(p.path), n_ctx=p.n_ctx, n_threads=p.n_threads, n_threads_batch=p.n_threads_batch,
                n_gpu_layers=p.n_gpu_layers, n_batch=p.n_batch, n_ubatch=p.n_ubatch, flash_attn=p.flash_attn,
                type_k=KV_TYPES[p.type_k], type_v=KV_TYPES[p.type_v], main_gpu=p.main_gpu, use_mmap=p.use_mmap,
                verbose=False,
            )
        except Exception as err:
            llama.close()
            raise DraftModelError(f"llama.cpp could not load the draft model {p.path.name} ({err}).") from err
        try:
            return DraftModel(draft, llama._model.vocab, p.path.name)
        except DraftModelError:
            draft.close()
            llama.close()
            raise

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it and ask again
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]

    # --- saved caches
    def _save_owner(self) -> None:
        """Write the current conversation's cache to its state file, if it changed since."""
        key = self._owner
        if self._states is None or key is None or not self._dirty or key in self._forgotten:
            return
        try:
            if self._decoder.cached:
                self._states.save(key, self._decoder.cached, self._decoder.state())
            self._dirty = False
        except OSError as err:  # a full disk must not cost the reply
            log.warning("could not save the context of conversation %s: %s", key, err)

    def _take(self, key: str | None) -> int:
        """Make the cache the one of conversation `key`; returns how many tokens came from its
        saved state (0 when it was already there, has none, or it is not usable)."""
        if key == self._owner:
            return 0
        self._save_owner()
        self._owner, self._dirty = key, False
        if key is None or self._states is None:
            return 0
        saved = self._states.load(key)
        if saved is None or len(saved.tokens) >= self._n_ctx:
            return 0
        if not self._decoder.restore(saved.tokens, saved.data):
            log.warning("llama.cpp refused the saved context of conversation %s; evaluating it again", key)
            self._states.discard(key)
            return 0
        return len(saved.tokens)

    # --- one reply
    def _serve(self, llama, job: _Job) -> None:
        stream, sampling, policy = job.stream, job.sampling, job.context
        t_start = time.perf_counter()
        if stream.cancelled:
            stream.emit(Finished("", "cancelled", _stats(job, t_start, 0, 0, None, None, None)))
            return
        # llama.cpp may pad the context (64 -> 256), but llama-cpp-python's token buffer keeps
        # the size asked for: the smaller of the two is the real limit.
        n_ctx = self._n_ctx = min(llama.n_ctx(), len(llama.input_ids))
        fmt = self._formatter
        messages = job.messages
        full = fmt.render(messages)
        prompt, dropped = full, ()
        room = min(sampling.max_tokens or n_ctx, max(16, n_ctx // 4))  # keep room for a reply
        budget = n_ctx - room
        if policy.policy != "stop" and (job.evicted or len(full.tokens) > budget):
            out, _ = fit_conversation(messages, lambda m: len(fmt.render(m).tokens), budget,
                                      max(1, budget - policy.chunk(n_ctx)), job.evicted)
            if out:
                dropped, gone = tuple(out), set(out)
                messages = [m for i, m in enumerate(messages) if i not in gone]
                prompt = fmt.render(messages)
        tokens = prompt.tokens
        shift = policy.policy == "sink_window" and self._decoder.can_shift
        sink = self._sink(messages, tokens, policy) if shift else 0
        if shift and len(tokens) > budget and budget > sink + 16:
            # one message longer than the window: keep the sink and the latest tokens
            tokens = tokens[:sink] + tokens[len(tokens) - (budget - sink):]
        evicted_tokens = max(0, len(full.tokens) - len(tokens))
        n_prompt = len(tokens)
        if n_prompt >= n_ctx:
            raise ContextOverflow(n_prompt, n_ctx)
        applied = "drop_turns" if policy.policy == "sink_window" and not shift else policy.policy
        stream.emit(Started(n_prompt, dropped, evicted_tokens, applied))
        decoder = self._decoder
        restored = self._take(job.key)
        self._dirty = True
        cached = decoder.prefill(tokens, allow_shift=shift)
        tokens_in = tokens
        shifted = decoder.shifted

        limit = sampling.max_tokens or (n_ctx - n_prompt)
        if not shift:
            limit = min(limit, n_ctx - n_prompt)
        stops = StopMatcher(sampling.stop + prompt.stops)
        utf8 = Utf8Stream()
        pieces: list[str] = []
        later_dropped: list[int] = []
        n_out, t_first, t_last, finish = 0, None, None, "length"
        left_out = set(dropped)
        kept_index = [i for i in range(len(job.messages)) if i not in left_out]

        def show(text: str) -> None:
            if text:
                pieces.append(text)
                stream.emit(Token(text))

        source = self._source(job.speculative)
        controller = self._controller(job.key, source) if source is not None else None
        spec = SpecStats(source.name if source is not None else "none")
        context = list(tokens)  # what the reply continues: the prompt and the tokens so far
        generated: list[int] = []
        if source is not None and not source.cheap:
            source.ignore_eos = sampling.ignore_eos
            source.sync(context)  # the draft model reads the prompt before the first token

        def take(token: int) -> bool:
            """One token of the reply; True when the reply ends with it."""
            nonlocal n_out, t_first, t_last, finish
            if decoder.is_end(token):
                finish = "stop"
                return True
            generated.append(token)
            n_out += 1
            t_last = time.perf_counter()
            if t_first is None:
                t_first = t_last
            show(stops.feed(utf8.feed(self._piece(token))))
            if stops.stopped:
                finish = "stop"
                return True
            return n_out >= limit

        with decoder.sampler(sampling) as sampler:
            token = sampler.sample() if not stream.cancelled else None
            while True:
                if stream.cancelled:
                    finish = "cancelled"
                    break
                if take(token):
                    break
                context.append(token)
                if len(decoder.cached) >= n_ctx:  # the context is full mid-reply: shift, or end here
                    cut = self._cut_for_reply(messages, tokens, sink, policy.chunk(n_ctx), n_prompt) if shift else None
                    if cut is None or not decoder.remove(sink, cut[0]):
                        break
                    shifted += cut[0]
                    evicted_tokens += cut[0]
                    gone = set(cut[1])
                    later_dropped += [kept_index[i] for i in cut[1]]
                    kept_index = [x for i, x in enumerate(kept_index) if i not in gone]
                    messages = [m for i, m in enumerate(messages) if i not in gone]
                    tokens = tokens[:sink] + tokens[sink + cut[0]:]
                    n_prompt = max(sink, n_prompt - cut[0])
                t0 = time.perf_counter()
                room = min(limit - n_out, n_ctx - len(decoder.cached) - 1)
                draft = []
                if controller is not None and room > 0:
                    if source.cheap:  # a lookup: see what it has, then decide
                        draft = source.propose(context, min(controller.max_k, room))
                        k = controller.choose(0.0, source.bucket, len(draft)) if draft else 0
                        draft = draft[:k]
                    else:  # a model: decide, then pay for the draft
                        k = min(controller.choose(source.cost_per_token(), source.bucket), room)
                        draft = source.propose(context, k) if k > 0 else []
                if not draft:
                    decoder.decode([token])
                    token = sampler.sample()
                    if controller is not None:
                        controller.plain_step(time.perf_counter() - t0)
                    continue
                # verify: [token + draft] in one batch; accept while the target's own samples agree
                base = len(decoder.cached)
                decoder.decode_all([token] + draft)
                out = []
                for i in range(len(draft) + 1):
                    out.append(sampler.sample(i))
                    if i == len(draft) or out[-1] != draft[i]:
                        break
                decoder.truncate(base + len(out))  # token and the accepted drafts stay cached
                controller.verified(len(draft), len(out) - 1, time.perf_counter() - t0, source.bucket)
                spec.drafted += len(draft)
                spec.accepted += len(out) - 1
                ended = False
                for y in out[:-1]:
                    if stream.cancelled or take(y):
                        ended = True
                        finish = "cancelled" if stream.cancelled else finish
                        break
                    context.append(y)
                if ended:
                    break
                token = out[-1]
        show(stops.feed(utf8.flush()))
        show(stops.flush())
        stats = _stats(job, t_start, len(tokens_in), n_out, t_first, t_last, cached,
                       evicted_tokens=evicted_tokens, shifted_tokens=shifted, restored_tokens=restored,
                       spec_source=spec.source, drafted_tokens=spec.drafted, accepted_tokens=spec.accepted)
        stream.emit(Finished("".join(pieces), finish, stats, tuple(later_dropped), tuple(generated)))

    def _source(self, speculative: str):
        """The draft source a reply asked for: "off", "lookup", "draft" or "auto" (the draft model
        when one is loaded, else prompt lookup)."""
        if speculative == "off":
            return None
        if speculative in ("draft", "auto") and self._draft is not None:
            return self._draft
        if speculative == "draft":
            raise RuntimeFailure("No draft model is loaded for this model; use speculative \"lookup\" or \"off\".")
        return self._lookup

    def _controller(self, key: str | None, source) -> Controller:
        """Acceptance is tracked per conversation and source: it differs by what is being written."""
        name = (key, source.name)
        controller = self._controllers.pop(name, None) or Controller()
        self._controllers[name] = controller  # most recent last
        while len(self._controllers) > 64:
            self._controllers.pop(next(iter(self._controllers)))
        return controller

    def _sink(self, messages: list[dict], tokens: list[int], policy: ContextPolicy) -> int:
        """Tokens kept at the start when shifting: the leading system messages, at least sink_tokens."""
        n_system = 0
        while n_system < len(messages) and messages[n_system]["role"] == "system":
            n_system += 1
        sink = policy.sink_tokens
        if n_system:
            head = self._formatter.render(messages[:n_system], generation_prompt=False).tokens
            if tokens[: len(head)] == head:
                sink = max(sink, len(head))
        return min(sink, len(tokens) - 1)

    def _cut_for_reply(self, messages, tokens, sink, need, reply_start) -> tuple[int, list[int]] | None:
        """How many tokens after the sink to remove when a reply fills the context, ending at the
        start of a user turn where one lies far enough in, and which messages that removes."""
        ends = []  # (token offset where message i starts, i) for user messages after the sink
        for i, m in enumerate(messages):
            if m["role"] != "user" or i == 0:
                continue
            head = self._formatter.render(messages[:i], generation_prompt=False).tokens
            if tokens[: len(head)] != head:
                break  # the template does not render prefixes stably: cut by tokens
            if len(head) > sink:
                ends.append((len(head), i))
        for offset, i in ends:
            if offset - sink >= need and offset <= reply_start:
                first = next(j for j in range(len(messages)) if messages[j]["role"] != "system")
                return offset - sink, list(range(first, i))
        if need <= 0 or sink + need >= len(self._decoder.cached):
            return None
        return need, []


def _stats(job: _Job, t_start: float, n_prompt: int, n_out: int, t_first, t_last, cached, **extra) -> ReplyStats:
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
        **extra,
    )
