"""One model loaded through llama.cpp, with what a reply needs from it: the chat formatter, the
native decoder, the speculative sources and the token pieces.

Everything here runs on the thread that loaded it (llama.cpp contexts are not thread-safe); the
worker owns that thread. The generation step (generate.py) works on a LoadedModel directly, so
it is testable without threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time

from tandem.runtime.engine.chat_format import ChatFormatter, limit_llama_templates
from tandem.runtime.engine.native import NativeDecoder
from tandem.runtime.engine.params import KV_TYPES, LoadParams
from tandem.runtime.engine.speculative import Controller, DraftModel, PromptLookup
from tandem.runtime import llama_log
from tandem.runtime.errors import ContextOverflow, DraftModelError, Interrupted, ModelLoadError, RuntimeFailure

log = logging.getLogger(__name__)

MAX_CONTROLLERS = 64
# The longest text an embedding reads, in tokens. Its context holds a KV cache this long and, as
# llama.cpp outputs every token in embedding mode, room for this many tokens' outputs: kept small.
EMBED_CTX = 512

# llama.cpp's log at its true levels, once, after llama_cpp's import installed its own callback
# (a LogCapture around a load replaces it for its duration and puts it back).
llama_log.install()
# Every Llama created in this process (benchmarks included) compiles the file's chat templates
# through the limits; _open_llama and _load_draft make sure of it again.
limit_llama_templates()


class LoadedModel:
    """A llama_cpp.Llama and its helpers. Use load(); close() frees it (and the draft)."""

    def __init__(self, llama, params: LoadParams, draft: DraftModel | None, load_s: float):
        self.llama = llama
        self.params = params
        self.draft = draft
        self.load_s = load_s
        self.metadata: dict[str, str] = dict(llama.metadata)
        self.formatter = ChatFormatter(llama)
        self.decoder = NativeDecoder(llama)
        self.lookup = PromptLookup()
        self._controllers: dict = {}
        self._vocab = llama._model.vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        # llama.cpp may pad the context (64 -> 256), but llama-cpp-python's token buffer keeps the
        # size asked for: the smaller of the two is the real limit.
        self.n_ctx = min(llama.n_ctx(), len(llama.input_ids))
        self._longest: int | None = None
        self._longest_lock = threading.Lock()
        self._embed_ctx = None  # a second context on the same weights, for embeddings (made on first use)
        self.embed_ctx_tokens = min(self.n_ctx, EMBED_CTX)

    @classmethod
    def load(cls, params: LoadParams, draft: LoadParams | None = None) -> "LoadedModel":
        t0 = time.perf_counter()
        llama = _open_llama(params)
        try:
            draft_model = _load_draft(llama, draft) if draft is not None else None
        except BaseException:
            llama.close()
            raise
        try:  # building the chat formatter renders the template once: it may refuse the model
            return cls(llama, params, draft_model, time.perf_counter() - t0)
        except BaseException:
            if draft_model is not None:
                draft_model.close()
            llama.close()
            raise

    def close(self) -> None:
        import llama_cpp

        if self._embed_ctx is not None:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        self.decoder.close()
        if self.draft is not None:
            self.draft.close()
        self.llama.close()

    def piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it and ask again
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]

    @property
    def max_piece_bytes(self) -> int:
        """The most bytes of text one token stands for, control tokens' text included: a prompt
        of B bytes is at least B / this many tokens, known before tokenizing anything. Read from
        the vocabulary on first use (0.1-0.3 s; reading the vocabulary is safe on any thread)."""
        with self._longest_lock:
            if self._longest is None:
                self._longest = self._longest_piece()
            return self._longest

    def _longest_piece(self) -> int:
        import llama_cpp

        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        buf = ctypes.create_string_buffer(512)
        longest = 1
        for t in range(n_vocab):
            n = llama_cpp.llama_token_to_piece(self._vocab, t, buf, len(buf), 0, True)
            longest = max(longest, n if n >= 0 else -n)
        return longest

    def embed(self, texts: list[str], cancelled=lambda: False,
              truncate: bool = False) -> tuple[tuple[tuple[float, ...], ...], int]:
        """Each text's embedding: the mean of its tokens' last hidden states, scaled to unit
        length (what OpenAI's embeddings are), from a context of its own on the same weights so
        that the conversation's cache is untouched. Returns (vectors, tokens read)."""
        import llama_cpp
        import numpy as np

        n_ctx = self.embed_ctx_tokens
        longest = self.max_piece_bytes
        if truncate:  # no more characters than can be in the context are ever tokenized
            texts = [t[: n_ctx * longest] for t in texts]
        for i, text in enumerate(texts):  # a text that cannot fit is refused before tokenizing it
            at_least = -(-len(text.encode("utf-8")) // longest)
            if at_least > n_ctx and not truncate:
                raise ContextOverflow(at_least, n_ctx, at_least=True, what=f"Input {i}")
        ctx = self._embedding_context()
        memory = llama_cpp.llama_get_memory(ctx)
        n_embd = llama_cpp.llama_model_n_embd(self.llama._model.model)
        vectors, total = [], 0
        for i, text in enumerate(texts):
            if cancelled():
                raise Interrupted("Stopped while embedding.")
            tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False) or [self.llama.token_eos()]
            if len(tokens) > n_ctx:
                if not truncate:
                    raise ContextOverflow(len(tokens), n_ctx, what=f"Input {i}")
                tokens = tokens[:n_ctx]
            llama_cpp.llama_memory_clear(memory, True)
            arr = (llama_cpp.llama_token * len(tokens))(*tokens)
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
            if rc != 0:
                raise RuntimeFailure(f"llama.cpp could not embed input {i} (llama_decode returned {rc}).")
            ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
            if not ptr:
                raise RuntimeFailure("llama.cpp returned no pooled embedding for this model.")
            v = np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64)
            norm = float(np.linalg.norm(v))
            vectors.append(tuple(float(x) for x in (v / norm if norm > 0 else v)))
            total += len(tokens)
        return tuple(vectors), total

    def _embedding_context(self):
        import llama_cpp

        if self._embed_ctx is None:
            p = llama_cpp.llama_context_default_params()
            p.n_ctx = p.n_batch = p.n_ubatch = self.embed_ctx_tokens  # a whole text in one batch: pooling sees it all
            p.n_seq_max = 1
            p.n_threads, p.n_threads_batch = self.params.n_threads, self.params.n_threads_batch
            p.embeddings = True
            p.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            ctx = llama_cpp.llama_init_from_model(self.llama._model.model, p)
            if not ctx:
                raise RuntimeFailure("llama.cpp could not make an embedding context for this model (out of memory?).")
            self._embed_ctx = ctx
        return self._embed_ctx

    def source(self, speculative: str):
        """The draft source a reply asked for: "off", "lookup", "draft" or "auto" (the draft model
        when one is loaded, else prompt lookup)."""
        if speculative == "off":
            return None
        if speculative in ("draft", "auto") and self.draft is not None:
            return self.draft
        if speculative == "draft":
            raise RuntimeFailure("No draft model is loaded for this model; use speculative \"lookup\" or \"off\".")
        return self.lookup

    def controller(self, key: str | None, source) -> Controller:
        """Acceptance is tracked per conversation and source: it differs by what is being written."""
        name = (key, source.name)
        controller = self._controllers.pop(name, None) or Controller()
        self._controllers[name] = controller  # most recent last
        while len(self._controllers) > MAX_CONTROLLERS:
            self._controllers.pop(next(iter(self._controllers)))
        return controller


def _llama_kwargs(p: LoadParams) -> dict:
    return dict(
        model_path=str(p.path), n_ctx=p.n_ctx, n_threads=p.n_threads, n_threads_batch=p.n_threads_batch,
        n_gpu_layers=p.n_gpu_layers, n_batch=p.n_batch, n_ubatch=p.n_ubatch, flash_attn=p.flash_attn,
        type_k=KV_TYPES[p.type_k], type_v=KV_TYPES[p.type_v], main_gpu=p.main_gpu, use_mmap=p.use_mmap,
        verbose=False,
    )


_BUILD_GUARD = {"checked": False, "on": False}
_BUILD_GUARD_LOCK = threading.Lock()


def guard_engine_build() -> bool:
    """Once per process, before the first model: where llama.cpp was compiled with its AMX matrix
    kernels (AMX_INT8 = 1, a -march=native build on a Sapphire Rapids-class CPU), its models are
    loaded without the extra weight buffers those kernels use. llama.cpp 0.3.36's AMX path crashes
    the process on the first prompt it evaluates (a segfault in ggml_backend_amx_mul_mat); without
    the extra buffers the AVX-512 kernels run instead, and the weights are not repacked. The
    README's set-up builds without AMX. True when the guard is on."""
    import llama_cpp.llama_cpp as lc

    with _BUILD_GUARD_LOCK:
        if _BUILD_GUARD["checked"]:
            return _BUILD_GUARD["on"]
        _BUILD_GUARD["checked"] = True
        try:
            info = lc.llama_print_system_info().decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - an older binding: nothing to guard
            return False
        if "AMX_INT8 = 1" not in info or "use_extra_bufts" not in {f[0] for f in lc.llama_model_params._fields_}:
            return False
        original = lc.llama_model_default_params

        def without_extra_buffers():
            params = original()
            params.use_extra_bufts = False
            return params

        lc.llama_model_default_params = without_extra_buffers
        _BUILD_GUARD["on"] = True
    log.warning("this llama.cpp build has AMX kernels, which crash on its first prompt: models load "
                "without them (slower on Q4_0). `./dev.sh run` builds llama.cpp without them.")
    return True


def _open_llama(p: LoadParams):
    import llama_cpp

    guard_engine_build()
    limit_llama_templates()  # creating a Llama compiles the file's chat templates
    try:
        with _rpc_devices(p.rpc, p.rpc_local_gpu):
            return llama_cpp.Llama(
                **_llama_kwargs(p), offload_kqv=p.offload_kqv, swa_full=p.swa_full,
                tensor_split=list(p.tensor_split) if p.tensor_split else None,
            )
    except Exception as err:
        raise ModelLoadError(
            f"llama.cpp could not load {p.path.name} ({err}). The file may be damaged or "
            "need a newer engine; download it again, or lower the context length."
        ) from err


_DEVICE_ARRAYS: list = []  # kept alive for as long as the process: llama.cpp keeps the pointers


@contextlib.contextmanager
def _rpc_devices(endpoints: tuple[str, ...], local_gpu: int | None = None):
    """While a Llama is made, its model parameters list the workers' devices (llama.cpp's low-level
    `devices`, as llama-server's --rpc does), then this machine's GPU when it keeps layers: the
    offloaded layers go to them in that order, the rest stay on this CPU. llama-cpp-python does
    not expose the field, so its defaults are wrapped."""
    if not endpoints:
        yield
        return
    import llama_cpp.llama_cpp as lc

    from tandem.runtime.pool import rpc

    arr, _ = rpc.device_array(list(endpoints), local_gpu)
    _DEVICE_ARRAYS.append(arr)
    original = lc.llama_model_default_params

    def with_devices():
        params = original()
        params.devices = ctypes.cast(arr, ctypes.c_void_p).value
        return params

    lc.llama_model_default_params = with_devices
    try:
        yield
    finally:
        lc.llama_model_default_params = original


def _load_draft(llama, p: LoadParams) -> DraftModel:
    import llama_cpp

    guard_engine_build()
    limit_llama_templates()
    try:
        draft = llama_cpp.Llama(**_llama_kwargs(p))
    except Exception as err:
        raise DraftModelError(f"llama.cpp could not load the draft model {p.path.name} ({err}).") from err
    try:
        return DraftModel(draft, llama._model.vocab, p.path.name)
    except BaseException:
        draft.close()
        raise
