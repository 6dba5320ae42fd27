"""Decoding on llama.cpp's own API: batches in, native sampler chain out.

llama-cpp-python's `Llama.generate` copies the full vocabulary's logits into numpy and samples in
Python for every token; llama.cpp's sampler chain (`llama_sampler_*`) samples in C on the logits
where they are. The chain mirrors llama-cpp-python's (penalties, then greedy at temperature 0,
else top-k, top-p, min-p, temperature, seeded draw), so greedy output is the same text.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable

import llama_cpp

from tandem.runtime.engine.params import SamplingParams
from tandem.runtime.errors import Interrupted, InvalidSampling, RuntimeFailure

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size
MIN_SHIFT_MATCH = 16  # a shift pays when at least this many cached tokens are reused after the gap


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _find_gap(cached: list[int], tokens: list[int], at: int) -> tuple[int, int]:
    """(gap, matched): the prompt from `at` on equals the cache from `at + gap` on for `matched`
    tokens, for the gap that reuses the most. (0, 0) when no gap does."""
    best = (0, 0)
    want = tokens[at]
    probe = tokens[at : at + MIN_SHIFT_MATCH]
    for gap in range(1, len(cached) - at):
        start = at + gap
        if cached[start] != want or cached[start : start + MIN_SHIFT_MATCH] != probe[: len(cached) - start]:
            continue
        matched = _common(cached[start:], tokens[at:])
        if matched > best[1]:
            best = (gap, matched)
    return best


def _c_strlen():
    """The C library's strlen, or None where it cannot be found."""
    try:
        libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(ctypes.util.find_library("c") or None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


_STRLEN = _c_strlen()


class AbortSwitch:
    """Interrupts llama_decode from another thread, between two operations of the graph.

    llama.cpp asks its abort callback before every graph node on the first compute thread. A
    Python callback would take the GIL there hundreds of times per token; instead the callback is
    the C library's strlen over a two-byte buffer: it returns 0 (go on) while the first byte is
    zero and 1 (abort) once set() writes 1 there, with no Python involved in the check.
    """

    def __init__(self, ctx):
        self._flag = ctypes.create_string_buffer(2)
        self._py_callback = None
        if _STRLEN is not None:
            callback = llama_cpp.ggml_abort_callback(_STRLEN)
        else:  # no C library found: the same check in Python (slower, still correct)
            flag = self._flag
            callback = self._py_callback = llama_cpp.ggml_abort_callback(lambda _data: flag.raw[0] != 0)
        self._callback = callback  # kept alive as long as the context uses it
        llama_cpp.llama_set_abort_callback(ctx, callback, ctypes.cast(self._flag, ctypes.c_void_p))

    def set(self) -> None:
        self._flag[0] = b"\x01"

    def clear(self) -> None:
        self._flag[0] = b"\x00"

    @property
    def is_set(self) -> bool:
        return self._flag.raw[0] != 0


class NativeDecoder:
    """Owns the KV cache of sequence 0 of one context and knows which tokens it holds."""

    def __init__(self, llama: "llama_cpp.Llama"):
        self.ctx = llama._ctx.ctx
        self.abort = AbortSwitch(self.ctx)
        self.vocab = llama._model.vocab
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llama.n_batch
        self.cached: list[int] = []  # the tokens whose keys and values are in the cache, in order
        self.shifted = 0  # tokens the last prefill removed from the middle of the cache by shifting
        self._eog: list[int] | None = None
        self._batch = None  # a llama_batch for evaluating with logits at every position (verification)
        self._batch_size = 0

    @property
    def can_shift(self) -> bool:
        """Whether positions in this cache can be moved (llama_memory_can_shift)."""
        return bool(llama_cpp.llama_memory_can_shift(self.memory))

    def prefill(self, tokens: list[int], allow_shift: bool = False,
                on_progress: Callable[[int, int], None] | None = None) -> int:
        """Evaluate a prompt, reusing the cached prefix it shares; returns how many were reused.

        Evaluated in batches of n_batch; the abort switch interrupts it at any moment (Interrupted,
        with the cache holding the prefix evaluated so far, which the next prompt reuses).

        allow_shift: when the prompt continues the cache after a run of cached tokens it no longer
        has (older messages left out), remove that run and shift what follows into place instead
        of evaluating it again. The moved keys and values keep what they saw of the removed
        tokens (as in llama.cpp's context shift), so this is not bit-identical to re-evaluation.

        on_progress(done, total): after each batch, when the prompt takes more than one.
        """
        self.shifted = 0
        if not tokens:  # nothing to evaluate leaves no logits to sample from
            raise RuntimeFailure("There is nothing to read: the prompt has no tokens.")
        keep = _common(self.cached, tokens)
        if allow_shift and keep < len(self.cached) and keep < len(tokens) - 1 and self.can_shift:
            gap, matched = _find_gap(self.cached, tokens, keep)
            if matched >= MIN_SHIFT_MATCH and self.remove(keep, gap):
                self.shifted = gap
                keep = _common(self.cached, tokens)
        keep = min(keep, len(tokens) - 1)  # the last prompt token is always evaluated: its logits sample
        if keep < len(self.cached):
            if not llama_cpp.llama_memory_seq_rm(self.memory, 0, keep, -1):
                llama_cpp.llama_memory_clear(self.memory, True)  # cannot cut this cache: start over
                keep = 0
            self.cached = self.cached[:keep]
        rest = tokens[keep:]
        report = on_progress if on_progress is not None and len(rest) > self.n_batch else None
        if report is not None:
            report(keep, len(tokens))
        for i in range(0, len(rest), self.n_batch):
            if self.abort.is_set:
                raise Interrupted("Stopped while reading the prompt.")
            self.decode(rest[i : i + self.n_batch])
            if report is not None:
                report(keep + min(i + self.n_batch, len(rest)), len(tokens))
        return keep

    def remove(self, start: int, count: int) -> bool:
        """Drop `count` cached tokens from `start` and move the later ones back into their place
        (llama.cpp's context shift). False, with the cache untouched, where the cache cannot."""
        if count <= 0 or start + count > len(self.cached) or not self.can_shift:
            return False
        if not llama_cpp.llama_memory_seq_rm(self.memory, 0, start, start + count):
            return False
        llama_cpp.llama_memory_seq_add(self.memory, 0, start + count, -1, -count)
        del self.cached[start : start + count]
        return True

    # --- saved state of the cache (sequence 0)
    def state(self) -> memoryview:
        """The cache's state, a view of the one buffer llama.cpp wrote it into (no copies)."""
        ctx = self.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        return memoryview(buf).cast("B")[:written]

    def restore(self, tokens: list[int], data) -> bool:
        """Load a saved cache holding `tokens` (a ctypes byte array is used in place, bytes are
        copied); False (and an empty cache) if llama.cpp refuses it."""
        self.reset()
        buf = data if isinstance(data, ctypes.Array) else (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        read = llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(data), 0)
        held = llama_cpp.llama_memory_seq_pos_max(self.memory, 0) + 1
        if read != len(data) or held != len(tokens):
            self.reset()
            return False
        self.cached = list(tokens)
        return True

    def decode(self, tokens: list[int]) -> None:
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            self._failed(rc, tokens)
        self.cached.extend(tokens)

    def _failed(self, rc: int, tokens: list[int]) -> None:
        if rc == 2:  # aborted: llama.cpp keeps the micro-batches it finished, drops the one it was in
            held = llama_cpp.llama_memory_seq_pos_max(self.memory, 0) + 1
            self.cached = (self.cached + list(tokens))[: max(0, held)]
            if len(self.cached) != held:  # not what we know it holds: start over rather than guess
                self.reset()
            raise Interrupted("Stopped while llama.cpp was evaluating.")
        self.reset()
        raise RuntimeFailure(f"llama.cpp could not evaluate the tokens (llama_decode returned {rc}).")

    def decode_all(self, tokens: list[int]) -> None:
        """Evaluate tokens keeping the logits of every position (Sampler.sample(i) reads the i-th):
        how a draft is verified in one batch."""
        n = len(tokens)
        if n > self._batch_size:
            if self._batch is not None:
                llama_cpp.llama_batch_free(self._batch)
            self._batch_size = max(n, 16)
            self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        b, start = self._batch, len(self.cached)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            self._failed(rc, tokens)
        self.cached.extend(tokens)

    def truncate(self, n: int) -> None:
        """Keep only the first n cached tokens (a rejected draft leaves the cache)."""
        if n < len(self.cached):
            llama_cpp.llama_memory_seq_rm(self.memory, 0, n, -1)
            del self.cached[n:]

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)
        self.cached = []

    def sampler(self, sampling: SamplingParams) -> "Sampler":
        return Sampler(self, sampling)

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def end_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary."""
        if self._eog is None:
            n = llama_cpp.llama_vocab_n_tokens(self.vocab)
            self._eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        return self._eog


class Sampler:
    """A native sampler chain; use as a context manager so that it is freed."""

    def __init__(self, decoder: NativeDecoder, s: SamplingParams):
        self.decoder = decoder
        self.top_logprobs = s.logprobs
        n_vocab = llama_cpp.llama_vocab_n_tokens(decoder.vocab)
        self.n_vocab = n_vocab
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        try:
            biases = dict(s.logit_bias)
            bad = [t for t in biases if not 0 <= t < n_vocab]
            if bad:
                raise InvalidSampling(f"logit_bias names token {bad[0]}, which this model does not have "
                                      f"(its token ids go from 0 to {n_vocab - 1}).", "logit_bias")
            if s.ignore_eos:
                biases.update((t, float("-inf")) for t in decoder.end_tokens())
            if biases:
                arr = (llama_cpp.llama_logit_bias * len(biases))(*biases.items())
                add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), arr))
            if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
                # this llama.cpp takes the vocabulary size first: (n_vocab, last_n, repeat, freq, present)
                add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, s.repeat_penalty,
                                                           s.frequency_penalty, s.presence_penalty))
            if s.grammar is not None:
                grammar = llama_cpp.llama_sampler_init_grammar(decoder.vocab, s.grammar.encode("utf-8"), b"root")
                if not grammar:
                    raise InvalidSampling("The output format could not be turned into a grammar llama.cpp accepts; "
                                          "simplify the JSON schema.", "response_format")
                add(grammar)
            if s.temperature == 0.0:
                add(llama_cpp.llama_sampler_init_greedy())
            else:
                if s.top_k > 0:
                    add(llama_cpp.llama_sampler_init_top_k(s.top_k))
                add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
                add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
                add(llama_cpp.llama_sampler_init_temp(s.temperature))
                seed = s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
                add(llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed).value))
        except BaseException:
            llama_cpp.llama_sampler_free(chain)
            raise

    def sample(self, index: int = -1) -> int:
        """The next token from the logits of position `index` of the last batch (-1: its last),
        accepted into the chain."""
        return llama_cpp.llama_sampler_sample(self.chain, self.decoder.ctx, index)

    def logprobs(self, token: int, index: int = -1) -> tuple[float, list[tuple[int, float]]]:
        """The model's log-probability of `token` at position `index` of the last batch, and the
        `top_logprobs` most likely tokens there with theirs (from the raw logits, before any bias,
        penalty or grammar: what the model thought)."""
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self.decoder.ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        logz = top + np.log(np.exp(logits - top).sum())
        chosen = float(logits[token] - logz)
        k = self.top_logprobs or 0
        if k <= 0:
            return chosen, []
        ids = np.argpartition(-logits, k)[:k]
        ids = ids[np.argsort(-logits[ids])]
        return chosen, [(int(i), float(logits[i] - logz)) for i in ids]

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        llama_cpp.llama_sampler_free(self.chain)
